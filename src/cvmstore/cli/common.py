"""What the image commands share: the key and anchor options, and opening an image."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cvmstore.block.file import FileDevice
from cvmstore.cli.keys import load_key
from cvmstore.cli.usage import UsageError
from cvmstore.fs import Filesystem, open_filesystem
from cvmstore.integrity.anchor import Anchor, FileAnchor, NoAnchor

__all__ = ["NestedParser", "add_image_options", "default_anchor", "opened", "parse_anchor"]

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
