"""The hostile host's tools do exactly the damage they claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvmstore._types import BlockIndex
from cvmstore.block import FileDevice, MemoryDevice
from cvmstore.testing import (
    HostileDevice,
    clone_file,
    flip_bit,
    restore,
    snapshot,
    swap_blocks,
    truncate_file,
    zero_block,
)

BS = 4096


def test_flip_bit_changes_exactly_one_bit() -> None:
    dev = MemoryDevice(2)
    flip_bit(dev, 1, 8 * 100 + 5)
    data = dev.read(BlockIndex(1))
    assert data[100] == 1 << 5
    assert sum(bin(b).count("1") for b in data) == 1
    with pytest.raises(ValueError, match="outside"):
        flip_bit(dev, 1, BS * 8)


def test_zero_and_swap() -> None:
    dev = MemoryDevice(3)
    dev.write(BlockIndex(0), b"a" * BS + b"b" * BS + b"c" * BS)
    swap_blocks(dev, 0, 2)
    assert dev.read(BlockIndex(0), 3) == b"c" * BS + b"b" * BS + b"a" * BS
    zero_block(dev, 1)
    assert dev.read(BlockIndex(1)) == bytes(BS)


def test_snapshot_and_restore_roll_the_whole_device_back() -> None:
    dev = MemoryDevice(2)
    dev.write(BlockIndex(0), b"1" * BS)
    old = snapshot(dev)
    dev.write(BlockIndex(0), b"2" * 2 * BS)
    restore(dev, old)
    assert dev.image() == old
    with pytest.raises(ValueError, match="size"):
        restore(dev, old[:BS])


def test_hostile_device_replays_every_version() -> None:
    host = HostileDevice(MemoryDevice(4))
    for version in range(1, 4):
        host.write(BlockIndex(2), bytes([version]) * BS)
    assert host.written_blocks() == [2]
    assert [v[0] for v in host.versions(2)] == [0, 1, 2, 3]
    assert host.replay(2) == bytes([2]) * BS
    assert host.read(BlockIndex(2)) == bytes([2]) * BS
    host.replay(2, 0)
    assert host.read(BlockIndex(2)) == bytes(BS)
    with pytest.raises(ValueError, match="version"):
        host.replay(2, 9)
    assert host.versions(1) == [bytes(BS)]


def test_dropped_writes_are_acknowledged_but_lost() -> None:
    host = HostileDevice(MemoryDevice(2))
    host.drop_writes = True
    host.write(BlockIndex(0), b"x" * BS)
    host.flush()
    assert host.read(BlockIndex(0)) == bytes(BS)
    assert host.versions(0)[-1] == b"x" * BS


def test_file_surgery(tmp_path: Path) -> None:
    path = tmp_path / "a.img"
    with FileDevice.create(path, 4 * BS) as dev:
        dev.write(BlockIndex(0), b"q" * BS)
        dev.flush()
    copy = clone_file(path, tmp_path / "b.img")
    assert copy.read_bytes() == path.read_bytes()
    truncate_file(path, BS)
    assert path.stat().st_size == BS
