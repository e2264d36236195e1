"""What command groups share: the image options, nested parsers, the IGVM measurement.

The image commands' key and anchor options and opening an image; the nested parser of the
`snp` and `igvm` groups; the measurement options and digest of `igvm measure`, which
`kbs admin add-reference --igvm` computes the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cvmstore.block.file import FileDevice
from cvmstore.cli.keys import load_key
from cvmstore.cli.usage import UsageError
from cvmstore.errors import FormatError
from cvmstore.fs import Filesystem, open_filesystem
from cvmstore.igvm.format import HeaderType, IgvmFile, parse_igvm
from cvmstore.igvm.measure import Measurement, Style, measure_snp
from cvmstore.integrity.anchor import Anchor, FileAnchor, NoAnchor

__all__ = [
    "NestedParser",
    "add_image_options",
    "add_measure_options",
    "default_anchor",
    "load_igvm",
    "measure_igvm",
    "opened",
    "parse_anchor",
]

ANCHOR_HELP = (
    "where the trusted record of the newest commit lives: file:PATH (a local file; default "
    "IMAGE.anchor beside the image) or none (no rollback or clone detection)"
)


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


@contextmanager
def opened(args: argparse.Namespace, *, write: bool) -> Iterator[Filesystem]:
    """Open the filesystem of `args.image` (read-only unless `write`) and close it after."""
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


def load_igvm(name: str) -> tuple[bytes, IgvmFile]:
    """The bytes of the IGVM file `name` (- for stdin), and the file parsed.

    Raises:
        UsageError: the file cannot be read.
        FormatError: (or a subclass) the file is malformed; the message names the file.
    """
    if name == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from None
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
