"""The filesystem's on-store structures: superblock, inode records and directory blocks.

All of them live in logical blocks of a `SecureStore`, which already encrypts and
authenticates every byte, so none carries its own MAC. docs/format.md, part 2, is the
byte-level specification; integers are little-endian.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from cvmstore.errors import FsCorruptError, UnsupportedVersionError

__all__ = [
    "DIRECT",
    "FS_MAGIC",
    "FS_VERSION",
    "INODE_SIZE",
    "INODE_TABLE",
    "ROOT",
    "Inode",
    "Kind",
    "Superblock",
    "decode_dir_block",
    "dir_capacity",
    "encode_dir_block",
    "record_size",
]

FS_MAGIC = b"CVMFS\0\0\0"
FS_VERSION = 1
INODE_SIZE = 256
DIRECT = 12
INODE_TABLE = 0  # the inode table is itself a file; its inode sits in the superblock
ROOT = 1

_DIR_HEADER = struct.Struct("<HH")  # bytes of records, record count
_DIR_RECORD = struct.Struct("<QBB")  # inode, kind, name length; then the name


class Kind(enum.IntEnum):
    """What an inode is; FREE marks a slot on the free-inode chain."""

    FREE = 0
    FILE = 1
    DIR = 2


_INODE = struct.Struct(f"<B7xQQQQQQ{DIRECT}QQQQ")  # 176 bytes, zero-padded to 256


@dataclass(slots=True)
class Inode:
    """One inode record (256 bytes).

    `pointers` holds the 12 direct block numbers, then the single, double and triple
    indirect roots; 0 means a hole (logical block 0 is the superblock, never file data).
    """

    kind: Kind = Kind.FREE
    size: int = 0
    ctime_ns: int = 0
    mtime_ns: int = 0
    parent: int = 0
    next_free: int = 0
    blocks: int = 0
    pointers: list[int] = field(default_factory=lambda: [0] * (DIRECT + 3))

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview, offset: int, ino: int) -> Inode:
        """Decode the record at `offset`; reject kinds and reserved bytes we do not know."""
        values = _INODE.unpack_from(buf, offset)
        try:
            kind = Kind(values[0])
        except ValueError:
            raise FsCorruptError(f"inode {ino} has unknown kind {values[0]}") from None
        reserved = buf[offset + 1 : offset + 8]
        tail = buf[offset + _INODE.size : offset + INODE_SIZE]
        if any(reserved) or any(tail):
            raise FsCorruptError(f"inode {ino} has non-zero reserved bytes")
        size, ctime, mtime, parent, next_free, blocks = values[1:7]
        return cls(kind, size, ctime, mtime, parent, next_free, blocks, list(values[7:]))

    def encode_into(self, buf: bytearray, offset: int) -> None:
        """Write the record at `offset` (reserved bytes zeroed)."""
        _INODE.pack_into(
            buf,
            offset,
            self.kind,
            self.size,
            self.ctime_ns,
            self.mtime_ns,
            self.parent,
            self.next_free,
            self.blocks,
            *self.pointers,
        )
        buf[offset + _INODE.size : offset + INODE_SIZE] = bytes(INODE_SIZE - _INODE.size)


_SUPER = struct.Struct("<8sHHIQQQQQQQQQ")  # 96 bytes; reserved to 256; then inode 0


@dataclass(slots=True)
class Superblock:
    """Logical block 0: the filesystem's geometry and counters, and the inode table's inode."""

    block_size: int
    total_blocks: int
    bitmap_start: int
    bitmap_blocks: int
    inode_slots: int  # inode numbers below this have a record in the table
    free_inode_head: int  # first inode on the free chain, 0 for none
    used_blocks: int
    live_inodes: int
    created_ns: int
    table: Inode

    def encode(self) -> bytes:
        """The whole block: header, zero padding, inode 0 at 256, zeros to the block end."""
        buf = bytearray(self.block_size)
        _SUPER.pack_into(
            buf,
            0,
            FS_MAGIC,
            FS_VERSION,
            INODE_SIZE,
            self.block_size,
            self.total_blocks,
            self.bitmap_start,
            self.bitmap_blocks,
            ROOT,
            self.inode_slots,
            self.free_inode_head,
            self.used_blocks,
            self.live_inodes,
            self.created_ns,
        )
        self.table.encode_into(buf, 256)
        return bytes(buf)

    @classmethod
    def decode(cls, block: bytes) -> Superblock:
        """Decode logical block 0, checking magic, version and everything fixed."""
        (magic, version, inode_size, block_size, total, bm_start, bm_blocks, root, *rest) = (
            _SUPER.unpack_from(block, 0)
        )
        if magic != FS_MAGIC:
            raise FsCorruptError(
                "the store holds no cvmstore filesystem (run `cvmstore mkfs` to make one)"
            )
        if version != FS_VERSION:
            raise UnsupportedVersionError(f"filesystem version {version} is not supported")
        if inode_size != INODE_SIZE or root != ROOT or block_size != len(block):
            raise FsCorruptError("the filesystem superblock has impossible fixed fields")
        if any(block[_SUPER.size : 256]) or any(block[256 + INODE_SIZE :]):
            raise FsCorruptError("the filesystem superblock has non-zero reserved bytes")
        table = Inode.decode(block, 256, INODE_TABLE)
        slots, free_head, used, live, created = rest
        return cls(
            block_size, total, bm_start, bm_blocks, slots, free_head, used, live, created, table
        )


def record_size(name: bytes) -> int:
    """Bytes one directory record takes."""
    return _DIR_RECORD.size + len(name)


def encode_dir_block(entries: dict[bytes, tuple[int, Kind]], block_size: int) -> bytes:
    """A directory block holding `entries` (name -> (inode, kind)), in insertion order."""
    buf = bytearray(block_size)
    offset = _DIR_HEADER.size
    for name, (ino, kind) in entries.items():
        _DIR_RECORD.pack_into(buf, offset, ino, kind, len(name))
        offset += _DIR_RECORD.size
        buf[offset : offset + len(name)] = name
        offset += len(name)
    _DIR_HEADER.pack_into(buf, 0, offset - _DIR_HEADER.size, len(entries))
    return bytes(buf)


def dir_capacity(block_size: int) -> int:
    """Bytes of records one directory block can hold."""
    return block_size - _DIR_HEADER.size


def decode_dir_block(block: bytes | bytearray, where: str) -> dict[bytes, tuple[int, Kind]]:
    """Decode a directory block; `where` names it in errors."""
    used, count = _DIR_HEADER.unpack_from(block, 0)
    end = _DIR_HEADER.size + used
    if end > len(block):
        raise FsCorruptError(f"{where}: records run past the block end")
    entries: dict[bytes, tuple[int, Kind]] = {}
    offset = _DIR_HEADER.size
    for _ in range(count):
        if offset + _DIR_RECORD.size > end:
            raise FsCorruptError(f"{where}: record at {offset} runs past the records")
        ino, kind, length = _DIR_RECORD.unpack_from(block, offset)
        offset += _DIR_RECORD.size
        name = bytes(block[offset : offset + length])
        offset += length
        if offset > end or kind not in (Kind.FILE, Kind.DIR) or length == 0:
            raise FsCorruptError(f"{where}: malformed record for inode {ino}")
        if name in entries:
            raise FsCorruptError(f"{where}: name {name!r} appears twice")
        entries[name] = (ino, Kind(kind))
    if offset != end or any(block[end:]):
        raise FsCorruptError(f"{where}: bytes after the last record")
    return entries
