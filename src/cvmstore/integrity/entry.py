"""The 48-byte tree entry: where a child lives and how to authenticate it (docs/format.md).

| off | size | field |
|---|---|---|
| 0 | 8 | physical block (0: nothing written here; reads as zeros) |
| 8 | 8 | generation whose key encrypted the child |
| 16 | 12 | AES-GCM nonce |
| 28 | 16 | AES-GCM tag of the child (the Merkle link: tag-as-leaf) |
| 44 | 4 | reserved, zero |
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

from cvmstore.errors import FormatError

__all__ = ["EMPTY", "Entry", "pack_entry", "raw_entries"]

_ENTRY = struct.Struct("<QQ12s16s4s")
if _ENTRY.size != 48:
    raise AssertionError("entry layout must be 48 bytes")


@dataclass(frozen=True, slots=True)
class Entry:
    """A parent's record of one child (data block, bitmap block or node)."""

    physical: int
    generation: int
    nonce: bytes
    tag: bytes

    @property
    def empty(self) -> bool:
        """True when nothing was ever written here (the child reads as zeros)."""
        return self.physical == 0

    def encode(self) -> bytes:
        """The 48 entry bytes."""
        return _ENTRY.pack(self.physical, self.generation, self.nonce, self.tag, bytes(4))

    @classmethod
    def decode(cls, data: bytes | bytearray, offset: int = 0) -> Self:
        """Parse an entry at `offset` of `data` (already authenticated, or a header field)."""
        physical, generation, nonce, tag, reserved = _ENTRY.unpack_from(data, offset)
        if reserved != bytes(4):
            raise FormatError("reserved entry bytes are not zero", offset=offset + 44)
        return cls(physical, generation, nonce, tag)

    @classmethod
    def from_row(cls, row: tuple[int, int, bytes, bytes, bytes]) -> Self:
        """The entry of one `raw_entries` row, checked as `decode` checks it."""
        return cls.decode(_ENTRY.pack(*row))


EMPTY = Entry(0, 0, bytes(12), bytes(16))


def raw_entries(
    data: bytes | bytearray, offset: int, count: int
) -> list[tuple[int, int, bytes, bytes, bytes]]:
    """(physical, generation, nonce, tag, reserved) of `count` entries from `offset`.

    For hot loops that must not build an object per block; check `reserved` yourself.
    """
    return list(_ENTRY.iter_unpack(memoryview(data)[offset : offset + count * _ENTRY.size]))


def pack_entry(physical: int, generation: int, nonce: bytes, tag: bytes) -> bytes:
    """The 48 bytes of an entry, without building an `Entry` (for hot loops)."""
    return _ENTRY.pack(physical, generation, nonce, tag, _RESERVED)


_RESERVED = bytes(4)
