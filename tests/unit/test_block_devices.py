"""Every BlockDevice implementation and wrapper passes the one conformance suite."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cvmstore._types import BlockIndex
from cvmstore.block import FileDevice, ImageProfile, MemoryDevice
from cvmstore.errors import DeviceError, StateError
from cvmstore.testing import CrashDevice, HostileDevice, check_block_device
from cvmstore.testing.conformance import DeviceFactory


def _file(tmp: Path, count: int, bs: int) -> FileDevice:
    return FileDevice.create(tmp / os.urandom(4).hex(), count * bs, block_size=bs)


FACTORIES: dict[str, Callable[[Path], DeviceFactory]] = {
    "memory": lambda tmp: lambda count, bs: MemoryDevice(count, bs),
    "file": lambda tmp: lambda count, bs: _file(tmp, count, bs),
    "crash(memory)": lambda tmp: lambda count, bs: CrashDevice(MemoryDevice(count, bs)),
    "hostile(file)": lambda tmp: lambda count, bs: HostileDevice(_file(tmp, count, bs)),
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@pytest.mark.parametrize("block_size", [512, 4096])
def test_conformance(kind: str, block_size: int, tmp_path: Path) -> None:
    clauses = check_block_device(FACTORIES[kind](tmp_path), block_size=block_size)
    assert clauses == 23  # every clause of the contract ran


def test_conformance_catches_a_broken_device() -> None:
    class ForgetfulDevice(MemoryDevice):
        def write(self, first: BlockIndex, data: bytes) -> None:
            super().write(first, data[: self.block_size])  # drops all but the first block

    with pytest.raises(AssertionError, match="multi-block write"):
        check_block_device(lambda count, bs: ForgetfulDevice(count, bs))


def test_file_device_is_sparse_and_persistent(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    with FileDevice.create(path, 64 << 30) as dev:
        assert dev.block_count == (64 << 30) // 4096
        dev.write(BlockIndex(dev.block_count - 1), b"z" * 4096)
        dev.flush()
    assert path.stat().st_size == 64 << 30
    assert path.stat().st_blocks * 512 < 1 << 20  # sparse: a 64 GiB image costs almost nothing
    with FileDevice.open(path) as dev:
        assert dev.read(BlockIndex(dev.block_count - 1)) == b"z" * 4096
        assert dev.read(BlockIndex(12345)) == bytes(4096)


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "a.img"
    FileDevice.create(path, 8192).close()
    with pytest.raises(DeviceError, match="already exists"):
        FileDevice.create(path, 8192)
    FileDevice.create(path, 4096, overwrite=True).close()
    assert path.stat().st_size == 4096


@pytest.mark.parametrize(
    ("size", "message"),
    [(0, "positive multiple"), (4095, "positive multiple"), (6144, "positive multiple")],
)
def test_bad_sizes_are_refused_and_leave_nothing(tmp_path: Path, size: int, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        FileDevice.create(tmp_path / "x.img", size)
    assert not (tmp_path / "x.img").exists()


def test_pflash_rules(tmp_path: Path) -> None:
    code = tmp_path / "code.fd"
    code.write_bytes(bytes(3_653_632))  # the size of Debian's OVMF_CODE_4M.fd
    room = (8 << 20) - 3_653_632
    FileDevice.create(
        tmp_path / "ok.img", room, profile=ImageProfile.PFLASH, firmware_code=code
    ).close()
    with pytest.raises(DeviceError, match=r"at most 4624 KiB"):
        FileDevice.create(
            tmp_path / "no.img", room + 4096, profile=ImageProfile.PFLASH, firmware_code=code
        )
    with pytest.raises(DeviceError, match="multiple of 4 KiB"):
        FileDevice.create(tmp_path / "odd.img", 6144, block_size=512, profile=ImageProfile.PFLASH)
    with pytest.raises(DeviceError, match="8 MiB"):
        FileDevice.create(tmp_path / "huge.img", (8 << 20) + 4096, profile=ImageProfile.PFLASH)
    # virtio has no such limit
    FileDevice.create(tmp_path / "v.img", 64 << 20, profile=ImageProfile.VIRTIO).close()


def test_open_checks_geometry(tmp_path: Path) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(DeviceError, match=r"odd\.img"):
        FileDevice.open(path)
    with pytest.raises(DeviceError, match="cannot open"):
        FileDevice.open(tmp_path / "missing.img")


def test_truncated_image_is_a_device_error(tmp_path: Path) -> None:
    path = tmp_path / "t.img"
    dev = FileDevice.create(path, 16 * 4096)
    os.truncate(path, 8 * 4096)
    with pytest.raises(DeviceError, match="truncated"):
        dev.read(BlockIndex(10))
    dev.close()


def test_os_errors_become_device_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = FileDevice.create(tmp_path / "e.img", 4 * 4096)

    def fail(*args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwrite", fail)
    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(DeviceError, match="Input/output error"):
        dev.write(BlockIndex(0), bytes(4096))
    with pytest.raises(DeviceError, match="flush"):
        dev.flush()
    dev.close()
    with pytest.raises(StateError):
        dev.flush()


def test_short_pwrite_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = FileDevice.create(tmp_path / "s.img", 4 * 4096)
    real = os.pwrite

    def short(fd: int, data: bytes, offset: int) -> int:
        return real(fd, bytes(data)[:1000], offset)

    monkeypatch.setattr(os, "pwrite", short)
    payload = os.urandom(2 * 4096)
    dev.write(BlockIndex(1), payload)
    monkeypatch.undo()
    assert dev.read(BlockIndex(1), 2) == payload
    dev.close()


def test_read_only_open(tmp_path: Path) -> None:
    path = tmp_path / "ro.img"
    FileDevice.create(path, 4096).close()
    with FileDevice.open(path, read_only=True) as dev, pytest.raises(DeviceError):
        dev.write(BlockIndex(0), bytes(4096))
