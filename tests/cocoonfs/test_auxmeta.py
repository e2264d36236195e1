"""Auxiliary filesystem metadata, read without the key, compared with `cocoonfs aux-fs-metadata`."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvmstore.cocoonfs.auxmeta import (
    AuxFsMetadata,
    read_formatted_aux_metadata,
    read_mkfsinfo_aux_metadata,
)
from cvmstore.cocoonfs.image import CocoonFsImage
from cvmstore.cocoonfs.layout import decode_extent_ptr
from cvmstore.errors import FormatError
from tests.cocoonfs.conftest import KEY, Tool

A, B, C = (uuid.UUID(f"6ba7b81{i}-9dad-11d1-80b4-00c04fd430c8") for i in range(3))


def _record(tag: uuid.UUID | None, data: bytes) -> bytes:
    raw = bytes(16) if tag is None else tag.bytes
    return raw + len(data).to_bytes(4, "little") + data


def test_decode_records() -> None:
    payload = _record(A, b"one") + _record(A, b"") + _record(B, b"two") + _record(None, b"")
    decoded = AuxFsMetadata.decode(payload + b"ignored after the terminator")
    assert decoded.entries == ((A, b"one"), (A, b""), (B, b"two"))
    assert decoded.extra_reserve_capacity is None
    assert decoded.get(A, 1) == b""
    assert decoded.get(C) is None
    reserve = AuxFsMetadata.decode(_record(None, (4096).to_bytes(8, "little")))
    assert reserve.extra_reserve_capacity == 4096


@pytest.mark.parametrize(
    "payload",
    [
        _record(B, b"x") + _record(A, b"y") + _record(None, b""),  # out of order
        _record(A, b"x"),  # no terminator
        _record(None, b"abc"),  # terminator of bad length
        _record(A, b"x")[:-1],  # truncated
    ],
)
def test_decode_rejects(payload: bytes) -> None:
    with pytest.raises(FormatError):
        AuxFsMetadata.decode(payload)


@given(st.binary(max_size=200))
def test_decode_raises_only_format_error(payload: bytes) -> None:
    with contextlib.suppress(FormatError):
        AuxFsMetadata.decode(payload)


def _tool_entries(tool: Tool, image: Path) -> list[tuple[uuid.UUID, bytes]]:
    listed = tool.run(image, "aux-fs-metadata", "list-entries").decode().split()
    out: list[tuple[uuid.UUID, bytes]] = []
    for tag in listed:
        index = sum(1 for t, _ in out if str(t) == tag)
        data = tool.run(image, "aux-fs-metadata", "read-entry", tag, str(index))
        out.append((uuid.UUID(tag), data))
    return out


def _add(tool: Tool, image: Path, tag: uuid.UUID, data: bytes, *key: str) -> None:
    source = tool.workdir / "aux-entry"
    source.write_bytes(data)
    tool.run(image, "aux-fs-metadata", "edit", *key, "add-entry", "-i", str(source), str(tag))


@pytest.mark.parametrize("reserve", ["disabled", "1K", "16K"])
def test_formatted_image(cocoonfs_tool: Tool, tmp_path: Path, reserve: str) -> None:
    image = tmp_path / "aux.img"
    cocoonfs_tool.mkfs(
        image, "sha2", "aes", "128", "-s", "1M", "--aux-fs-metadata-extra-reserve-capacity", reserve
    )
    expected_reserve = None if reserve == "disabled" else int(reserve[:-1]) * 1024
    fresh = read_formatted_aux_metadata(image.read_bytes())
    if reserve == "disabled":
        assert fresh is None  # nothing to store: no extents at all (NIL head pointers)
    else:
        assert fresh == AuxFsMetadata((), expected_reserve)

    _add(cocoonfs_tool, image, B, os.urandom(6000), "-K", KEY.hex())
    if reserve != "disabled":
        _add(cocoonfs_tool, image, A, os.urandom(300))
        _add(cocoonfs_tool, image, B, os.urandom(200))

    read = read_formatted_aux_metadata(image.read_bytes())

    assert read is not None
    assert list(read.entries) == _tool_entries(cocoonfs_tool, image)
    assert read.extra_reserve_capacity == expected_reserve
    CocoonFsImage.open(image.read_bytes(), KEY)  # the edits left the image authentic


def test_formatted_image_with_torn_inactive_group(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image = tmp_path / "aux-torn.img"
    cocoonfs_tool.mkfs(image, "sha2", "aes", "128", "-s", "1M")
    _add(cocoonfs_tool, image, C, b"wrapped key")
    raw = bytearray(image.read_bytes())
    opened = CocoonFsImage.open(bytes(raw), KEY)
    group1 = decode_extent_ptr(opened.mutable_header.aux_fs_metadata_heads[1])
    assert group1 is not None
    at = group1[0] << opened.layout.allocation_block_size_log2
    raw[at : at + 128] = bytes(128)

    read = read_formatted_aux_metadata(bytes(raw))

    assert read is not None
    assert read.entries == ((C, b"wrapped key"),)


def test_mkfsinfo_volume(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image = tmp_path / "info.img"
    image.write_bytes(bytes(1 << 20))
    cocoonfs_tool.run(
        image, "write-mkfs-info-header", "-H", "sha3", "-C", "aes", "-t", "256",
        "-I", "0a0b", "-s", "1M", "--aux-fs-metadata-extra-reserve-capacity", "2K",
    )  # fmt: skip
    assert read_mkfsinfo_aux_metadata(image.read_bytes()) == AuxFsMetadata((), 2048)
    _add(cocoonfs_tool, image, B, os.urandom(3000))
    _add(cocoonfs_tool, image, B, os.urandom(10))
    _add(cocoonfs_tool, image, A, b"")

    read = read_mkfsinfo_aux_metadata(image.read_bytes())

    assert read is not None
    assert list(read.entries) == _tool_entries(cocoonfs_tool, image)
    damaged = bytearray(image.read_bytes())
    damaged[512 + 20] ^= 1  # in the blob, which follows the header's 512-byte IO Block
    with pytest.raises(FormatError):
        read_mkfsinfo_aux_metadata(bytes(damaged))
