"""Static, mutable and mkfs-info headers; the checksum; the torn-write protection."""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvmstore.cocoonfs.layout import (
    CipherAlg,
    HashAlg,
    ImageLayout,
    MkfsInfoHeader,
    MutableHeader,
    StaticHeader,
    checksum,
    decode_block_ptr,
    decode_extent_ptr,
    remove_extent_integrity,
)
from cvmstore.errors import FormatError, NotAnImageError, UnsupportedVersionError
from tests.cocoonfs.conftest import COMBOS, Tool


def _swap_bit_pairs_slowly(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        swapped = 0
        for bit in range(0, 8, 2):
            swapped |= ((byte >> bit) & 1) << (bit + 1)
            swapped |= ((byte >> (bit + 1)) & 1) << bit
        out.append(swapped)
    return bytes(out)


def test_checksum_is_two_crc32s() -> None:
    assert checksum(b"123456789")[:4] == (0xCBF43926).to_bytes(4, "little")
    data = os.urandom(300)
    expected = zlib.crc32(data).to_bytes(4, "little")
    expected += zlib.crc32(_swap_bit_pairs_slowly(data)).to_bytes(4, "little")
    assert checksum(data) == expected


def _protect(original: bytes, head_skip: int, offset: int, log2: int) -> bytes:
    """Apply the protection the way the spec describes writing it (an independent encoder)."""
    buf = bytearray(original)
    section = head_skip + offset
    buf[section : section + 9 + 8 * log2] = bytes(9 + 8 * log2)
    digest = checksum(bytes(buf))
    for i in range(log2, 0, -1):
        location = (1 << (i + 7)) - 8
        slot = section + 9 + 8 * (i - 1)
        buf[slot : slot + 8] = buf[location : location + 8]
    taken = set(digest) | set(buf[head_skip:section]) | set(buf[section + 9 : 128])
    mask = min(set(range(1, 256)) - taken)
    for i in range(head_skip, 128):
        buf[i] ^= mask
    commit_id = bytes(b ^ mask for b in digest)
    buf[section : section + 8] = commit_id
    buf[section + 8] = mask
    for i in range(1, log2 + 1):
        location = (1 << (i + 7)) - 8
        buf[location : location + 8] = commit_id
    return bytes(buf)


def _nonzero_original(length: int, head_skip: int, offset: int, log2: int) -> bytes:
    buf = bytearray(os.urandom(length))
    for i in range(head_skip, 128):
        while buf[i] == 0:
            buf[i] = os.urandom(1)[0]
    buf[head_skip + offset : head_skip + offset + 9 + 8 * log2] = bytes(9 + 8 * log2)
    return bytes(buf)


@pytest.mark.parametrize("log2", [0, 2, 5])
def test_extent_integrity_round_trip(log2: int) -> None:
    original = _nonzero_original(128 << log2, 8, 23, log2)
    protected = _protect(original, 8, 23, log2)
    assert remove_extent_integrity(protected, 8, 23, log2) == original


def test_extent_integrity_detects_torn_and_damaged_extents() -> None:
    original = _nonzero_original(512, 8, 23, 2)
    protected = _protect(original, 8, 23, 2)
    torn_low = protected[:100] + bytes(28) + protected[128:]
    torn_high = protected[:300] + bytes(212)
    flipped = protected[:400] + bytes([protected[400] ^ 4]) + protected[401:]
    for bad in (torn_low, torn_high, flipped):
        assert remove_extent_integrity(bad, 8, 23, 2) is None


def test_layout_round_trip_and_rejects() -> None:
    layout = ImageLayout(
        0, 2, 1, 2, 2, 0, 0,
        HashAlg.SHA384, HashAlg.SHA384, HashAlg.SHA256, HashAlg.SHA256, HashAlg.SHA256,
        CipherAlg.CAMELLIA, 192,
    )  # fmt: skip
    assert ImageLayout.decode(layout.encode()) == layout
    assert layout.io_block_size == 512
    assert layout.auth_tree_node_size == 1024
    raw = bytearray(layout.encode())
    raw[1] = 7  # IO Block of 128 Allocation Blocks
    with pytest.raises(FormatError):
        ImageLayout.decode(bytes(raw))
    raw = bytearray(layout.encode())
    raw[-1] = 0x40  # Camellia-64
    with pytest.raises(FormatError):
        ImageLayout.decode(bytes(raw))
    raw = bytearray(layout.encode())
    raw[8] = 0x99  # unknown hash
    with pytest.raises(FormatError):
        ImageLayout.decode(bytes(raw))


def test_pointers() -> None:
    assert decode_extent_ptr(b"\xff" * 8) is None
    assert decode_extent_ptr(((5 << 7) | (3 << 1) | 1).to_bytes(8, "little")) == (5, 4, True)
    assert decode_block_ptr(b"\xff" * 8) is None
    assert decode_block_ptr((9 << 7).to_bytes(8, "little")) == 9
    with pytest.raises(FormatError):
        decode_block_ptr(((9 << 7) | 1).to_bytes(8, "little"))


@given(st.binary(min_size=0, max_size=1200))
def test_decoders_raise_only_format_error(data: bytes) -> None:
    for decode in (StaticHeader.decode, MkfsInfoHeader.decode):
        for prefix in (b"", b"COCOONFS", b"CCFSMKFS"):
            with contextlib.suppress(FormatError):
                decode(prefix + data)


def test_headers_refuse_the_other_kind() -> None:
    with pytest.raises(NotAnImageError):
        StaticHeader.decode(b"CCFSMKFS" + bytes(600))
    with pytest.raises(NotAnImageError):
        MkfsInfoHeader.decode(b"COCOONFS" + bytes(600))


@pytest.mark.parametrize(("hash_family", "cipher", "strength"), COMBOS)
def test_mkfs_info_header_from_cocoonfs(
    cocoonfs_tool: Tool, tmp_path: Path, hash_family: str, cipher: str, strength: str
) -> None:
    image = tmp_path / "info.img"
    image.write_bytes(bytes(1 << 20))
    cocoonfs_tool.run(
        image, "write-mkfs-info-header", "-H", hash_family, "-C", cipher, "-t", strength,
        "-I", "0a0b0c", "-s", "512K", "--io-block-size", "1K",
    )  # fmt: skip
    raw = image.read_bytes()

    header = MkfsInfoHeader.decode(raw[:4096])

    assert header.salt == bytes.fromhex("0a0b0c")
    assert header.image_size == 512 << 10
    assert header.layout.io_block_size == 1024
    assert header.layout.block_cipher_key_bits == int(strength)
    with pytest.raises(NotAnImageError):
        StaticHeader.decode(raw[:4096])
    mask = raw[47 + 8]
    with pytest.raises(UnsupportedVersionError):
        MkfsInfoHeader.decode(raw[:8] + bytes([3 ^ mask]) + raw[9:4096])
    with pytest.raises(FormatError):
        MkfsInfoHeader.decode(raw[:500] + bytes([raw[500] ^ 1]) + raw[501:4096])


def test_mkfs_info_header_trimmed_blob(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image = tmp_path / "blob.img"
    image.write_bytes(bytes(1 << 20))
    cocoonfs_tool.run(
        image, "write-mkfs-info-header", "-T", "-H", "sm3", "-C", "sm4", "-t", "128",
        "-I", "ff" * 255, "-s", "1M",
    )  # fmt: skip
    header = MkfsInfoHeader.decode(image.read_bytes())
    assert header.salt == b"\xff" * 255
    assert header.layout.kdf_hash_alg is HashAlg.SM3_256
    assert header.layout.block_cipher_alg is CipherAlg.SM4


def test_static_and_mutable_header_from_cocoonfs(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    cocoonfs_tool.mkfs(image, "sha3", "aes", "192", "-s", "1M", "--io-block-size", "2K")
    raw = image.read_bytes()

    static = StaticHeader.decode(raw[:4096])
    mutable = MutableHeader.decode(raw[static.encoded_len :][:512], static.layout)

    assert static.salt == bytes.fromhex("c0c00f5eed")
    assert static.encoded_len == 2048
    assert static.layout.auth_tree_node_hash_alg is HashAlg.SHA3_384
    assert static.layout.auth_tree_root_hmac_hash_alg is HashAlg.SHA3_256
    assert len(mutable.root_hmac) == 32
    assert mutable.image_size_allocation_blocks == (1 << 20) // 128
