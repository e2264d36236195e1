"""Attacks found by the independent review of the write path, each now refused.

1. Re-sealing: the host tampers a block nobody has read yet that shares an Authentication
   Tree Data Block with a block the next write changes; the write must not seal the tampered
   bytes into the new root.
2. Skipping: the host splices a free IO Block into the unauthenticated aux metadata list, so
   the next write's data there would count as "free" for the digests.
3. Crash during recovery: a keyless aux edit crashes, and its retry crashes too; the list
   must stay followable and the metadata old or new.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cvmstore.block.memory import MemoryDevice
from cvmstore.cocoonfs.auxmeta import AuxFsMetadata, read_formatted_aux_metadata, walk_aux_groups
from cvmstore.cocoonfs.auxwrite import encode_aux_extent, update_aux_offline
from cvmstore.cocoonfs.layout import decode_extent_ptr
from cvmstore.cocoonfs.mkfs import MkfsOptions
from cvmstore.cocoonfs.volume import CocoonFsVolume
from cvmstore.errors import FormatError, IntegrityError
from cvmstore.testing.crash import CrashDevice
from tests.cocoonfs.conftest import KEY, Tool

BLOCK = 512


def test_a_write_does_not_reseal_a_tampered_neighbour(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image = tmp_path / "neighbours.img"
    cocoonfs_tool.mkfs(image, "sha2", "aes", "128", "-s", "1M")
    for i in range(6):  # the tool packs small files into shared data blocks
        cocoonfs_tool.write_file(image, 16 + i, b"transfer 0000100 EUR to alice %d" % i)
    raw = bytearray(image.read_bytes())
    volume = CocoonFsVolume.open(MemoryDevice.from_image(bytes(raw), BLOCK), KEY)
    entry = volume.image.entry(20)
    assert entry is not None
    ptr = decode_extent_ptr(entry.extent_ptr)
    assert ptr is not None
    raw[ptr[0] << volume.image.layout.allocation_block_size_log2] ^= 0x01  # the IV: no key needed
    device = MemoryDevice.from_image(bytes(raw), BLOCK)
    tampered = CocoonFsVolume.open(device, KEY)  # lazy: inode 20 not read yet
    with pytest.raises(IntegrityError):
        tampered.write_file(19, b"new 19")
    assert device.image() == bytes(raw)  # nothing written


def test_a_free_block_spliced_into_the_aux_list_is_refused() -> None:
    device = MemoryDevice(2048, BLOCK)
    volume = CocoonFsVolume.mkfs(device, KEY, MkfsOptions(salt=b"\xc0\xc0"))
    opened = volume.image._opened
    layout = opened.layout
    shift = layout.allocation_block_size_log2
    io_ab = 1 << layout.io_block_allocation_blocks_log2
    free = next(
        k * io_ab
        for k in range(len(opened.alloc_map) // io_ab)
        if not any(opened.alloc_map[k * io_ab : (k + 1) * io_ab])
    )
    raw = bytearray(device.image())
    groups = walk_aux_groups(bytes(raw), layout, opened.mutable.aux_fs_metadata_heads)
    head = groups[0].extents[0]
    following = groups[0].extents[1] if len(groups[0].extents) > 1 else groups[1].extents[0]
    part = groups[0].parts[0]
    assert part is not None
    spliced = encode_aux_extent(layout, head, ((free, io_ab), following), 1, part)
    raw[head[0] << shift : (head[0] << shift) + len(spliced)] = spliced
    raw[free << shift : (free << shift) + 128] = bytes(128)  # reads as a torn extent
    for verify_all in (False, True):
        with pytest.raises(FormatError, match="not allocated"):
            CocoonFsVolume.open(
                MemoryDevice.from_image(bytes(raw), BLOCK), KEY, verify_all=verify_all
            )


def _add(tag: uuid.UUID, data: bytes) -> Callable[[AuxFsMetadata], AuxFsMetadata]:
    def edit(current: AuxFsMetadata) -> AuxFsMetadata:
        return AuxFsMetadata((*current.entries, (tag, data)), current.extra_reserve_capacity)

    return edit


def test_a_keyless_edit_crashing_during_its_retry(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    """Multi-extent groups (16K reserve): every crash of an edit, then every crash of the
    retry from each of those states; the metadata is always one of the three versions."""
    base = tmp_path / "base.img"
    cocoonfs_tool.mkfs(
        base, "sha2", "aes", "128", "-s", "1M", "--aux-fs-metadata-extra-reserve-capacity", "16K"
    )
    cocoonfs_tool.write_file(base, 16, b"file")
    first, second = _add(uuid.UUID(int=1), b"a" * 200), _add(uuid.UUID(int=2), b"b" * 9000)
    original = read_formatted_aux_metadata(base.read_bytes())
    assert original is not None
    versions = [original, first(original)]
    crash = CrashDevice(MemoryDevice.from_image(base.read_bytes(), BLOCK))
    update_aux_offline(crash, first)
    states = retries = 0
    for point in crash.crash_points():
        for state in point.states(bound=2):
            image = state.image()
            meta = read_formatted_aux_metadata(image)
            assert meta in versions, state.describe()
            assert meta is not None
            states += 1
            retry = CrashDevice(MemoryDevice.from_image(image, BLOCK))
            update_aux_offline(retry, second)
            for again in retry.crash_points(every=2):
                for inner in again.states(bound=2):
                    after = inner.image()
                    # The retry leaves the state it started from, or its edit applied.
                    outcome = read_formatted_aux_metadata(after)
                    assert outcome in (meta, second(meta)), inner.describe()
                    retries += 1
            volume = CocoonFsVolume.open(MemoryDevice.from_image(image, BLOCK), KEY)
            assert volume.read_file(16) == b"file"
    print(f"{states} crash states of an edit, {retries} crash states of its retries")
    assert retries > states > 0
