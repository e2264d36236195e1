"""`cvmstore cocoonfs`: read CocoonFs v1 images with the Rust `cocoonfs` tool's command line.

The subcommands, flags and output of `list-files`, `read-file` and `aux-fs-metadata
list-entries|read-entry` are those of `cocoonfs` (crate cocoonfs-cli 0.1.3), so a script
that runs `cocoonfs -i IMAGE -f read-file -K HEX 16` runs unchanged with `cvmstore` in front.
`info` and `fsck` are our own. Only the read path exists (`cvmstore.cocoonfs`, docs/cocoonfs.md):
the tool's write commands are not registered. The library authenticates the whole image when
it opens it, so every keyed command is also a full check.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvmstore.cli.cocoonfs_write import register_aux_edit, register_write
from cvmstore.cli.usage import UsageError
from cvmstore.cocoonfs.auxmeta import (
    AuxFsMetadata,
    read_formatted_aux_metadata,
    read_mkfsinfo_aux_metadata,
)
from cvmstore.cocoonfs.image import CocoonFsImage
from cvmstore.cocoonfs.layout import MKFSINFO_MAGIC
from cvmstore.errors import CvmstoreError, PathNotFoundError, WrongKeyError

__all__ = ["register"]

_EXIT = """\
exit status: 0 success; 2 usage error (unreadable file, bad key hex, bad inode); 3 FormatError
(damaged headers, metadata or journal); 4 NotAnImageError (not a CocoonFs image);
5 UnsupportedVersionError; 6 WrongKeyError (wrong key, or a tampered entry leaf: the format
cannot tell them apart); 7 IntegrityError (the image was changed); 21 PathNotFoundError (no
such inode or aux metadata entry)."""

_GROUP_EPILOG = f"""\
not yet: the staging copy disguise and trim commands when writing (both optional).

-f is accepted, so scripts move over unchanged, and does nothing (the image file is used in
512-byte device blocks); -n keeps mkfs from filling free space with random bytes.

Every write is one transaction through the format's journal: a crash at any point leaves the
old or the new state, and the next open (by cvmstore or the Rust tool) replays a committed one.

examples:
  cvmstore cocoonfs -i state.img mkfs -k key.bin -H sha2 -C aes -t 128 -I c0c0 -s 8M
  cvmstore cocoonfs -i state.img write-file -k key.bin -i NVChip 4294967296
  cvmstore cocoonfs -i state.img remove-file -k key.bin 4294967297
  cvmstore cocoonfs -i state.img list-files -K 00112233445566778899aabbccddeeff
  cvmstore cocoonfs -i state.img -f read-file -k key.bin 4294967296 -o NVChip
  cvmstore cocoonfs -i state.img info -k key.bin --json
  cvmstore cocoonfs -i state.img fsck -k key.bin
  cvmstore cocoonfs -i state.img aux-fs-metadata list-entries

{_EXIT}
"""


class _LeafParser:
    """Stands in for `cocoonfs` in `cli.main`'s intermixed re-parse.

    The group takes options (`-i IMAGE`, `-f`) before its action, and `aux-fs-metadata` has
    actions of its own, so the action's parser gets what follows the names in `path`.
    """

    def __init__(self, parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        self.parser = parser
        self.path = path

    def parse_intermixed_args(
        self, args: Sequence[str], namespace: argparse.Namespace
    ) -> argparse.Namespace:
        """Group options from before the action; the action's own, in any order."""
        arguments = list(args)
        position = 0
        for name in self.path:
            while arguments[position] != name:
                position += 2 if arguments[position] in ("-i", "--image") else 1
            position += 1
        group = argparse.ArgumentParser(prog="cvmstore cocoonfs", add_help=False)
        _add_group_options(group)
        namespace = group.parse_args(arguments[: position - len(self.path)], namespace)
        return self.parser.parse_intermixed_args(arguments[position:], namespace)


def _add_group_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--image", required=True, metavar="FILE", help="filesystem image volume file"
    )
    parser.add_argument(
        "-f",
        "--force-ignore-volume-storage-block-size",
        action="store_true",
        help="accepted for compatibility with the Rust tool; no effect here",
    )


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("-k", "--key-file", metavar="FILE", help="file containing the filesystem key")
    key.add_argument("-K", "--key", metavar="HEX", help="filesystem key as a hexadecimal string")
    parser.add_argument(
        "-n",
        "--no-randomize-unallocated",
        action="store_true",
        help="mkfs: leave free space as zeros instead of random bytes (no effect elsewhere)",
    )


def _action(
    actions: Any,  # noqa: ANN401 (argparse's subparsers type is private)
    path: tuple[str, ...],
    help_text: str,
    description: str,
    handler: Any,  # noqa: ANN401
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(
        path[-1],
        help=help_text,
        description=textwrap.fill(description, 88),
        epilog=_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    parser.set_defaults(command_parser=_LeafParser(parser, path))
    return parser


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `cocoonfs` and its read-only actions to the command line."""
    group = commands.add_parser(
        "cocoonfs",
        help="make, read and write CocoonFs images (COCONUT-SVSM's state) like `cocoonfs`",
        description=textwrap.fill(
            "Make, read and write CocoonFs v1 images, the encrypted and authenticated "
            "filesystem COCONUT-SVSM keeps its persistent state in (inode (1 << 32) | 0 is the "
            "vTPM's NVChip, service 2 in the upper 32 bits is UEFI). The subcommands and flags "
            "are those of the Rust `cocoonfs` tool (cocoonfs-cli 0.1.3); info and fsck are "
            "cvmstore's own.",
            88,
        ),
        epilog=_GROUP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_group_options(group)
    actions = group.add_subparsers(dest="cocoonfs_command", metavar="COMMAND", required=True)
    register_write(actions, _action, _add_key_options, _inode)

    listing = _action(
        actions,
        ("list-files",),
        "list all files in the filesystem image",
        "Open the image (authenticating its headers and index) and list its files, one "
        "`INODE 0xFLAGS` line each in ascending inode order, as the Rust tool prints them.",
        _list_files,
    )
    _add_key_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON (inode, flags, size)")

    read = _action(
        actions,
        ("read-file",),
        "read a file from the filesystem image",
        "Open the image and write one file's whole content, authenticated block by block, "
        "to standard output or to --output-file.",
        _read_file,
    )
    _add_key_options(read)
    read.add_argument(
        "-o",
        "--output-file",
        metavar="FILE",
        help="output file to write the read data to (default: standard output)",
    )
    read.add_argument(
        "inode", metavar="INODE-NUMBER", type=_inode, help="inode number of the file to read"
    )

    info = _action(
        actions,
        ("info",),
        "show the geometry, algorithms, update counter and file count (cvmstore's own)",
        "Open (and so authenticate) the image and print its layout, algorithms, size, update "
        "counter and number of files. No key material is printed.",
        _info,
    )
    _add_key_options(info)
    info.add_argument("--json", action="store_true", help="print JSON")

    fsck = _action(
        actions,
        ("fsck",),
        "authenticate the whole image and read every file (cvmstore's own)",
        "Authenticate the whole image (every authentication tree node and data block, the "
        "root HMAC and update counter), then decrypt every file. Exit 0 when clean, 7 when "
        "anything was changed (6 if the change hits the entry leaf).",
        _fsck,
    )
    _add_key_options(fsck)
    fsck.add_argument("--json", action="store_true", help="print JSON")

    from cvmstore.cli.cocoonfs_anchor import register_anchor  # imports this module: not at top

    register_anchor(actions)

    aux = actions.add_parser(
        "aux-fs-metadata",
        help="show auxiliary filesystem metadata (keyless, not authenticated)",
        description=textwrap.fill(
            "Show the auxiliary filesystem metadata of a formatted image or of a volume with "
            "a filesystem creation info header. It is read and edited without the key and is "
            "NOT authenticated by the format.",
            88,
        ),
        epilog=_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    aux_actions = aux.add_subparsers(dest="aux_command", metavar="COMMAND", required=True)
    register_aux_edit(aux_actions, _action, _uuid, _index)
    entries = _action(
        aux_actions,
        ("aux-fs-metadata", "list-entries"),
        "list all entries",
        "List the UUID of every entry, one a line in stored order, as the Rust tool does.",
        _aux_list,
    )
    entries.add_argument(
        "--json",
        action="store_true",
        help="print JSON (uuid, index, size of each entry, the extra reserve capacity)",
    )
    entry = _action(
        aux_actions,
        ("aux-fs-metadata", "read-entry"),
        "read a selected entry's data",
        "Write the data of the INDEX-th entry with UUID to standard output or --output-file.",
        _aux_read,
    )
    entry.add_argument(
        "-o",
        "--output-file",
        metavar="FILE",
        help="output file to write the read data to (default: standard output)",
    )
    entry.add_argument("uuid", metavar="UUID", type=_uuid, help="UUID of the entry to read")
    entry.add_argument(
        "index",
        metavar="INDEX",
        nargs="?",
        type=_index,
        default=0,
        help="selection index among the entries with this UUID (default: 0)",
    )


# ---------------------------------------------------------------- arguments


def _inode(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected a decimal inode") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text[:40]}: an inode number is 64 bits")
    return value


def _index(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected a number >= 0")
    return value


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:60]!r}: not a UUID") from None


def _read(name: str, what: str) -> bytes:
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {name}: {exc.strerror}") from None


def file_or_hex(path: str | None, text: str | None, what: str, flag: str) -> bytes:
    """The raw bytes of the file `path`, else `text` decoded from hex.

    The tool's -k/-K and -i/-I pairs. The value is never echoed in an error.
    """
    if path is not None:
        return _read(path, f"the {what} file")
    try:
        return bytes.fromhex(text or "")
    except ValueError:
        raise UsageError(f"{flag}: expected a hexadecimal string") from None


def _key(args: argparse.Namespace) -> bytes:
    """The key: the raw bytes of --key-file, or --key decoded from hex (never echoed)."""
    key = file_or_hex(args.key_file, args.key, "key", "--key")
    if not key:
        raise UsageError("the key is empty")
    return key


def _open(args: argparse.Namespace, *, verify_all: bool = False) -> CocoonFsImage:
    """The image of `-i`, opened and authenticated; errors name the image file.

    The headers, root, bitmap and index are authenticated at open, each file's blocks when
    read; `verify_all` (fsck) checks every block and node first.
    """
    data = _read(args.image, "the image")
    key = _key(args)
    try:
        return CocoonFsImage.open(data, key, lazy=not verify_all)
    except WrongKeyError:
        raise WrongKeyError(
            f"{args.image}: wrong key (or the image's inode index entry leaf was changed)"
        ) from None
    except CvmstoreError as exc:
        raise _named(exc, args.image) from None


def _named(exc: CvmstoreError, image: str) -> CvmstoreError:
    """`exc` again, of the same class, its message prefixed with the image name."""
    again = CvmstoreError.__new__(type(exc))
    again.__dict__.update(exc.__dict__)
    Exception.__init__(again, f"{image}: {exc}")
    return again


def _write_output(data: bytes, output: str | None) -> None:
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2))


# ---------------------------------------------------------------- actions


def _list_files(args: argparse.Namespace) -> int:
    image = _open(args)
    files = image.list_files()
    if args.json:
        _print_json(
            [
                {"inode": e.inode, "flags": e.flags, "size": len(image.read_file(e.inode))}
                for e in files
            ]
        )
        return 0
    for entry in files:
        print(f"{entry.inode} {entry.flags:#04x}")
    return 0


def _read_file(args: argparse.Namespace) -> int:
    image = _open(args)
    try:
        data = image.read_file(args.inode)
    except PathNotFoundError:
        raise PathNotFoundError(f"{args.image}: inode {args.inode} does not exist") from None
    except CvmstoreError as exc:
        raise _named(exc, args.image) from None
    _write_output(data, args.output_file)
    return 0


def _info(args: argparse.Namespace) -> int:
    image = _open(args)
    layout = image.layout
    geometry = {
        "allocation_block_size": layout.allocation_block_size,
        "io_block_size": layout.io_block_size,
        "auth_tree_node_size": layout.auth_tree_node_size,
        "auth_tree_data_block_size": layout.auth_tree_data_block_size,
        "allocation_bitmap_file_block_size": layout.allocation_bitmap_file_block_size,
        "inode_index_tree_leaf_node_size": layout.index_leaf_node_size,
        "inode_index_tree_internal_node_size": layout.index_internal_node_size,
    }
    algorithms = {
        "auth_tree_node_hash": layout.auth_tree_node_hash_alg.name,
        "auth_tree_data_hmac_hash": layout.auth_tree_data_hmac_hash_alg.name,
        "auth_tree_root_hmac_hash": layout.auth_tree_root_hmac_hash_alg.name,
        "preauth_cca_protection_hmac_hash": layout.preauth_cca_protection_hmac_hash_alg.name,
        "kdf_hash": layout.kdf_hash_alg.name,
        "block_cipher": layout.block_cipher_alg.name,
        "block_cipher_key_bits": layout.block_cipher_key_bits,
    }
    blocks = image.mutable_header.image_size_allocation_blocks
    files = image.list_files()
    document = {
        "image": args.image,
        "format_version": 1,
        "image_size": blocks * layout.allocation_block_size,
        "image_size_allocation_blocks": blocks,
        "update_counter": image.update_counter,
        "file_count": len(files),
        "geometry": geometry,
        "algorithms": algorithms,
    }
    if args.json:
        _print_json(document)
        return 0
    print(f"CocoonFs image {args.image}: format version 1, authenticated")
    print(f"  image size      {document['image_size']:,} bytes ({blocks} allocation blocks)")
    print(f"  update counter  {image.update_counter}")
    print(f"  files           {len(files)}")
    for name, value in geometry.items():
        print(f"  {name.replace('_', ' '):<36}{value:>8}")
    for name, alg in algorithms.items():
        print(f"  {name.replace('_', ' '):<36}{alg!s:>8}")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    image = _open(args, verify_all=True)
    total = 0
    files = image.list_files()
    for entry in files:
        try:
            total += len(image.read_file(entry.inode))
        except CvmstoreError as exc:
            raise _named(exc, args.image) from None
    if args.json:
        _print_json(
            {
                "image": args.image,
                "clean": True,
                "files": len(files),
                "bytes": total,
                "update_counter": image.update_counter,
            }
        )
        return 0
    print(
        f"{args.image}: clean: the whole image authenticates; {len(files)} files, "
        f"{total:,} bytes read; update counter {image.update_counter}"
    )
    return 0


def _aux_metadata(args: argparse.Namespace) -> AuxFsMetadata | None:
    data = _read(args.image, "the image")
    try:
        if data.startswith(MKFSINFO_MAGIC):
            return read_mkfsinfo_aux_metadata(data)
        return read_formatted_aux_metadata(data)
    except CvmstoreError as exc:
        raise _named(exc, args.image) from None


def _aux_list(args: argparse.Namespace) -> int:
    metadata = _aux_metadata(args)
    entries = metadata.entries if metadata is not None else ()
    if args.json:
        seen: dict[uuid.UUID, int] = {}
        rows = []
        for tag, data in entries:
            rows.append({"uuid": str(tag), "index": seen.get(tag, 0), "size": len(data)})
            seen[tag] = seen.get(tag, 0) + 1
        _print_json(
            {
                "entries": rows,
                "extra_reserve_capacity": (
                    metadata.extra_reserve_capacity if metadata is not None else None
                ),
            }
        )
        return 0
    for tag, _ in entries:
        print(tag)
    return 0


def _aux_read(args: argparse.Namespace) -> int:
    metadata = _aux_metadata(args)
    data = metadata.get(args.uuid, args.index) if metadata is not None else None
    if data is None:
        raise PathNotFoundError(
            f"{args.image}: no auxiliary metadata entry {args.uuid} with index {args.index}"
        )
    _write_output(data, args.output_file)
    return 0
