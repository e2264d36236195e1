"""The read path against images made by the real `cocoonfs` tool: every algorithm combination
the tool offers, two geometries, files of every shape, compared byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cvmstore.cocoonfs.image import CocoonFsImage
from cvmstore.cocoonfs.layout import CipherAlg, HashAlg, StaticHeader, decode_extent_ptr
from tests.cocoonfs.conftest import COMBOS, GEOMETRIES, KEY, Tool

TPM_NVCHIP = (1 << 32) | 0
TPM_MANUFACTURED = (1 << 32) | 1

_HASHES = {
    "sha2": (HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512),
    "sha3": (HashAlg.SHA3_256, HashAlg.SHA3_384, HashAlg.SHA3_512),
    "sm3": (HashAlg.SM3_256,) * 3,
}
_STRENGTH = {"128": 0, "192": 1, "256": 2}


def _contents() -> dict[int, tuple[bytes, int]]:
    """inode -> (content, flags): a direct extent, an extents list (over 64 Allocation
    Blocks), an empty file, and the SVSM's vTPM inodes."""
    rng = os.urandom
    return {
        16: (rng(5000), 0x03),
        17: (rng(20_000), 0x00),
        18: (b"", 0xFF),
        TPM_NVCHIP: (rng(16384), 0x00),
        TPM_MANUFACTURED: (b"COCONUT-SVSM", 0x00),
    }


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize(("hash_family", "cipher", "strength"), COMBOS)
def test_reads_what_cocoonfs_wrote(
    cocoonfs_tool: Tool, tmp_path: Path, hash_family: str, cipher: str, strength: str, geometry: str
) -> None:
    image = tmp_path / "state.img"
    cocoonfs_tool.mkfs(image, hash_family, cipher, strength, "-s", "2M", *GEOMETRIES[geometry])
    contents = _contents()
    for inode, (data, flags) in contents.items():
        cocoonfs_tool.write_file(image, inode, data, flags)

    opened = CocoonFsImage.open(image.read_bytes(), KEY)

    layout = opened.layout
    family = _HASHES[hash_family]
    assert layout.auth_tree_node_hash_alg is family[_STRENGTH[strength]]
    assert layout.kdf_hash_alg is family[0]
    assert layout.block_cipher_alg is CipherAlg[cipher.upper()]
    assert layout.block_cipher_key_bits == int(strength)
    listed = [(e.inode, e.flags) for e in opened.list_files()]
    assert listed == cocoonfs_tool.list_files(image)
    assert listed == [(n, contents[n][1]) for n in sorted(contents)]
    for inode, (data, _) in contents.items():
        assert opened.read_file(inode) == data
        assert cocoonfs_tool.read_file(image, inode) == data


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_multi_level_inode_index(cocoonfs_tool: Tool, tmp_path: Path, geometry: str) -> None:
    """Enough inodes that the index B+-tree grows internal nodes (5 entries per 128 B leaf)."""
    image = tmp_path / "many.img"
    cocoonfs_tool.mkfs(image, "sha2", "aes", "128", "-s", "2M", *GEOMETRIES[geometry])
    contents = {16 + 3 * i: os.urandom(i * 37) for i in range(40)}
    for inode, data in contents.items():
        cocoonfs_tool.write_file(image, inode, data, inode & 0xFF)
    cocoonfs_tool.run(image, "remove-file", "-K", KEY.hex(), "19")
    del contents[19]

    opened = CocoonFsImage.open(image.read_bytes(), KEY)

    assert [(e.inode, e.flags) for e in opened.list_files()] == [
        (n, n & 0xFF) for n in sorted(contents)
    ]
    for inode, data in contents.items():
        assert opened.read_file(inode) == data


def test_fresh_image_has_no_files(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image = tmp_path / "fresh.img"
    cocoonfs_tool.mkfs(image, "sha2", "aes", "128", "-s", "8M")

    opened = CocoonFsImage.open(image.read_bytes(), KEY)

    assert opened.list_files() == []
    assert StaticHeader.decode(image.read_bytes()[:4096]).salt == bytes.fromhex("c0c00f5eed")
    assert opened.mutable_header.image_size_allocation_blocks == (8 << 20) // 128


def test_update_counter_advances_with_each_update(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image = tmp_path / "counter.img"
    cocoonfs_tool.mkfs(image, "sha3", "camellia", "256", "-s", "1M")
    before = CocoonFsImage.open(image.read_bytes(), KEY).update_counter
    cocoonfs_tool.write_file(image, 16, b"x")
    after = CocoonFsImage.open(image.read_bytes(), KEY).update_counter
    assert after == (before + 1) % (1 << 128)


def test_io_block_larger_than_4k(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image = tmp_path / "big-io.img"
    cocoonfs_tool.mkfs(
        image, "sha2", "camellia", "192", "-s", "4M",
        "--allocation-block-size", "512", "--io-block-size", "16K",
    )  # fmt: skip
    data = os.urandom(70_000)
    cocoonfs_tool.write_file(image, 1 << 33, data, 7)

    opened = CocoonFsImage.open(image.read_bytes(), KEY)

    assert opened.static_header.encoded_len == 16384
    assert [(e.inode, e.flags) for e in opened.list_files()] == [(1 << 33, 7)]
    assert opened.read_file(1 << 33) == data


UUIDS = [f"6ba7b81{i}-9dad-11d1-80b4-00c04fd430c8" for i in range(3)]


@pytest.mark.parametrize("reserve", ["disabled", "1K", "8K"])
def test_auxiliary_metadata_is_skipped_by_the_authentication(
    cocoonfs_tool: Tool, tmp_path: Path, reserve: str
) -> None:
    """Aux metadata extents are allocated but hashed as free; edits with and without the key
    (which move or grow them) must leave the image authenticating."""
    image = tmp_path / "aux.img"
    cocoonfs_tool.mkfs(
        image, "sha2", "aes", "128", "-s", "1M", "--aux-fs-metadata-extra-reserve-capacity", reserve
    )
    data = os.urandom(3000)
    cocoonfs_tool.write_file(image, 16, data)
    entry = tmp_path / "entry"
    entry.write_bytes(os.urandom(700))
    edit = ("aux-fs-metadata", "edit")
    if reserve != "disabled":
        cocoonfs_tool.run(image, *edit, "add-entry", "-i", str(entry), UUIDS[0])
    entry.write_bytes(os.urandom(5000))
    cocoonfs_tool.run(image, *edit, "-K", KEY.hex(), "add-entry", "-i", str(entry), UUIDS[1])
    if reserve != "disabled":
        entry.write_bytes(os.urandom(500))  # offline edits fit the extra reserve only
        cocoonfs_tool.run(image, *edit, "add-entry", "-i", str(entry), UUIDS[2])

    opened = CocoonFsImage.open(image.read_bytes(), KEY)

    assert opened.read_file(16) == data
    heads = [decode_extent_ptr(p) for p in opened.mutable_header.aux_fs_metadata_heads]
    assert heads[0] is not None
    assert (heads[1] is None) == (reserve == "disabled")


def test_torn_inactive_aux_metadata_extent(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    """A torn extent in update group 1 is passed by its predecessor's second link; both tools
    still open the image."""
    image = tmp_path / "torn-aux.img"
    cocoonfs_tool.mkfs(image, "sha3", "sm4", "128", "-s", "1M")
    data = os.urandom(100)
    cocoonfs_tool.write_file(image, 16, data)
    raw = bytearray(image.read_bytes())
    opened = CocoonFsImage.open(bytes(raw), KEY)
    group1 = decode_extent_ptr(opened.mutable_header.aux_fs_metadata_heads[1])
    assert group1 is not None
    at = group1[0] << opened.layout.allocation_block_size_log2
    raw[at : at + 128] = bytes(128)
    image.write_bytes(bytes(raw))

    assert CocoonFsImage.open(bytes(raw), KEY).read_file(16) == data
    assert cocoonfs_tool.read_file(image, 16) == data
