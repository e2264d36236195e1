"""CocoonFs format v1: the image layout, the image headers and their torn-write protection.

Spec: `cocoonfs-format.md` in coconut-svsm/cocoon-tpm, sections "Image header", "Static image
header", "Mutable image header", "Filesystem creation info header", "Checksum scheme" and
"Common extent integrity protection scheme". Nothing here needs the key.

Static image header (offset 0, padded to an IO Block):

| offset | size       | field                                                        |
|-------:|-----------:|--------------------------------------------------------------|
| 0      | 8          | magic `COCOONFS` (exempt from the XOR mask)                  |
| 8      | 1          | format version, 1                                            |
| 9      | 21         | image layout (table below)                                   |
| 30     | 1          | salt length                                                  |
| 31     | 9 + 8*L    | integrity section: commit id, XOR mask, checkpoint save area |
| ...    | salt len   | salt                                                         |

Filesystem creation info header (`CCFSMKFS`, the same place, no key needed): magic, version 1,
layout, LE64 auxiliary-metadata length, LE64 image size in Allocation Blocks, salt length
(47 bytes), then the integrity section and the salt.

Image layout (21 bytes): seven log2 bytes (Allocation Block in 128 B units; IO Block, auth
tree data block, bitmap file block, index leaf and internal node in Allocation Blocks; auth
tree node in IO Blocks), then BE16 TCG ids of the node hash, data HMAC hash, root HMAC hash,
pre-authentication HMAC hash and KDF hash, then BE16 cipher id and BE16 key bits.

Mutable image header (next IO Block): two LE64 extent pointers to the auxiliary metadata
update groups, the root HMAC, the encrypted 128-bit update counter, the pre-authentication
HMAC of the inode index entry leaf, an LE64 block pointer to that leaf, LE64 image size.

Torn-write protection of a header extent, as verified here: the first 128 bytes (after the
magic) must all be non-zero; they are XOR-masked with the mask byte, except the 8-byte commit
id and the mask itself. The commit id (the checksum XOR the mask) is also written over the
last 8 bytes before every power-of-two boundary from 256 B up to the IO Block size; the bytes
it replaced sit in the save area, one 8-byte slot per boundary. The checksum is two CRC-32s,
one over the data and one over the data with each pair of neighbouring bits swapped, over the
whole restored extent with the integrity section zeroed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Self

from cvmstore.errors import FormatError, NotAnImageError, UnsupportedVersionError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MKFSINFO_MAGIC",
    "NIL_PTR",
    "CipherAlg",
    "HashAlg",
    "ImageLayout",
    "MkfsInfoHeader",
    "MutableHeader",
    "StaticHeader",
    "align_up",
    "apply_extent_integrity",
    "checksum",
    "decode_block_ptr",
    "decode_extent_ptr",
    "encode_block_ptr",
    "encode_extent_ptr",
    "remove_extent_integrity",
]

MAGIC = b"COCOONFS"
MKFSINFO_MAGIC = b"CCFSMKFS"
FORMAT_VERSION = 1

#: Length of the two-CRC checksum and of the commit id.
CHECKSUM_LEN = 8
#: The region that the XOR mask covers and that must hold no zero byte.
TIER0_LEN = 128
#: Length of the encrypted update counter before block-cipher padding.
UPDATE_COUNTER_LEN = 16


class HashAlg(IntEnum):
    """TCG Algorithm Registry identifiers of the hashes CocoonFs may name."""

    SHA1 = 0x0004
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    SM3_256 = 0x0012
    SHA3_256 = 0x0027
    SHA3_384 = 0x0028
    SHA3_512 = 0x0029

    @property
    def digest_len(self) -> int:
        """Digest length in bytes."""
        return _DIGEST_LEN[self]


_DIGEST_LEN = {
    HashAlg.SHA1: 20,
    HashAlg.SHA256: 32,
    HashAlg.SHA384: 48,
    HashAlg.SHA512: 64,
    HashAlg.SM3_256: 32,
    HashAlg.SHA3_256: 32,
    HashAlg.SHA3_384: 48,
    HashAlg.SHA3_512: 64,
}


class CipherAlg(IntEnum):
    """TCG Algorithm Registry identifiers of the block ciphers CocoonFs may name."""

    AES = 0x0006
    SM4 = 0x0013
    CAMELLIA = 0x0026


#: Key sizes in bits each cipher allows.
_KEY_BITS = {
    CipherAlg.AES: (128, 192, 256),
    CipherAlg.CAMELLIA: (128, 192, 256),
    CipherAlg.SM4: (128,),
}
#: All three ciphers have 128-bit blocks.
CIPHER_BLOCK_LEN = 16

_LAYOUT = struct.Struct(">7B5H2H")
if _LAYOUT.size != 21:  # pragma: no cover - import-time guard
    raise ImportError("CocoonFs image layout must be 21 bytes")
_U64 = struct.Struct("<Q")
#: NIL extent and block pointers are all-ones (spec of cocoon-tpm-storage 0.1.5).
_NIL = (1 << 64) - 1
#: The encoded NIL extent or block pointer.
NIL_PTR = _U64.pack(_NIL)


def _hash(value: int, field: str) -> HashAlg:
    try:
        return HashAlg(value)
    except ValueError:
        raise FormatError(f"CocoonFs layout: unknown {field} hash 0x{value:04x}") from None


@dataclass(frozen=True, slots=True)
class ImageLayout:
    """The 21-byte set of layout parameters (section "Static image header")."""

    allocation_block_size_128b_log2: int
    io_block_allocation_blocks_log2: int
    auth_tree_node_io_blocks_log2: int
    auth_tree_data_block_allocation_blocks_log2: int
    allocation_bitmap_file_block_allocation_blocks_log2: int
    index_tree_leaf_node_allocation_blocks_log2: int
    index_tree_internal_node_allocation_blocks_log2: int
    auth_tree_node_hash_alg: HashAlg
    auth_tree_data_hmac_hash_alg: HashAlg
    auth_tree_root_hmac_hash_alg: HashAlg
    preauth_cca_protection_hmac_hash_alg: HashAlg
    kdf_hash_alg: HashAlg
    block_cipher_alg: CipherAlg
    block_cipher_key_bits: int

    ENCODED_LEN = 21

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode and validate the layout; raises only `FormatError`."""
        if len(data) != _LAYOUT.size:
            raise FormatError(f"CocoonFs layout: {len(data)} bytes, expected {_LAYOUT.size}")
        f = _LAYOUT.unpack(data)
        try:
            cipher = CipherAlg(f[12])
        except ValueError:
            raise FormatError(f"CocoonFs layout: unknown block cipher 0x{f[12]:04x}") from None
        if f[13] not in _KEY_BITS[cipher]:
            raise FormatError(f"CocoonFs layout: {cipher.name} with a {f[13]}-bit key")
        layout = cls(
            f[0], f[1], f[2], f[3], f[4], f[5], f[6],
            _hash(f[7], "auth tree node"),
            _hash(f[8], "auth tree data HMAC"),
            _hash(f[9], "auth tree root HMAC"),
            _hash(f[10], "preauth CCA protection HMAC"),
            _hash(f[11], "KDF"),
            cipher,
            f[13],
        )  # fmt: skip
        layout._validate()
        return layout

    def encode(self) -> bytes:
        """The 21 bytes as stored."""
        return _LAYOUT.pack(
            self.allocation_block_size_128b_log2,
            self.io_block_allocation_blocks_log2,
            self.auth_tree_node_io_blocks_log2,
            self.auth_tree_data_block_allocation_blocks_log2,
            self.allocation_bitmap_file_block_allocation_blocks_log2,
            self.index_tree_leaf_node_allocation_blocks_log2,
            self.index_tree_internal_node_allocation_blocks_log2,
            self.auth_tree_node_hash_alg,
            self.auth_tree_data_hmac_hash_alg,
            self.auth_tree_root_hmac_hash_alg,
            self.preauth_cca_protection_hmac_hash_alg,
            self.kdf_hash_alg,
            self.block_cipher_alg,
            self.block_cipher_key_bits,
        )

    def _validate(self) -> None:
        # Sizes must stay far below 2^64 bytes; 2^40 B nodes or blocks are already absurd, so
        # cap every size at that to keep the arithmetic on untrusted input bounded.
        if self.allocation_block_size_128b_log2 > 33:
            raise FormatError("CocoonFs layout: Allocation Block size out of range")
        for name in (
            "io_block_allocation_blocks_log2",
            "auth_tree_data_block_allocation_blocks_log2",
            "index_tree_leaf_node_allocation_blocks_log2",
            "index_tree_internal_node_allocation_blocks_log2",
        ):
            if getattr(self, name) > 6:
                raise FormatError(f"CocoonFs layout: {name} > 6")
        if self.allocation_bitmap_file_block_allocation_blocks_log2 > 33:
            raise FormatError("CocoonFs layout: allocation bitmap file block out of range")
        if self.auth_tree_node_io_blocks_log2 > 33:
            raise FormatError("CocoonFs layout: auth tree node size out of range")
        if self.auth_tree_node_size_log2 > 40 or self.io_block_size_log2 > 40:
            raise FormatError("CocoonFs layout: sizes out of range")
        for alg in (self.auth_tree_node_hash_alg, self.auth_tree_data_hmac_hash_alg):
            if self.auth_tree_node_size < 2 * _next_pow2(alg.digest_len):
                raise FormatError("CocoonFs layout: auth tree node holds fewer than 2 digests")

    @property
    def allocation_block_size_log2(self) -> int:
        """log2 of the Allocation Block size in bytes."""
        return self.allocation_block_size_128b_log2 + 7

    @property
    def allocation_block_size(self) -> int:
        """Allocation Block size in bytes."""
        return 1 << self.allocation_block_size_log2

    @property
    def io_block_size_log2(self) -> int:
        """log2 of the IO Block size in bytes."""
        return self.io_block_allocation_blocks_log2 + self.allocation_block_size_log2

    @property
    def io_block_size(self) -> int:
        """IO Block size in bytes."""
        return 1 << self.io_block_size_log2

    @property
    def auth_tree_node_size_log2(self) -> int:
        """log2 of the authentication tree node size in bytes."""
        return self.auth_tree_node_io_blocks_log2 + self.io_block_size_log2

    @property
    def auth_tree_node_size(self) -> int:
        """Authentication tree node size in bytes."""
        return 1 << self.auth_tree_node_size_log2

    @property
    def auth_tree_data_block_size(self) -> int:
        """Authentication Tree Data Block size in bytes."""
        return 1 << (
            self.auth_tree_data_block_allocation_blocks_log2 + self.allocation_block_size_log2
        )

    @property
    def allocation_bitmap_file_block_size(self) -> int:
        """Allocation bitmap file block size in bytes."""
        return 1 << (
            self.allocation_bitmap_file_block_allocation_blocks_log2
            + self.allocation_block_size_log2
        )

    @property
    def index_leaf_node_size(self) -> int:
        """Inode index leaf node size in bytes."""
        return 1 << (
            self.index_tree_leaf_node_allocation_blocks_log2 + self.allocation_block_size_log2
        )

    @property
    def index_internal_node_size(self) -> int:
        """Inode index internal node size in bytes."""
        return 1 << (
            self.index_tree_internal_node_allocation_blocks_log2 + self.allocation_block_size_log2
        )

    @property
    def block_cipher_key_len(self) -> int:
        """Cipher key length in bytes."""
        return self.block_cipher_key_bits // 8

    @property
    def io_block_128b_log2(self) -> int:
        """log2 of the IO Block size in 128-byte units: the number of checkpoint slots."""
        return self.io_block_allocation_blocks_log2 + self.allocation_block_size_128b_log2

    @property
    def integrity_section_len(self) -> int:
        """Length of a common extent integrity protection section."""
        return CHECKSUM_LEN + 1 + CHECKSUM_LEN * self.io_block_128b_log2

    @property
    def encrypted_update_counter_len(self) -> int:
        """The 16-byte counter rounded up to cipher blocks."""
        return -(-UPDATE_COUNTER_LEN // CIPHER_BLOCK_LEN) * CIPHER_BLOCK_LEN


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def align_up(n: int, align: int) -> int:
    """`n` rounded up to a multiple of `align`."""
    return -(-n // align) * align


_SNB = bytes(((b & 0x55) << 1) | ((b >> 1) & 0x55) for b in range(256))


def checksum(data: bytes) -> bytes:
    """The 64-bit checksum of section "Checksum scheme".

    CRC-32 of the data, then of the data with the bits at odd and even positions swapped,
    each little-endian.
    """
    plain = zlib.crc32(data)
    swapped = zlib.crc32(data.translate(_SNB))
    return plain.to_bytes(4, "little") + swapped.to_bytes(4, "little")


def remove_extent_integrity(
    extent: bytes, head_skip: int, offset: int, io_block_128b_log2: int
) -> bytes | None:
    """Verify and undo the common extent integrity protection of a header extent.

    Args:
        extent: the whole protected extent as stored (at least one IO Block).
        head_skip: bytes at the start exempt from the protection (a magic).
        offset: where the integrity section starts, counted from `head_skip`.
        io_block_128b_log2: log2 of the IO Block size in 128-byte units.

    Returns:
        The extent's original contents (integrity section zeroed), or None if the extent was
        torn or damaged (a zero byte in the first 128 bytes, a checkpoint marker that differs
        from the commit id, or a checksum mismatch).
    """
    io_block = 128 << io_block_128b_log2
    section = head_skip + offset
    if len(extent) < io_block or section + CHECKSUM_LEN + 1 > TIER0_LEN:
        raise ValueError("extent shorter than an IO Block or integrity section misplaced")
    buf = bytearray(extent)
    tier0 = buf[head_skip:TIER0_LEN]
    if 0 in tier0:
        return None
    commit_id = bytes(buf[section : section + CHECKSUM_LEN])
    mask = buf[section + CHECKSUM_LEN]
    for i in range(head_skip, TIER0_LEN):
        buf[i] ^= mask
    buf[section : section + CHECKSUM_LEN + 1] = bytes(CHECKSUM_LEN + 1)
    save = section + CHECKSUM_LEN + 1
    for i in range(1, io_block_128b_log2 + 1):
        slot = save + CHECKSUM_LEN * (i - 1)
        original = bytes(buf[slot : slot + CHECKSUM_LEN])
        buf[slot : slot + CHECKSUM_LEN] = bytes(CHECKSUM_LEN)
        location = (1 << (i + 7)) - CHECKSUM_LEN
        if bytes(buf[location : location + CHECKSUM_LEN]) != commit_id:
            return None
        buf[location : location + CHECKSUM_LEN] = original
    expected = bytes(b ^ mask for b in commit_id)
    if checksum(bytes(buf)) != expected:
        return None
    return bytes(buf)


def apply_extent_integrity(
    original: bytes, head_skip: int, offset: int, io_block_128b_log2: int
) -> bytes:
    """Apply the common extent integrity protection: the inverse of `remove_extent_integrity`.

    `original` must hold zeros in the integrity section and no byte that the mask could not
    make non-zero; the mask is the smallest byte value that leaves the first 128 bytes
    (after `head_skip`) without a zero.
    """
    section = head_skip + offset
    save = section + CHECKSUM_LEN + 1
    buf = bytearray(original)
    digest = checksum(bytes(buf))
    for i in range(io_block_128b_log2, 0, -1):
        location = (1 << (i + 7)) - CHECKSUM_LEN
        slot = save + CHECKSUM_LEN * (i - 1)
        buf[slot : slot + CHECKSUM_LEN] = buf[location : location + CHECKSUM_LEN]
    taken = set(digest) | set(buf[head_skip:section]) | set(buf[save:TIER0_LEN])
    mask = min(set(range(1, 256)) - taken)
    for i in range(head_skip, TIER0_LEN):
        buf[i] ^= mask
    commit_id = bytes(b ^ mask for b in digest)
    buf[section : section + CHECKSUM_LEN] = commit_id
    buf[section + CHECKSUM_LEN] = mask
    for i in range(1, io_block_128b_log2 + 1):
        location = (1 << (i + 7)) - CHECKSUM_LEN
        buf[location : location + CHECKSUM_LEN] = commit_id
    return bytes(buf)


def _unmasked_byte(raw: bytes, index: int, mask_at: int) -> int:
    return raw[index] ^ raw[mask_at]


def decode_extent_ptr(raw: bytes) -> tuple[int, int, bool] | None:
    """Decode an encoded extent pointer (section "Encoded extent pointer").

    Returns (start, length, indirect) in Allocation Blocks, or None for NIL.
    """
    (value,) = _U64.unpack(raw)
    if value == _NIL:
        return None
    return value >> 7, ((value >> 1) & 0x3F) + 1, bool(value & 1)


def encode_extent_ptr(start: int, length: int, indirect: bool = False) -> bytes:
    """Encode an extent of 1..64 Allocation Blocks (section "Encoded extent pointer")."""
    if not 1 <= length <= 64 or start < 0 or start >= 1 << 57:
        raise ValueError(f"extent ({start}, {length}) cannot be encoded")
    return _U64.pack(start << 7 | (length - 1) << 1 | int(indirect))


def encode_block_ptr(start: int | None) -> bytes:
    """Encode a block pointer (section "Encoded block pointer"); None is NIL."""
    if start is None:
        return NIL_PTR
    if not 0 <= start < 1 << 57:
        raise ValueError(f"block {start} cannot be encoded")
    return _U64.pack(start << 7)


def decode_block_ptr(raw: bytes) -> int | None:
    """Decode an encoded block pointer to its start in Allocation Blocks, None for NIL.

    Raises:
        FormatError: the reserved low 7 bits are set.
    """
    value: int = _U64.unpack(raw)[0]
    if value == _NIL:
        return None
    if value & 0x7F:
        raise FormatError("CocoonFs block pointer: reserved bits set")
    return value >> 7


def _header_prefix(
    raw: bytes, magic: bytes, fixed_len: int, what: str
) -> tuple[ImageLayout, int, bytes]:
    """Shared decoding of both header kinds: returns (layout, salt length, restored bytes)."""
    if len(raw) < TIER0_LEN:
        raise NotAnImageError(f"{len(raw)} bytes are too short for a CocoonFs {what}")
    if raw[: len(magic)] != magic:
        raise NotAnImageError(f"no {magic.decode()} magic: not a CocoonFs {what}")
    offset = fixed_len - len(magic)
    if 0 in raw[len(magic) : TIER0_LEN]:
        raise FormatError(f"CocoonFs {what}: torn or damaged (zero byte in the first 128 B)")
    mask_at = fixed_len + CHECKSUM_LEN
    version = _unmasked_byte(raw, len(magic), mask_at)
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(f"CocoonFs {what} version {version}; only 1 is supported")
    layout_raw = bytes(b ^ raw[mask_at] for b in raw[len(magic) + 1 : len(magic) + 22])
    layout = ImageLayout.decode(layout_raw)
    salt_len = _unmasked_byte(raw, fixed_len - 1, mask_at)
    end = fixed_len + layout.integrity_section_len + salt_len
    extent_len = align_up(end, layout.io_block_size)
    if len(raw) < extent_len:
        raise FormatError(f"CocoonFs {what}: truncated ({len(raw)} of {extent_len} bytes)")
    restored = remove_extent_integrity(
        raw[:extent_len], len(magic), offset, layout.io_block_128b_log2
    )
    if restored is None:
        raise FormatError(f"CocoonFs {what}: torn or damaged (integrity check failed)")
    return layout, salt_len, restored


def _encode_header(fixed: bytes, layout: ImageLayout, salt: bytes, length: int) -> bytes:
    """Fixed fields, a zeroed integrity section and the salt, protected and padded."""
    if len(salt) > 255:
        raise ValueError("a CocoonFs salt holds at most 255 bytes")
    original = fixed + bytes(layout.integrity_section_len) + salt
    original += bytes(length - len(original))
    return apply_extent_integrity(original, 8, len(fixed) - 8, layout.io_block_128b_log2)


@dataclass(frozen=True, slots=True)
class StaticHeader:
    """The static image header (section "Static image header")."""

    layout: ImageLayout
    salt: bytes

    FIXED_LEN = 31

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        """Decode from the image's first bytes.

        At least `encoded_len` bytes are needed; 4 KiB suffices unless the IO Block is larger.

        Raises:
            NotAnImageError: no `COCOONFS` magic.
            UnsupportedVersionError: a version other than 1.
            FormatError: torn, damaged or invalid header.
        """
        layout, salt_len, restored = _header_prefix(raw, MAGIC, cls.FIXED_LEN, "image header")
        salt_at = cls.FIXED_LEN + layout.integrity_section_len
        return cls(layout, restored[salt_at : salt_at + salt_len])

    @property
    def encoded_len(self) -> int:
        """Length including the padding to the IO Block: where the mutable header starts."""
        raw = self.FIXED_LEN + self.layout.integrity_section_len + len(self.salt)
        return align_up(raw, self.layout.io_block_size)

    def encode(self) -> bytes:
        """The protected header, padded with zeros to `encoded_len`."""
        fixed = MAGIC + bytes([FORMAT_VERSION]) + self.layout.encode() + bytes([len(self.salt)])
        return _encode_header(fixed, self.layout, self.salt, self.encoded_len)


@dataclass(frozen=True, slots=True)
class MkfsInfoHeader:
    """The keyless filesystem creation info header (section "Filesystem creation info header").

    It is not authenticated: whoever formats from it must check its choices.
    """

    layout: ImageLayout
    aux_fs_metadata_len: int
    image_size_allocation_blocks: int
    salt: bytes

    FIXED_LEN = 47

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        """Decode from the first bytes of the volume (or of the backup copy).

        Raises:
            NotAnImageError: no `CCFSMKFS` magic.
            UnsupportedVersionError: a version other than 1.
            FormatError: torn, damaged or invalid header.
        """
        layout, salt_len, restored = _header_prefix(
            raw, MKFSINFO_MAGIC, cls.FIXED_LEN, "filesystem creation info header"
        )
        (aux_len,) = _U64.unpack_from(restored, 30)
        (size,) = _U64.unpack_from(restored, 38)
        if size == 0 or size % (1 << layout.io_block_allocation_blocks_log2):
            raise FormatError("CocoonFs mkfs info: image size is not a multiple of IO Blocks")
        if size >= 1 << (64 - layout.allocation_block_size_log2):
            raise FormatError("CocoonFs mkfs info: image size out of range")
        salt_at = cls.FIXED_LEN + layout.integrity_section_len
        return cls(layout, aux_len, size, restored[salt_at : salt_at + salt_len])

    @property
    def image_size(self) -> int:
        """Desired image size in bytes."""
        return self.image_size_allocation_blocks * self.layout.allocation_block_size

    @property
    def encoded_len(self) -> int:
        """Length including the padding to the IO Block (the aux metadata follows)."""
        raw = self.FIXED_LEN + self.layout.integrity_section_len + len(self.salt)
        return align_up(raw, self.layout.io_block_size)

    def encode(self) -> bytes:
        """The protected header, padded with zeros to `encoded_len`."""
        fixed = (
            MKFSINFO_MAGIC
            + bytes([FORMAT_VERSION])
            + self.layout.encode()
            + _U64.pack(self.aux_fs_metadata_len)
            + _U64.pack(self.image_size_allocation_blocks)
            + bytes([len(self.salt)])
        )
        return _encode_header(fixed, self.layout, self.salt, self.encoded_len)


@dataclass(frozen=True, slots=True)
class MutableHeader:
    """The mutable image header (section "Mutable image header"); read after the static one.

    Its fields are bound by the root HMAC (entry leaf pointer, image size, counter) or by
    their own HMAC (the entry leaf digest); `decode` checks only their structure.
    """

    aux_fs_metadata_heads: tuple[bytes, bytes]
    root_hmac: bytes
    encrypted_update_counter: bytes
    entry_leaf_preauth_hmac: bytes
    entry_leaf_ptr_raw: bytes
    entry_leaf: int
    image_size_allocation_blocks: int

    @classmethod
    def encoded_len(cls, layout: ImageLayout) -> int:
        """Length of the fields, without the padding to an Allocation Block."""
        return (
            16
            + layout.auth_tree_root_hmac_hash_alg.digest_len
            + layout.encrypted_update_counter_len
            + layout.preauth_cca_protection_hmac_hash_alg.digest_len
            + 16
        )

    @classmethod
    def decode(cls, raw: bytes, layout: ImageLayout) -> Self:
        """Decode the header from its first bytes.

        Raises:
            FormatError: short, NIL entry leaf, or an image size that is no whole number of IO
                Blocks.
        """
        need = cls.encoded_len(layout)
        if len(raw) < need:
            raise FormatError(f"CocoonFs mutable header: {len(raw)} of {need} bytes")
        pos = 16
        heads = (raw[0:8], raw[8:16])
        root_len = layout.auth_tree_root_hmac_hash_alg.digest_len
        root_hmac = raw[pos : pos + root_len]
        pos += root_len
        counter = raw[pos : pos + layout.encrypted_update_counter_len]
        pos += layout.encrypted_update_counter_len
        pre_len = layout.preauth_cca_protection_hmac_hash_alg.digest_len
        preauth = raw[pos : pos + pre_len]
        pos += pre_len
        ptr_raw = raw[pos : pos + 8]
        entry = decode_block_ptr(ptr_raw)
        if entry is None:
            raise FormatError("CocoonFs mutable header: NIL inode index entry leaf")
        (size,) = _U64.unpack_from(raw, pos + 8)
        if size == 0 or size % (1 << layout.io_block_allocation_blocks_log2):
            raise FormatError("CocoonFs mutable header: image size is not whole IO Blocks")
        if size >= 1 << (64 - layout.allocation_block_size_log2):
            raise FormatError("CocoonFs mutable header: image size out of range")
        return cls(heads, root_hmac, counter, preauth, ptr_raw, entry, size)

    def encode(self) -> bytes:
        """The fields back to back, without padding."""
        return (
            self.aux_fs_metadata_heads[0]
            + self.aux_fs_metadata_heads[1]
            + self.root_hmac
            + self.encrypted_update_counter
            + self.entry_leaf_preauth_hmac
            + self.entry_leaf_ptr_raw
            + _U64.pack(self.image_size_allocation_blocks)
        )
