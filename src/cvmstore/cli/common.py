"""What command groups share: the image options, nested parsers, the IGVM measurement.

The image commands' key and anchor options and opening an image, in both of their modes:
`cvmstore mkfs IMAGE --key-file ... --anchor ...` takes the key and the anchor from local
files, `cvmstore guest mkfs --image IMAGE --kbs ... --volume ...` from a KBS (attest, receive
the volume's key, open under the KBS ledger: `cvmstore.guest.boot`), and the same handlers
run in both. Also the nested parser of the `snp`, `igvm` and `guest` groups, and the
measurement options and digest of `igvm measure`, which `kbs admin add-reference --igvm`
computes the same way.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cvmstore.attest.configfs import DEFAULT_ROOT as TSM_REPORT_ROOT
from cvmstore.attest.simulator import DEFAULT_MEASUREMENT, Simulator, SimulatorRoot
from cvmstore.block.file import FileDevice
from cvmstore.block.protocol import BlockDevice
from cvmstore.cli.keys import load_key
from cvmstore.cli.usage import UsageError
from cvmstore.errors import AnchorError, FormatError, RollbackError
from cvmstore.fs import Filesystem, make_filesystem, open_filesystem
from cvmstore.igvm.format import HeaderType, IgvmFile, parse_igvm
from cvmstore.igvm.measure import Measurement, Style, measure_snp
from cvmstore.integrity.anchor import Anchor, FileAnchor, NoAnchor

if TYPE_CHECKING:
    from cvmstore.guest import GuestConfig
    from cvmstore.kbs.evidence_source import EvidenceSource

# The guest mode's KBS client (httpx, JOSE) and boot flow are imported where they are used,
# so that the image commands do not load them.

__all__ = [
    "GUEST_EPILOG",
    "GUEST_EXAMPLE",
    "GUEST_FLOW",
    "KBS_KEY_ENV",
    "KBS_URL_ENV",
    "ROOT_HELP",
    "SIMULATOR_KEY_SIZE",
    "SIMULATOR_ROOT_ENV",
    "Formatter",
    "NestedParser",
    "add_guest_options",
    "add_image_options",
    "add_kbs_options",
    "add_measure_options",
    "anchor_name",
    "default_anchor",
    "formatter",
    "guest_config",
    "is_guest",
    "load_igvm",
    "make_simulator",
    "measure_igvm",
    "opened",
    "parse_anchor",
    "read_input",
    "tls_verify_option",
]

ANCHOR_HELP = (
    "where the trusted record of the newest commit lives: file:PATH (a local file; default "
    "IMAGE.anchor beside the image) or none (no rollback or clone detection)"
)


# ---------------------------------------------------------------- guest mode: the help

KBS_URL_ENV = "CVMSTORE_KBS_URL"  # the variable `kbs admin` reads too
KBS_KEY_ENV = "CVMSTORE_KBS_KEY"
SIMULATOR_ROOT_ENV = "CVMSTORE_SIMULATOR_ROOT"
#: RSA size of the simulator's keys. AMD's are 4096 bits; the simulator makes a fresh ASK in
#: every guest command, which takes about 0.2 s at 2048 bits and seconds at 4096.
SIMULATOR_KEY_SIZE = 2048
ROOT_HELP = (
    "simulator: the root file `cvmstore guest simulator-root` made (its key signs the chain "
    f"of every report; default: ${SIMULATOR_ROOT_ENV})"
)
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")  # RFC 7638: base64url SHA-256, unpadded
_MEASUREMENT_BYTES = 48  # SHA-384

GUEST_FLOW = """\
how every guest command runs (a confidential VM's early boot):
  1. attest: SEV-SNP evidence bound to a fresh key (the hardware's, through configfs-tsm; or
     the simulator's) goes to the KBS through Trustee's RCAR handshake. Every answer must be
     signed by the pinned KBS key (--kbs-key): a forged KBS is refused (45).
  2. key: the KBS releases the volume's root secret only when the evidence satisfies the
     volume's policy (else 43).
  3. open: the image is opened with the KBS ledger as its anchor. An image older than the
     ledger is a rollback (8), one that diverged from it a fork (9): the volume is not
     opened and nothing is written. Every commit advances the ledger.
  `guest mkfs` makes the image and formats it while the ledger anchors nothing yet; when
  the ledger already anchors a state of the volume it refuses (8) and leaves no file. The
  other commands open an existing image.
"""
GUEST_EXAMPLE = f"""\
example (a test host: the simulator stands in for the SEV-SNP hardware):
  cvmstore guest simulator-root sim-root.pem   # also prints the measurement its reports carry
  echo 'simulator_roots = ["sim-root.pem"]' > kbs.toml
  cvmstore kbs serve --config kbs.toml &
  export {KBS_URL_ENV}=http://127.0.0.1:8080 CVMSTORE_KBS_TOKEN_FILE=kbs-data/admin.token
  cvmstore kbs admin add-reference MEASUREMENT
  echo 'measurements = ["MEASUREMENT"]' > vm1.toml
  cvmstore kbs admin volume create vm1 --policy vm1.toml
  cvmstore kbs admin token-key             # the thumbprint guests pin
  export {KBS_KEY_ENV}=THUMBPRINT {SIMULATOR_ROOT_ENV}=sim-root.pem
  cvmstore guest mkfs --image vm1.img --size 16M --volume vm1 --evidence simulator
  cvmstore guest put --image vm1.img --volume vm1 --evidence simulator tpm.state /nv
  cvmstore guest get --image vm1.img --volume vm1 --evidence simulator /nv tpm.state
Inside an SEV-SNP guest with configfs-tsm, leave --evidence out: the hardware attests.
"""
GUEST_EXIT = f"""\
exit status (and the file commands' own, as `cvmstore --help` lists them):
    0  success
    2  usage error: bad arguments; also no --kbs-key nor ${KBS_KEY_ENV} and no
       --insecure-no-pin, or no configfs-tsm and no --evidence simulator
    4  NotAnImageError: a blank image (only mkfs formats one)
    6  WrongKeyError: the image is another volume's
    7  IntegrityError: the image is damaged
    8  RollbackError: the image is older than the ledger (a restored copy), or mkfs while
       the ledger already anchors a state of the volume
    9  ForkError: another copy of the image advanced the ledger
   13  AnchorError: the ledger anchors another store than this image's
   30  AttestationError: configfs-tsm could not make a report
   41  KbsUnreachableError: no KBS answers at the URL (after --retries)
   42  KbsProtocolError: an answer that is not the KBS protocol's
   43  KbsAuthError: the KBS refused the evidence, or the volume's policy did
   44  ResourceNotFoundError: the KBS has no such volume
   45  KbsIdentityError: an answer not signed by the pinned key (a forged KBS)
"""
#: The help of `guest` and of each of its image actions.
GUEST_EPILOG = f"{GUEST_FLOW}\n{GUEST_EXAMPLE}\n{GUEST_EXIT}"


def default_anchor(image: str) -> str:
    """The anchor used when none is given: a file beside the image."""
    return f"file:{image}.anchor"


def parse_anchor(spec: str) -> Anchor:
    """`file:PATH` or `none`."""
    if spec == "none":
        return NoAnchor()
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FileAnchor(Path(spec[len("file:") :]))
    if spec.startswith("kbs:"):
        raise UsageError("kbs anchors are used through `cvmstore guest`, not the image commands")
    raise UsageError(f"--anchor {spec!r}: use file:PATH or none")


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The key and anchor options every image command takes."""
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        help="the volume's root secret: 32 raw bytes or 64 hex characters "
        "(default: $CVMSTORE_KEY_FILE, else $CVMSTORE_KEY as hex)",
    )
    parser.add_argument("--anchor", metavar="SPEC", help=ANCHOR_HELP)


def is_guest(args: argparse.Namespace) -> bool:
    """Whether `args` are a guest command's (`cvmstore guest ...`): the KBS gives key and anchor."""
    return bool(getattr(args, "guest", False))


def anchor_name(args: argparse.Namespace) -> str:
    """The anchor, as `mkfs` and `info` show it."""
    if is_guest(args):
        return f"kbs {_kbs_url(args)} volume {args.volume}"
    return str(args.anchor or default_anchor(args.image))


@contextmanager
def opened(args: argparse.Namespace, *, write: bool) -> Iterator[Filesystem]:
    """Open the filesystem of `args.image` (read-only unless `write`) and close it after.

    The key and the anchor come from --key-file and --anchor, or for a guest command from
    the KBS (`cvmstore.guest.boot`, which never formats here: a blank image is refused).
    """
    if is_guest(args):
        config = guest_config(args)
        device = FileDevice.open(args.image, read_only=not write)
        try:
            with _booted(device, config, format_if_blank=False) as fs:
                yield fs
        finally:
            device.close()
        return
    key = load_key(args.key_file)
    anchor = parse_anchor(args.anchor or default_anchor(args.image))
    device = FileDevice.open(args.image, read_only=not write)
    try:
        fs = open_filesystem(device, key, anchor)
        try:
            yield fs
        finally:
            fs.close()
    finally:
        device.close()


#: Formats a new volume on a device; the filesystem is closed at the end of the block.
Formatter = Callable[[BlockDevice], AbstractContextManager[Filesystem]]


def formatter(args: argparse.Namespace) -> Formatter:
    """What `mkfs` formats the new image with, its options checked before any file is made.

    Image mode: the key from --key-file, the anchor from --anchor (an existing anchor file
    is refused, or with --force replaced). Guest mode: the KBS, through `boot` with
    `format_if_blank`; with --force over an existing image, the ledger is read first, and a
    ledger that already anchors a state is refused (RollbackError) before the image is
    overwritten, as `boot` would refuse it after.
    """
    if is_guest(args):
        config = guest_config(args)
        if args.force and os.path.lexists(args.image):
            _refuse_anchored_ledger(config, args.image)
        return lambda device: _booted(device, config, format_if_blank=True)
    key = load_key(args.key_file)
    anchor = parse_anchor(args.anchor or default_anchor(args.image))
    force: bool = args.force

    def make(device: BlockDevice) -> Filesystem:
        if isinstance(anchor, FileAnchor) and anchor.path.exists():
            # The record of whatever volume was made against it: a new volume cannot use it.
            if not force:
                raise AnchorError(
                    f"anchor {anchor.path} already exists (it records another volume): "
                    f"remove it, or use --force to replace it too"
                )
            anchor.path.unlink()
        return make_filesystem(device, key, anchor)

    return make


def add_guest_options(parser: argparse.ArgumentParser) -> None:
    """`--image FILE` and the KBS and evidence options, in place of IMAGE, --key-file, --anchor.

    The parser's help gets the guest flow, an example and the exit statuses (`GUEST_EPILOG`).
    """
    parser.description = textwrap.fill(parser.description or "", 88)
    parser.epilog = GUEST_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--image", required=True, metavar="FILE", help="the image file")
    add_kbs_options(parser, "the KBS (the volume's key and its anchor come from it)")


def add_kbs_options(
    parser: argparse.ArgumentParser, title: str, *, volume_required: bool = True
) -> None:
    """The KBS and evidence options that `guest_config` reads, in two groups (`title`: the KBS's).

    `cocoonfs anchor --anchor kbs` takes them too, with --volume optional to the parser.
    """
    kbs = parser.add_argument_group(title)
    kbs.add_argument("--kbs", metavar="URL", help=f"the KBS's base URL (default: ${KBS_URL_ENV})")
    kbs.add_argument(
        "--volume",
        required=volume_required,
        metavar="NAME",
        help="the volume's name at the KBS (`cvmstore kbs admin volume create NAME`)",
    )
    pin = kbs.add_mutually_exclusive_group()
    pin.add_argument(
        "--kbs-key",
        metavar="THUMBPRINT",
        help="the thumbprint of the KBS's signing key, as `cvmstore kbs admin token-key` "
        f"prints it (default: ${KBS_KEY_ENV}); an answer signed by another key is refused "
        "(exit 45). A thumbprint may start with '-': write --kbs-key=THUMBPRINT",
    )
    pin.add_argument(
        "--insecure-no-pin",
        action="store_true",
        help=f"with no --kbs-key (it overrides ${KBS_KEY_ENV}): accept answers signed by any "
        "key; development only, a forged KBS then goes undetected",
    )
    kbs.add_argument(
        "--ca",
        metavar="FILE",
        help="for https: trust the CA certificates in FILE (PEM) instead of the system's",
    )
    kbs.add_argument(
        "--binding",
        choices=("trustee", "svsm"),
        default="trustee",
        help="how the guest's key is bound into the report: Trustee's JSON binding, or "
        "COCONUT-SVSM's SHA-512 (the volume's policy must allow it; default: %(default)s)",
    )
    kbs.add_argument(
        "--retries",
        type=int,
        default=4,
        metavar="N",
        help="connection attempts after the first, 0.25 s apart and doubling, before exit 41 "
        "(default: %(default)s)",
    )
    evidence = parser.add_argument_group("evidence")
    evidence.add_argument(
        "--evidence",
        choices=("simulator", "configfs"),
        help=f"configfs: the SEV-SNP hardware's reports through configfs-tsm ({TSM_REPORT_ROOT}), "
        "the default where it exists; simulator: reports signed by the attestation simulator, "
        "for a KBS that trusts its root (`cvmstore guest simulator-root`): tests and demos only",
    )
    evidence.add_argument("--simulator-root", metavar="FILE", help=ROOT_HELP)
    evidence.add_argument(
        "--measurement",
        metavar="HEX",
        help="simulator: the launch measurement its reports carry, 96 hex digits (default: "
        "the simulator's, which `cvmstore guest simulator-root` prints)",
    )


def guest_config(args: argparse.Namespace) -> GuestConfig:
    """The guest options of `args`, checked, as a `GuestConfig` (warns of --insecure-no-pin).

    Raises:
        UsageError: no KBS URL, a bad volume name, no key to pin (and no --insecure-no-pin),
            a malformed thumbprint or measurement, no evidence source, an unreadable --ca.
    """
    from cvmstore.guest import GuestConfig

    url = _kbs_url(args)
    from cvmstore.kbs.protocol import VOLUME_NAME  # as the KBS checks it

    if not VOLUME_NAME.fullmatch(args.volume):
        raise UsageError(
            f"--volume {args.volume[:80]!r}: expected 1-64 of [A-Za-z0-9._-], not starting "
            "with . - _"
        )
    if args.retries < 0:
        raise UsageError(f"--retries {args.retries}: expected 0 or more")
    kbs_key: str | None = None
    if args.insecure_no_pin:
        print(
            "cvmstore: warning: --insecure-no-pin: answers signed by any key are accepted, so a "
            "forged KBS goes undetected (development only)",
            file=sys.stderr,
        )
    else:
        kbs_key = args.kbs_key or os.environ.get(KBS_KEY_ENV)
        if not kbs_key:
            raise UsageError(
                f"no KBS key to pin: use --kbs-key THUMBPRINT or set ${KBS_KEY_ENV} (`cvmstore "
                "kbs admin token-key` prints it); --insecure-no-pin accepts any KBS "
                "(development only)"
            )
        if not _THUMBPRINT.fullmatch(kbs_key):
            raise UsageError(
                f"KBS key {kbs_key[:80]!r}: expected a thumbprint, 43 base64url characters "
                "(`cvmstore kbs admin token-key` prints it)"
            )
    return GuestConfig(
        url,
        args.volume,
        _evidence(args),
        kbs_key=kbs_key,
        binding=args.binding,
        verify=tls_verify_option(args.ca),
        retries=args.retries,
    )


def _kbs_url(args: argparse.Namespace) -> str:
    url: str | None = args.kbs or os.environ.get(KBS_URL_ENV)
    if not url:
        raise UsageError(f"no KBS given: use --kbs URL, or set ${KBS_URL_ENV}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        raise UsageError(f"KBS URL {url[:200]!r}: expected http://HOST:PORT or https://HOST:PORT")
    return url


def tls_verify_option(ca: str | None) -> bool | str:
    """--ca FILE checked (a readable PEM CA bundle), as a client's `verify`; True without."""
    if ca is None:
        return True
    try:
        ssl.create_default_context(cafile=ca)
    except ssl.SSLError:
        raise UsageError(f"--ca {ca}: no PEM CA certificate in it") from None
    except OSError as exc:
        raise UsageError(f"cannot read --ca {ca}: {exc.strerror}") from None
    return ca


def _evidence(args: argparse.Namespace) -> EvidenceSource:
    from cvmstore.kbs.evidence_source import ConfigfsEvidence, SimulatorEvidence

    kind: str | None = args.evidence
    if kind is None:
        if not TSM_REPORT_ROOT.is_dir():
            raise UsageError(
                f"no SEV-SNP attestation here: {TSM_REPORT_ROOT} does not exist (not an SNP "
                "guest, or configfs-tsm is not mounted); for tests and demos, use --evidence "
                "simulator with a KBS that trusts the simulator's root (`cvmstore guest "
                "simulator-root`)"
            )
        kind = "configfs"
    if kind == "configfs":
        if args.simulator_root is not None or args.measurement is not None:
            raise UsageError("--simulator-root and --measurement go with --evidence simulator")
        return ConfigfsEvidence()
    measurement = DEFAULT_MEASUREMENT
    if args.measurement is not None:
        try:
            measurement = bytes.fromhex(args.measurement)
        except ValueError:
            measurement = b""
        if len(measurement) != _MEASUREMENT_BYTES:
            raise UsageError(
                f"--measurement {args.measurement[:100]!r}: expected 96 hex digits (a SHA-384 "
                "launch digest)"
            )
    root = args.simulator_root or os.environ.get(SIMULATOR_ROOT_ENV)
    if not root:
        raise UsageError(
            "--evidence simulator needs the simulator's root: --simulator-root FILE or "
            f"${SIMULATOR_ROOT_ENV} (make one with `cvmstore guest simulator-root FILE`)"
        )
    simulator = make_simulator(Path(root))
    return SimulatorEvidence(simulator, {"measurement": measurement})


@contextmanager
def _booted(
    device: BlockDevice, config: GuestConfig, *, format_if_blank: bool
) -> Iterator[Filesystem]:
    from cvmstore.guest import boot

    report = boot(device, config, format_if_blank=format_if_blank)
    try:
        yield report.fs
    finally:
        report.close()


def _refuse_anchored_ledger(config: GuestConfig, image: str) -> None:
    """RollbackError when the ledger already anchors a state: `mkfs --force` would fail anyway."""
    with config.client() as client:
        client.attest()
        anchored = client.ledger_read(config.volume)
    if anchored.generation is not None:
        raise RollbackError(
            f"the KBS ledger of {config.volume!r} anchors generation {anchored.generation}: "
            f"a new volume cannot be formatted there, so {image} was left as it was (an "
            "administrator makes the volume again to start over)",
            location="kbs-ledger",
        )


# ---------------------------------------------------------------- the attestation simulator


def make_simulator(root_file: Path) -> Simulator:
    """The attestation simulator of `guest --evidence simulator`: its root read from a file.

    Every guest command signs with the same root (`cvmstore guest simulator-root` made it),
    so a KBS told to trust it (`simulator_roots`) trusts every command's reports.
    """
    try:
        root = SimulatorRoot.from_pem(root_file.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read the simulator root {root_file}: {exc.strerror}") from None
    except FormatError as exc:
        raise UsageError(f"{root_file}: {exc}") from None
    try:
        return Simulator(key_size=SIMULATOR_KEY_SIZE, root=root)
    except ValueError as exc:
        raise UsageError(f"{root_file}: {exc}") from None


class NestedParser:
    """Stands in for a command group's parser (`snp`, `igvm`) in the intermixed re-parse.

    When `cli.main` parses again with options and positionals intermixed, it hands the
    group everything after its name, which starts with the action (`show`, `verify`, ...);
    the action's own parser takes the rest.
    """

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def parse_intermixed_args(
        self, args: Sequence[str], namespace: argparse.Namespace
    ) -> argparse.Namespace:
        """Parse the action's arguments, options and positionals in any order."""
        return self.parser.parse_intermixed_args(list(args)[1:], namespace)


# ---------------------------------------------------------------- IGVM measurement
# `igvm measure` and `kbs admin add-reference --igvm` compute the digest the same way.


def add_measure_options(parser: argparse.ArgumentParser, *, see: str = "below") -> None:
    """The measurement options of `igvm measure`: --style, --native-zero, --check-kvm, ...

    `see` says where the styles and the KVM rules are explained in the parser's help.
    """
    parser.add_argument(
        "--style",
        choices=("igvm", "igvmmeasure"),
        default="igvm",
        help="which reference tool to agree with where they differ (default: %(default)s; "
        f"see {see})",
    )
    parser.add_argument(
        "--native-zero",
        action="store_true",
        help="measure pages without data as SNP ZERO pages, as igvmmeasure -n does; QEMU "
        "measures them as NORMAL pages of zeros, the default here",
    )
    parser.add_argument(
        "--check-kvm",
        action="store_true",
        help=f"also enforce the QEMU/KVM rules (see {see}), as igvmmeasure -c does",
    )
    parser.add_argument(
        "--ignore-idblock",
        action="store_true",
        help="accept the digest even when the file's SNP ID block expects another one",
    )


def read_input(name: str, what: str = "") -> bytes:
    """The bytes of a local FILE argument, or of stdin for -.

    Raises:
        UsageError: the file cannot be read.
    """
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        label = f"{what} {name}" if what else name
        raise UsageError(f"cannot read {label}: {exc.strerror}") from None


def load_igvm(name: str) -> tuple[bytes, IgvmFile]:
    """The bytes of the IGVM file `name` (- for stdin), and the file parsed.

    Raises:
        UsageError: the file cannot be read.
        FormatError: (or a subclass) the file is malformed; the message names the file.
    """
    data = read_input(name)
    try:
        return data, parse_igvm(data)
    except FormatError as exc:
        raise type(exc)(f"{name}: {exc}") from None


def measure_igvm(name: str, args: argparse.Namespace) -> Measurement:
    """The SEV-SNP launch digest of the IGVM file `name`, under the options of `args`.

    `args` carries the attributes `add_measure_options` defines. Like igvmmeasure, a file
    whose SNP ID block expects another digest is refused, unless `args.ignore_idblock`
    (then a warning goes to stderr).

    Raises:
        UsageError: the file cannot be read.
        FormatError: (or a subclass) malformed, no SEV-SNP platform, a --check-kvm rule
            broken, or the ID block expects another digest.
    """
    _, igvm = load_igvm(name)
    try:
        result = measure_snp(
            igvm, style=args.style, native_zero=args.native_zero, check_kvm=args.check_kvm
        )
    except FormatError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    if result.id_block_ld is not None and result.id_block_ld != result.digest:
        message = _id_block_mismatch(name, args, igvm, result)
        if not args.ignore_idblock:
            raise FormatError(f"{message}; --ignore-idblock accepts the digest anyway)")
        print(f"cvmstore: warning: {message}); ignored (--ignore-idblock)", file=sys.stderr)
    return result


def _id_block_mismatch(
    name: str, args: argparse.Namespace, igvm: IgvmFile, result: Measurement
) -> str:
    """Both digests, where the ID block is, and the options under which they would agree.

    The text ends inside an open parenthesis, for the caller to finish.
    """
    assert result.id_block_ld is not None
    blocks = [h for h in igvm.directives() if h.kind is HeaderType.SNP_ID_BLOCK]
    where = f" at offset {blocks[-1].offset:#x}" if blocks else ""
    message = (
        f"{name}: the SNP ID block{where} expects launch digest "
        f"{result.id_block_ld.hex()}, but the file measures {result.hex} (the firmware "
        "refuses such a launch"
    )
    hints = []
    styles: tuple[Style, ...] = ("igvm", "igvmmeasure")
    for style in styles:
        for native_zero in (False, True):
            if (style, native_zero) == (args.style, args.native_zero):
                continue
            other = measure_snp(igvm, style=style, native_zero=native_zero)
            if other.digest == result.id_block_ld:
                hints.append(f"--style {style}" + (" --native-zero" if native_zero else ""))
    if hints:
        message += f"; it matches the digest with {', or with '.join(hints)}"
    return message
