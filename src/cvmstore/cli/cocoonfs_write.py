"""`cvmstore cocoonfs mkfs|write-mkfs-info-header|write-file|remove-file`.

The Rust tool's write commands, with its flags, over `cvmstore.cocoonfs.volume`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cvmstore.block.file import FileDevice
from cvmstore.cli.usage import UsageError
from cvmstore.cocoonfs.auxmeta import AuxFsMetadata, read_formatted_aux_metadata
from cvmstore.cocoonfs.auxwrite import update_aux_offline
from cvmstore.cocoonfs.mkfs import MkfsOptions, mkfs_info_header
from cvmstore.cocoonfs.volume import CocoonFsVolume
from cvmstore.errors import CvmstoreError, DeviceError, DeviceFullError, PathNotFoundError

__all__ = ["register_aux_edit", "register_write"]

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
#: Device block for file images: the smallest IO Block the tool's defaults produce.
_DEVICE_BLOCK = 512

Action = Callable[[Any, tuple[str, ...], str, str, Any], argparse.ArgumentParser]


def parse_size(text: str) -> int:
    """`8M`, `1K`, `128B`, `4096`: bytes (binary units, as the Rust tool takes them).

    cocoonfs-cli 0.1.3 doubles a bare number (its help says the default unit is B): this
    takes a bare number as bytes, so give a unit to get the same image from both.
    """
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512, 4K, 8M)")
    return int(match.group(1)) << _UNITS[match.group(2).upper()]


def _add_layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-H", "--hash-family", required=True, choices=("sha2", "sha3", "sm3"),
        help="hash family for authentication, chosen to meet the strength",
    )  # fmt: skip
    parser.add_argument(
        "-C", "--cipher", required=True, choices=("aes", "camellia", "sm4"),
        help="block cipher; the key size follows the strength",
    )  # fmt: skip
    parser.add_argument(
        "-t", "--target-security-strength", required=True, type=int, choices=(128, 192, 256),
        metavar="BITS", help="target security strength: 128, 192 or 256 (SM3/SM4: 128 only)",
    )  # fmt: skip
    salt = parser.add_mutually_exclusive_group(required=True)
    salt.add_argument("-i", "--salt-file", metavar="FILE", help="file holding the salt (<= 255 B)")
    salt.add_argument("-I", "--salt", metavar="HEX", help="the salt as hex (<= 255 bytes)")
    parser.add_argument(
        "-s", "--image-size", type=parse_size, metavar="SIZE",
        help="image size (default: the image file's size)",
    )  # fmt: skip
    parser.add_argument(
        "--aux-fs-metadata-extra-reserve-capacity", metavar="disabled|SIZE", default="1K",
        type=_reserve, help="room kept in the aux metadata for updates without the key; "
        "'disabled' allows none (default: 1K)",
    )  # fmt: skip
    for flag, what in (
        ("--allocation-block-size", "Allocation Block size (default 128B)"),
        ("--io-block-size", "IO Block size (default: max of 512B and the Allocation Block)"),
        ("--auth-tree-data-block-size", "Authentication Tree Data Block size (default: IO)"),
        ("--auth-tree-node-size", "auth tree node size (default: max of 1K and the IO Block)"),
        ("--inode-index-tree-leaf-node-size", "index leaf node size (default: Allocation Block)"),
        ("--inode-index-tree-internal-node-size", "index internal node size (default: AB)"),
        ("--allocation-bitmap-file-block-size", "bitmap block size (default: max 512B, ATDB)"),
    ):
        parser.add_argument(flag, type=parse_size, metavar="SIZE", help=what)


def _options(args: argparse.Namespace, *, randomize: bool) -> MkfsOptions:
    from cvmstore.cli.cocoonfs import file_or_hex

    salt = file_or_hex(args.salt_file, args.salt, "salt", "--salt")
    if len(salt) > 255:
        raise UsageError(f"the salt is {len(salt)} bytes; at most 255")
    return MkfsOptions(
        salt=salt,
        hash_family=args.hash_family,
        cipher=args.cipher,
        strength=args.target_security_strength,
        allocation_block_size=args.allocation_block_size or 128,
        io_block_size=args.io_block_size,
        auth_tree_data_block_size=args.auth_tree_data_block_size,
        auth_tree_node_size=args.auth_tree_node_size,
        index_leaf_node_size=args.inode_index_tree_leaf_node_size,
        index_internal_node_size=args.inode_index_tree_internal_node_size,
        bitmap_block_size=args.allocation_bitmap_file_block_size,
        randomize=randomize,
        aux_extra_reserve=args.aux_fs_metadata_extra_reserve_capacity,
    )


def _image_size(args: argparse.Namespace) -> int:
    if args.image_size is not None:
        size: int = args.image_size
    else:
        try:
            size = Path(args.image).stat().st_size
        except OSError:
            raise UsageError(f"{args.image} does not exist: give its size with -s") from None
    if size <= 0 or size % _DEVICE_BLOCK:
        raise UsageError(f"the image size must be a positive multiple of {_DEVICE_BLOCK} B")
    return size


def _device(path: str, size: int | None = None) -> FileDevice:
    """The image file as a 512-byte-block device, created (or grown) to `size` when given."""
    if size is not None:
        try:
            with open(path, "ab") as f:
                if f.tell() < size:
                    f.truncate(size)
        except OSError as exc:
            raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    try:
        return FileDevice.open(path, block_size=_DEVICE_BLOCK)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None


def _mkfs(args: argparse.Namespace) -> int:
    from cvmstore.cli.cocoonfs import _key, _named

    options = _options(args, randomize=not args.no_randomize_unallocated)
    key = _key(args)
    size = _image_size(args)
    try:
        with _device(args.image, size) as device:
            from cvmstore.cocoonfs.mkfs import mkfs_image

            mkfs_image(device, key, options, image_size=size)
            CocoonFsVolume.open(device, key)  # read back: the image authenticates
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except CvmstoreError as exc:
        raise _named(exc, args.image) from None
    return 0


def _write_mkfs_info_header(args: argparse.Namespace) -> int:
    options = _options(args, randomize=False)
    size = _image_size(args)
    try:
        header = mkfs_info_header(options, size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        with open(args.image, "r+b" if Path(args.image).exists() else "w+b") as f:
            f.write(header)
            if args.trim_volume_file_to_header:
                f.truncate(len(header))
            elif f.seek(0, os.SEEK_END) < size:
                f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UsageError(f"cannot write {args.image}: {exc.strerror}") from None
    return 0


def _open_volume(args: argparse.Namespace) -> tuple[FileDevice, CocoonFsVolume]:
    from cvmstore.cli.cocoonfs import _key, _named

    key = _key(args)
    device = _device(args.image)
    try:
        return device, CocoonFsVolume.open(device, key)
    except CvmstoreError as exc:
        device.close()
        raise _named(exc, args.image) from None


def _write_file(args: argparse.Namespace) -> int:
    from cvmstore.cli.cocoonfs import _named, _read

    if args.input_file is None:
        data = sys.stdin.buffer.read()
    else:
        data = _read(args.input_file, "the input file")
    if not 0 <= args.flags <= 0xFF:
        raise UsageError("INODE-FLAGS: only the low 8 bits belong to the application (0..255)")
    device, volume = _open_volume(args)
    with device:
        try:
            volume.write_file(args.inode, data, args.flags)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except CvmstoreError as exc:
            raise _named(exc, args.image) from None
    return 0


def _remove_file(args: argparse.Namespace) -> int:
    from cvmstore.cli.cocoonfs import _named

    device, volume = _open_volume(args)
    with device:
        try:
            volume.remove_file(args.inode)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except CvmstoreError as exc:
            raise _named(exc, args.image) from None
    return 0


def _reserve(text: str) -> int | None:
    """`disabled` or a size (section "Storage in a formatted filesystem")."""
    return None if text == "disabled" else parse_size(text)


def _aux_edit(args: argparse.Namespace) -> int:
    from cvmstore.cli.cocoonfs import _key, _named, _read

    if args.aux_edit == "add-entry":
        data = (
            sys.stdin.buffer.read()
            if args.input_file is None
            else _read(args.input_file, "the input file")
        )
    device = _device(args.image)
    with device:
        try:
            volume = None
            if args.key is not None or args.key_file is not None:
                volume = CocoonFsVolume.open(device, _key(args))  # replays, authenticates

            def edit(current: AuxFsMetadata) -> AuxFsMetadata:
                entries = list(current.entries)
                reserve = current.extra_reserve_capacity
                if args.aux_edit == "add-entry":
                    entries.append((args.uuid, data))
                elif args.aux_edit == "remove-entry":
                    matching = [i for i, (tag, _) in enumerate(entries) if tag == args.uuid]
                    if args.index >= len(matching):
                        raise PathNotFoundError(
                            f"no aux metadata entry {args.uuid} with index {args.index}"
                        )
                    del entries[matching[args.index]]
                else:
                    reserve = args.capacity
                return AuxFsMetadata(tuple(entries), reserve)

            try:
                update_aux_offline(device, edit)
            except DeviceFullError:
                if volume is None:
                    raise
                # With the key the groups can be allocated anew, as large as needed.
                current = read_formatted_aux_metadata(bytes(volume.image.data))
                volume.set_aux_metadata(edit(current or AuxFsMetadata((), None)))
        except CvmstoreError as exc:
            raise _named(exc, args.image) from None
    return 0


def register_aux_edit(
    aux_actions: Any,  # noqa: ANN401 (argparse's subparsers type is private)
    action: Action,
    inode_uuid: Callable[[str], Any],
    index: Callable[[str], int],
) -> None:
    """Add `aux-fs-metadata edit add-entry|remove-entry|set-extra-reserve-capacity`."""
    edit = aux_actions.add_parser(
        "edit",
        help="edit the auxiliary filesystem metadata (no key needed)",
        description="Edit the auxiliary metadata in place, without the key: the update goes "
        "through the two update groups so a crash leaves the old or the new metadata. It "
        "must fit the room the groups have (the extra reserve capacity), else exit 11. With "
        "-k/-K the image is opened (a pending journal replayed) first, and an edit that "
        "does not fit goes into groups allocated anew, in one journaled transaction.",
    )
    key = edit.add_mutually_exclusive_group()
    key.add_argument("-k", "--key-file", metavar="FILE", help="file containing the key")
    key.add_argument("-K", "--key", metavar="HEX", help="the key as hex")
    edit.add_argument("-n", "--no-randomize-unallocated", action="store_true", help="no effect")
    edits = edit.add_subparsers(dest="aux_edit", metavar="COMMAND", required=True)
    add = action(
        edits, ("aux-fs-metadata", "edit", "add-entry"), "add an entry",
        "Add an entry with UUID, its data from --input-file or standard input.", _aux_edit,
    )  # fmt: skip
    add.add_argument("-i", "--input-file", metavar="FILE", help="data (default: stdin)")
    add.add_argument("uuid", metavar="UUID", type=inode_uuid, help="UUID of the entry to add")
    remove = action(
        edits, ("aux-fs-metadata", "edit", "remove-entry"), "remove an entry",
        "Remove the INDEX-th entry with UUID (exit 21 if there is none).", _aux_edit,
    )  # fmt: skip
    remove.add_argument("uuid", metavar="UUID", type=inode_uuid, help="UUID of the entry")
    remove.add_argument(
        "index", metavar="INDEX", nargs="?", type=index, default=0,
        help="selection index among the entries with this UUID (default: 0)",
    )  # fmt: skip
    reserve = action(
        edits, ("aux-fs-metadata", "edit", "set-extra-reserve-capacity"),
        "change the extra reserve capacity recorded for offline updates",
        "Record a new extra reserve capacity ('disabled' or a size). The groups' room "
        "changes only when they are reallocated, which needs the key and the Rust tool.",
        _aux_edit,
    )  # fmt: skip
    reserve.add_argument("capacity", metavar="disabled|SIZE", type=_reserve)


def _flags(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def register_write(
    actions: Any,  # noqa: ANN401 (argparse's subparsers type is private)
    action: Action,
    add_key_options: Callable[[argparse.ArgumentParser], None],
    inode: Callable[[str], int],
) -> None:
    """Add the write commands to `cvmstore cocoonfs`."""
    mkfs = action(
        actions,
        ("mkfs",),
        "format the filesystem",
        "Format the image file (created with -s SIZE when missing) as a CocoonFs v1 "
        "filesystem under the key, choosing the algorithms from -H/-C/-t as the Rust tool "
        "does. Free space is filled with random bytes unless -n. No auxiliary metadata "
        "area is made.",
        _mkfs,
    )
    add_key_options(mkfs)
    _add_layout_options(mkfs)

    info = action(
        actions,
        ("write-mkfs-info-header",),
        "write a filesystem creation info header (no key needed)",
        "Write a keyless CCFSMKFS header holding the layout, size and salt, so that whoever "
        "holds the key formats the volume on first open. The header is not authenticated: "
        "the party that formats must check its choices.",
        _write_mkfs_info_header,
    )
    _add_layout_options(info)
    info.add_argument(
        "-T", "--trim-volume-file-to-header", action="store_true",
        help="cut the file to the bare header (to write at the start of a storage volume)",
    )  # fmt: skip

    write = action(
        actions,
        ("write-file",),
        "write to a file in the filesystem image",
        "Create or replace a file as one crash-safe transaction through the format's "
        "journal; the image stays readable by the Rust tool.",
        _write_file,
    )
    add_key_options(write)
    write.add_argument(
        "-i", "--input-file", metavar="FILE",
        help="input file providing the data to write (default: standard input)",
    )  # fmt: skip
    write.add_argument("inode", metavar="INODE-NUMBER", type=inode, help="inode number to write")
    write.add_argument(
        "flags", metavar="INODE-FLAGS", type=_flags, nargs="?", default=0,
        help="flags value to set for the inode, 0..255 (default: 0)",
    )  # fmt: skip

    remove = action(
        actions,
        ("remove-file",),
        "remove a file from the filesystem image",
        "Remove a file as one crash-safe transaction; exit 21 if it does not exist.",
        _remove_file,
    )
    add_key_options(remove)
    remove.add_argument("inode", metavar="INODE-NUMBER", type=inode, help="inode number to delete")
