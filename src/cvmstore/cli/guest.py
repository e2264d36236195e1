"""`cvmstore guest`: the image commands with the key and the anchor coming from a KBS.

`guest mkfs|info|ls|put|get|cat|rm|mv|mkdir|fsck` are the image commands themselves
(`cli.image.register(..., guest=True)`): the same handlers and arguments, except that the
image is `--image FILE` and, in place of --key-file and --anchor, each command boots as a
confidential VM does (`cvmstore.guest.boot`: attest, receive the volume's key, open under the
KBS ledger). `guest simulator-ark` writes the attestation simulator's root, for a test or
demo KBS to trust.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import textwrap
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cvmstore.cli import image
from cvmstore.cli.common import (
    GUEST_EPILOG,
    GUEST_EXAMPLE,
    GUEST_FLOW,
    SEED_HELP,
    SIMULATOR_KEY_SIZE,
    SIMULATOR_SEED,
    NestedParser,
    make_simulator,
)
from cvmstore.cli.usage import UsageError

__all__ = ["register"]

_SIMULATOR_ARK_TEXT = (
    "Write the root certificate (ARK, PEM) of the attestation simulator that `--evidence "
    "simulator` uses, for a KBS to trust: list FILE in the KBS configuration's "
    "`simulator_roots`. Tests and demos only: whoever knows the seed can sign reports this "
    "root certifies, so never give it to a production KBS. Also prints the measurement the "
    "simulator's reports carry unless --measurement says otherwise (for the volume's "
    "policy). The root's key is derived from the seed, so every command with the same seed "
    f"uses this root. It is RSA-{SIMULATOR_KEY_SIZE}, not 4096 as AMD's: this key is found "
    "in pure Python (OpenSSL takes no seed), again in every guest command, which takes "
    "0.1-0.8 s at 2048 bits and 4-10 s at 4096 (measured on a 2-core x86-64 VM)."
)


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `cvmstore guest ...` to the command line."""
    guest = commands.add_parser(
        "guest",
        help="the image commands, with the key and the anchor from a KBS (attested boot)",
        description=textwrap.fill(
            "The image commands as a confidential VM runs them at boot: attest to a Key "
            "Broker Service (KBS), receive the volume's key, and open the image with the "
            "KBS's rollback ledger as its anchor. Each action's --help gives its arguments.",
            88,
        ),
        epilog=GUEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = guest.add_subparsers(dest="guest_command", metavar="ACTION", required=True)
    image.register(actions, guest=True)

    p = actions.add_parser(
        "simulator-ark",
        help="write the attestation simulator's root certificate, for a test KBS to trust",
        description=textwrap.fill(_SIMULATOR_ARK_TEXT, 88),
        epilog=(
            f"{GUEST_FLOW}\n{GUEST_EXAMPLE}\n"
            "exit status: 0 written; 2 usage error (FILE cannot be written).\n\n"
            "examples:\n"
            "  cvmstore guest simulator-ark ark.pem\n"
            "  cvmstore guest simulator-ark - --simulator-seed lab-7 > ark.pem"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="where to write the PEM (- for stdout)")
    p.add_argument("--simulator-seed", metavar="TEXT", help=SEED_HELP)
    p.set_defaults(handler=_simulator_ark, command_parser=NestedParser(p))


def _simulator_ark(args: argparse.Namespace) -> int:
    from cvmstore.attest.simulator import DEFAULT_MEASUREMENT

    seed = args.simulator_seed or SIMULATOR_SEED
    ark = make_simulator(seed).ark
    pem = ark.public_bytes(Encoding.PEM)
    spki = ark.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    # The summary goes to stderr when the certificate goes to stdout.
    out = sys.stderr if args.file == "-" else sys.stdout
    if args.file == "-":
        sys.stdout.buffer.write(pem)
        sys.stdout.buffer.flush()
    else:
        try:
            Path(args.file).write_bytes(pem)
        except OSError as exc:
            raise UsageError(f"cannot write {args.file}: {exc.strerror}") from None
    print(
        f"wrote the simulator's root (seed {seed!r}, SPKI SHA-256 "
        f"{hashlib.sha256(spki).hexdigest()}) to {args.file}: list it in the KBS's "
        "simulator_roots (tests and demos only)\n"
        f"its reports carry measurement {DEFAULT_MEASUREMENT.hex()} unless --measurement",
        file=out,
    )
    return 0
