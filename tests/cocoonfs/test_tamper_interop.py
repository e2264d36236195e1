"""Images made by the real tool, then damaged: each kind of damage gets its own error, and no
change to an image ever yields different file contents."""

from __future__ import annotations

import os

import pytest

from cvmstore.cocoonfs.image import CocoonFsImage
from cvmstore.cocoonfs.layout import StaticHeader, decode_extent_ptr
from cvmstore.errors import (
    CvmstoreError,
    FormatError,
    IntegrityError,
    NotAnImageError,
    UnsupportedVersionError,
    WrongKeyError,
)
from tests.cocoonfs.conftest import KEY, Tool

CONTENT = {16: os.urandom(3000), 17: os.urandom(12_000)}


@pytest.fixture(scope="module")
def image(cocoonfs_tool: Tool, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("tamper") / "t.img"
    cocoonfs_tool.mkfs(path, "sha2", "aes", "128", "-s", "256K")
    for inode, data in CONTENT.items():
        cocoonfs_tool.write_file(path, inode, data)
    return path.read_bytes()


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def test_untouched_image_opens(image: bytes) -> None:
    opened = CocoonFsImage.open(image, KEY)
    assert {e.inode: opened.read_file(e.inode) for e in opened.list_files()} == CONTENT


def test_wrong_key(image: bytes) -> None:
    with pytest.raises(WrongKeyError):
        CocoonFsImage.open(image, KEY[:-1] + bytes([KEY[-1] ^ 1]))
    with pytest.raises(WrongKeyError):
        CocoonFsImage.open(image, KEY[:16])


def test_root_hmac_tampered(image: bytes) -> None:
    mutable_at = StaticHeader.decode(image[:4096]).encoded_len
    with pytest.raises(IntegrityError, match="root HMAC"):
        CocoonFsImage.open(_flip(image, mutable_at + 16), KEY)


def test_update_counter_tampered(image: bytes) -> None:
    mutable_at = StaticHeader.decode(image[:4096]).encoded_len
    with pytest.raises(IntegrityError, match="root HMAC"):
        CocoonFsImage.open(_flip(image, mutable_at + 16 + 32 + 3), KEY)


@pytest.mark.parametrize("inode", sorted(CONTENT))
def test_file_data_tampered(image: bytes, inode: int) -> None:
    opened = CocoonFsImage.open(image, KEY)
    (entry,) = [e for e in opened.list_files() if e.inode == inode]
    ptr = decode_extent_ptr(entry.extent_ptr)
    assert ptr is not None
    start = ptr[0] << opened.layout.allocation_block_size_log2
    with pytest.raises(IntegrityError):
        CocoonFsImage.open(_flip(image, start + 40), KEY)


def test_entry_leaf_tampered_is_indistinguishable_from_a_wrong_key(image: bytes) -> None:
    opened = CocoonFsImage.open(image, KEY)
    leaf = opened.mutable_header.entry_leaf << opened.layout.allocation_block_size_log2
    with pytest.raises(WrongKeyError):
        CocoonFsImage.open(_flip(image, leaf + 20), KEY)


def test_not_an_image(image: bytes) -> None:
    with pytest.raises(NotAnImageError):
        CocoonFsImage.open(b"COCOONFX" + image[8:], KEY)
    with pytest.raises(NotAnImageError):
        CocoonFsImage.open(bytes(len(image)), KEY)


def test_unsupported_version(image: bytes) -> None:
    mask = image[39]  # the XOR mask byte of the static header's integrity section
    changed = image[:8] + bytes([2 ^ mask]) + image[9:]
    with pytest.raises(UnsupportedVersionError):
        CocoonFsImage.open(changed, KEY)


@pytest.mark.parametrize("offset", [9, 31, 60, 200, 300, 511])
def test_static_header_damaged(image: bytes, offset: int) -> None:
    with pytest.raises(FormatError) as raised:
        CocoonFsImage.open(_flip(image, offset), KEY)
    assert type(raised.value) is FormatError


def test_torn_static_header(image: bytes) -> None:
    torn = image[:64] + bytes(448) + image[512:]
    with pytest.raises(FormatError, match="torn"):
        CocoonFsImage.open(torn, KEY)


def test_bare_journal_magic_is_a_torn_head(image: bytes) -> None:
    """`CCFSJRNL` without a head that passes its integrity check is a torn journal write:
    the transaction never committed, and the image reads as before (forged whole heads are
    refused: tests/cocoonfs/test_crash.py)."""
    journal_head = 1024  # first IO Block boundary after the header, default geometry
    changed = image[:journal_head] + b"CCFSJRNL" + image[journal_head + 8 :]
    opened = CocoonFsImage.open(changed, KEY)
    assert {e.inode: opened.read_file(e.inode) for e in opened.list_files()} == CONTENT


def test_truncated_image(image: bytes) -> None:
    with pytest.raises(FormatError):
        CocoonFsImage.open(image[: len(image) // 2], KEY)


def test_no_single_byte_change_alters_what_is_read(image: bytes) -> None:
    """Flip one byte in every Allocation Block: the image is refused, or it opens and
    reads exactly as before (the byte was in unallocated, unauthenticated space)."""
    detected = 0
    for offset in range(77, len(image), 128):
        try:
            opened = CocoonFsImage.open(_flip(image, offset), KEY)
        except CvmstoreError:
            detected += 1
            continue
        assert {e.inode: opened.read_file(e.inode) for e in opened.list_files()} == CONTENT
    assert detected >= 150
