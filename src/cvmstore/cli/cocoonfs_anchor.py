"""`cvmstore cocoonfs -i IMAGE anchor`: anchor a CocoonFs image's update counter and root.

The image is opened (so authenticated) with the key from -k/-K, as the other `cocoonfs`
commands do (`cli.cocoonfs`). Then its update counter and root HMAC are compared with an
anchor, and the anchor is advanced when the image is newer (`cvmstore.cocoonfs.anchor`). The
anchor is a local file (`--anchor file:PATH`) or a KBS volume's rollback ledger (`--anchor
kbs`). The KBS client and its options are those of `cvmstore guest` (`cli.common`).
`register_anchor` adds the command to the `cocoonfs` group's subparsers.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvmstore.cli.cocoonfs import _action, _add_key_options, _named, _open, _print_json
from cvmstore.cli.common import KBS_KEY_ENV, add_kbs_options, guest_config
from cvmstore.cli.usage import UsageError
from cvmstore.cocoonfs.anchor import (
    AnchorOutcome,
    AnchorStatus,
    ImageVersion,
    check_anchored,
    check_and_advance,
    image_version,
)
from cvmstore.errors import AnchorError, IntegrityError
from cvmstore.integrity.anchor import Anchor, FileAnchor

if TYPE_CHECKING:
    from cvmstore.guest import GuestConfig

__all__ = ["register_anchor"]

_DESCRIPTION = (
    "Open (and so authenticate) the image, then compare its update counter and root HMAC "
    "with a trusted anchor. Nothing anchored yet: the image is recorded (first use). The "
    "anchored counter and root: nothing to do. A newer counter (the image was updated since, "
    "by this tool, the Rust tool or the SVSM): the anchor is advanced to it. An older counter "
    "is a restored copy (exit 8); the anchored counter with another root is a clone or "
    "another filesystem with the same salt (exit 9). The anchor keeps the image under a "
    "volume id derived from the image's salt. --check-only writes nothing."
)

_EPILOG = f"""\
the anchor:
  file:PATH   a local file (one filesystem per file), replaced atomically. It is as safe as
              the place it lives: next to the image, the host can roll both back together.
  kbs         the rollback ledger of a KBS volume (--kbs, --volume, --kbs-key or
              ${KBS_KEY_ENV}, and the evidence options, as for `cvmstore guest`). Only an
              attested guest that satisfies the volume's policy can read and advance it, so
              this is for tooling inside the confidential VM. The KBS's volume key is not
              used: the CocoonFs key still comes from -k/-K.
Only what was anchored is protected: updates the SVSM or the Rust tool make between two runs
can be rolled back undetected. Run it after every update that must not be lost.

examples:
  cvmstore cocoonfs -i state.img anchor -k key.bin --anchor file:/safe/state.anchor
  cvmstore cocoonfs -i state.img anchor -k key.bin --anchor file:/safe/state.anchor --check-only
  cvmstore cocoonfs -i state.img anchor -k key.bin --anchor kbs --kbs https://kbs:8443 \\
      --volume vtpm --kbs-key THUMBPRINT   # inside the guest: configfs-tsm attests

exit status: 0 the image is the anchored one, or newer (advanced unless --check-only), or
recorded; 2 usage error; 3-7 as for the other cocoonfs commands (the image does not open);
8 RollbackError (older than the anchor); 9 ForkError (the anchored counter, another root; or
the anchor moved underneath twice); 13 AnchorError (unreadable anchor, another volume's, or a
counter too far ahead: a filesystem made again with the same salt); 41-45 the KBS (as for
`cvmstore guest`)."""

#: The `cvmstore guest` options that only `--anchor kbs` takes (those whose default is unset).
_KBS_ONLY = (
    "kbs",
    "volume",
    "kbs_key",
    "insecure_no_pin",
    "ca",
    "evidence",
    "simulator_root",
    "measurement",
)


def register_anchor(actions: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `anchor` to the actions of `cvmstore cocoonfs` (the group's subparsers)."""
    parser = _action(
        actions,
        ("anchor",),
        "compare the update counter with a trusted anchor, and advance it (cvmstore's own)",
        _DESCRIPTION,
        _anchor,
    )
    parser.epilog = _EPILOG
    _add_key_options(parser)
    parser.add_argument(
        "--anchor",
        required=True,
        metavar="SPEC",
        help="file:PATH (a local file) or kbs (a KBS volume's rollback ledger)",
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="compare only: write nothing, even on first use or when the image is newer",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_kbs_options(
        parser, "--anchor kbs: the KBS keeping the ledger (as for `cvmstore guest`)",
        volume_required=False,
    )  # fmt: skip


def _file_anchor(args: argparse.Namespace) -> FileAnchor | None:
    """The file of `--anchor file:PATH`, None for `--anchor kbs`; the options checked."""
    spec: str = args.anchor
    if spec == "kbs":
        if args.volume is None:
            raise UsageError("--anchor kbs needs --volume NAME (the KBS volume of the ledger)")
        return None
    if not spec.startswith("file:") or spec == "file:":
        raise UsageError(f"--anchor {spec[:200]!r}: use file:PATH or kbs")
    given = [name for name in _KBS_ONLY if getattr(args, name) not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags}: only with --anchor kbs")
    return FileAnchor(Path(spec.removeprefix("file:")))


def _run(version: ImageVersion, anchor: Anchor, check_only: bool) -> AnchorOutcome:
    if check_only:
        return check_anchored(version, anchor)
    return check_and_advance(version, anchor)


def _anchor(args: argparse.Namespace) -> int:
    file_anchor = _file_anchor(args)
    # The options are checked before the image is read, and the image before the KBS is asked.
    if file_anchor is not None:
        where = f"anchor file {file_anchor.path}"
        anchor: AbstractContextManager[Anchor] = nullcontext(file_anchor)
    else:
        config = guest_config(args)
        where = f"the KBS ledger of volume {config.volume!r}"
        anchor = _kbs_anchor(config)
    version = image_version(_open(args))
    try:
        with anchor as opened:
            outcome = _run(version, opened, args.check_only)
    except (IntegrityError, AnchorError) as exc:
        raise _named(exc, args.image) from None
    _report(args, where, outcome)
    return 0


@contextmanager
def _kbs_anchor(config: GuestConfig) -> Iterator[Anchor]:
    """The ledger of the volume as `cvmstore guest` reaches it: attested, then as an anchor."""
    from cvmstore.kbs.anchor import KbsAnchor  # the KBS client loads only here

    with config.client() as client:
        client.attest()
        yield KbsAnchor(client, config.volume)


def _updates(count: int) -> str:
    return "1 update" if count == 1 else f"{count} updates"


def _report(args: argparse.Namespace, where: str, outcome: AnchorOutcome) -> None:
    if args.json:
        _print_json(
            {
                "image": args.image,
                "anchor": where,
                "volume_id": outcome.volume_id.hex(),
                "status": outcome.status.value,
                "written": outcome.written,
                "update_counter": outcome.counter,
                "anchored_update_counter": outcome.anchored_counter,
                "updates": outcome.updates,
                "generation": outcome.generation,
            }
        )
        return
    counter, before, updates = outcome.counter, outcome.anchored_counter, outcome.updates
    text = {
        AnchorStatus.RECORDED: f"first use: update counter {counter} recorded in {where}",
        AnchorStatus.CURRENT: f"update counter {counter} and root are the ones in {where}",
        AnchorStatus.ADVANCED: (
            f"{_updates(updates)} since it was anchored (counter {before} -> {counter}); "
            f"{where} now holds it"
        ),
        AnchorStatus.UNANCHORED: f"{where} holds nothing for this filesystem yet; nothing written",
        AnchorStatus.AHEAD: (
            f"{_updates(updates)} newer than {where} (counter {before} -> {counter}); "
            "not advanced (--check-only)"
        ),
    }[outcome.status]
    print(f"{args.image}: {outcome.status.value}: {text}")
