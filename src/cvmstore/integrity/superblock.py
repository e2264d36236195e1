"""The superblock slot: static header plus the commit record, MACed (docs/format.md).

Blocks 0 and 1 each hold one slot (A, B) in their first 512 bytes, the rest of the block is
zero. A commit writes the slot that does not hold the newest valid record, so a torn or lost
superblock write always leaves the previous commit readable. All integers little-endian.

| off | size | field |
|---|---|---|
| 0 | 8 | magic `CVMSTORE` |
| 8 | 2 | format version (1) |
| 10 | 2 | slot size (512) |
| 12 | 2 | AEAD id (1 = AES-256-GCM) |
| 14 | 2 | KDF id (1 = HKDF-SHA256) |
| 16 | 2 | MAC id (1 = HMAC-SHA256) |
| 18 | 2 | key-wrap id (1 = AES key wrap, RFC 3394) |
| 20 | 4 | block size |
| 24 | 16 | volume id |
| 40 | 32 | salt |
| 72 | 8 | physical blocks |
| 80 | 8 | logical blocks |
| 88 | 8 | data-area blocks (must equal the planned geometry) |
| 96 | 2 | entry size (48) |
| 98 | 6 | reserved, zero |
| 104 | 32 | key check value |
| 136 | 40 | wrapped volume key |
| 176 | 8 | generation |
| 184 | 48 | root entry |
| 232 | 8 | allocation cursor |
| 240 | 8 | data blocks in use |
| 248 | 32 | digest of the previous commit's slot |
| 280 | 8 | anchored generation this commit builds on |
| 288 | 32 | anchored digest this commit builds on |
| 320 | 160 | reserved, zero |
| 480 | 32 | HMAC-SHA256 over bytes 0..479 under the header key |

The digest of a commit (what the anchor records as its root) is SHA-256 of the 512 slot bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Self

from cvmstore.errors import FormatError, NotAnImageError, UnsupportedVersionError
from cvmstore.integrity.entry import Entry

__all__ = ["FORMAT_VERSION", "MAGIC", "SLOT_SIZE", "Algorithms", "SuperblockSlot"]

MAGIC = b"CVMSTORE"
FORMAT_VERSION = 1
SLOT_SIZE = 512
_BODY = struct.Struct("<8sHHHHHHI16s32sQQQH6s32s40sQ48sQQ32sQ32s160s")
_MAC_OFFSET = 480
if _BODY.size != _MAC_OFFSET:
    raise AssertionError(f"superblock body is {_BODY.size} bytes, expected {_MAC_OFFSET}")


@dataclass(frozen=True, slots=True)
class Algorithms:
    """Algorithm identifiers, recorded and authenticated so nobody can downgrade them."""

    aead: int = 1  # AES-256-GCM
    kdf: int = 1  # HKDF-SHA256
    mac: int = 1  # HMAC-SHA256
    keywrap: int = 1  # AES key wrap

    def check_supported(self) -> None:
        """Raise `UnsupportedVersionError` for any algorithm this version cannot use."""
        if (self.aead, self.kdf, self.mac, self.keywrap) != (1, 1, 1, 1):
            raise UnsupportedVersionError(
                f"unsupported algorithms (aead {self.aead}, kdf {self.kdf}, mac {self.mac}, "
                f"keywrap {self.keywrap})"
            )


@dataclass(frozen=True, slots=True)
class SuperblockSlot:
    """One decoded slot. `decode` checks structure only; the store checks KCV and MAC."""

    algorithms: Algorithms
    block_size: int
    volume_id: bytes
    salt: bytes
    physical_blocks: int
    logical_blocks: int
    data_blocks: int
    kcv: bytes
    wrapped_key: bytes
    generation: int
    root: Entry
    cursor: int
    used_blocks: int
    previous_digest: bytes
    anchored_generation: int
    anchored_digest: bytes
    mac: bytes = bytes(32)

    def body(self) -> bytes:
        """The 480 MACed bytes."""
        a = self.algorithms
        return _BODY.pack(
            MAGIC,
            FORMAT_VERSION,
            SLOT_SIZE,
            a.aead,
            a.kdf,
            a.mac,
            a.keywrap,
            self.block_size,
            self.volume_id,
            self.salt,
            self.physical_blocks,
            self.logical_blocks,
            self.data_blocks,
            48,
            bytes(6),
            self.kcv,
            self.wrapped_key,
            self.generation,
            self.root.encode(),
            self.cursor,
            self.used_blocks,
            self.previous_digest,
            self.anchored_generation,
            self.anchored_digest,
            bytes(160),
        )

    def encode(self) -> bytes:
        """The 512 slot bytes (body and MAC)."""
        return self.body() + self.mac

    def digest(self) -> bytes:
        """SHA-256 of the slot: what the anchor records as this commit's root."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse a slot's structure (magic, version, sizes, reserved bytes); not its MAC.

        Raises:
            NotAnImageError: no cvmstore magic.
            UnsupportedVersionError: another format version or unknown algorithms.
            FormatError: anything else malformed.
        """
        if len(data) < SLOT_SIZE:
            raise FormatError(f"a superblock slot is {SLOT_SIZE} bytes, got {len(data)}")
        if data[:8] != MAGIC:
            raise NotAnImageError("not a cvmstore image (no CVMSTORE magic)", offset=0)
        fields = _BODY.unpack_from(data)
        (_, version, slot_size, aead, kdf, mac_id, keywrap, block_size) = fields[:8]
        if version != FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"cvmstore format version {version}; this cvmstore reads version {FORMAT_VERSION}"
            )
        algorithms = Algorithms(aead, kdf, mac_id, keywrap)
        algorithms.check_supported()
        if slot_size != SLOT_SIZE or fields[13] != 48:
            raise FormatError("superblock slot or entry size is wrong", offset=10)
        if fields[14] != bytes(6) or fields[24] != bytes(160):
            raise FormatError("reserved superblock bytes are not zero", offset=98)
        if block_size < 512 or block_size % 512:
            raise FormatError(f"block size {block_size} is not a multiple of 512", offset=20)
        return cls(
            algorithms=algorithms,
            block_size=block_size,
            volume_id=fields[8],
            salt=fields[9],
            physical_blocks=fields[10],
            logical_blocks=fields[11],
            data_blocks=fields[12],
            kcv=fields[15],
            wrapped_key=fields[16],
            generation=fields[17],
            root=Entry.decode(fields[18]),
            cursor=fields[19],
            used_blocks=fields[20],
            previous_digest=fields[21],
            anchored_generation=fields[22],
            anchored_digest=fields[23],
            mac=bytes(data[_MAC_OFFSET:SLOT_SIZE]),
        )
