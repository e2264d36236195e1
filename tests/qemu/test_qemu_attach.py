"""The images cvmstore makes are the images QEMU attaches, checked against the real QEMU.

A QEMU started with `-S` (no guest code runs) and `-qmp stdio` is asked `query-block`: the
drive must be there with the image's size, as pflash unit 1 beside OVMF code (the SVSM state
slot) and as a virtio-blk disk. And an image that QEMU would refuse is refused by cvmstore
first, which QEMU itself confirms on a file of the same size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cvmstore._types import BlockIndex
from cvmstore.block import FileDevice, ImageProfile
from cvmstore.block.profile import Q35_FLASH_LIMIT
from cvmstore.errors import DeviceError
from tests.conftest import require_or_skip

pytestmark = pytest.mark.qemu

QEMU = shutil.which("qemu-system-x86_64")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")


@pytest.fixture
def ovmf_code() -> Path:
    require_or_skip(QEMU is not None, "qemu-system-x86_64 (Debian package qemu-system-x86)")
    require_or_skip(OVMF_CODE.is_file(), f"OVMF code {OVMF_CODE} (Debian package ovmf)")
    return OVMF_CODE


def qmp_query_block(*drives: str) -> tuple[int, list[dict[str, Any]], str]:
    """Start QEMU paused with `drives`, ask query-block, quit; return (status, blocks, stderr)."""
    assert QEMU is not None
    argv = [QEMU, "-machine", "q35", "-nodefaults", "-display", "none", "-S", "-qmp", "stdio"]
    for drive in drives:
        argv += ["-drive", drive]
    commands = "".join(
        json.dumps({"execute": name}) + "\n" for name in ("qmp_capabilities", "query-block", "quit")
    )
    proc = subprocess.run(argv, input=commands, capture_output=True, text=True, timeout=60)
    blocks: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        reply = json.loads(line)
        if isinstance(reply.get("return"), list):
            blocks = reply["return"]
    return proc.returncode, blocks, proc.stderr


def test_pflash_state_image_attaches_beside_ovmf(ovmf_code: Path, tmp_path: Path) -> None:
    image = tmp_path / "state.img"
    largest = Q35_FLASH_LIMIT - ovmf_code.stat().st_size  # the biggest image that fits
    with FileDevice.create(
        image, largest, profile=ImageProfile.PFLASH, firmware_code=ovmf_code
    ) as dev:
        dev.write(BlockIndex(0), b"cvmstore".ljust(4096, b"\0"))
        dev.flush()
    status, blocks, err = qmp_query_block(
        f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf_code}",
        f"if=pflash,format=raw,unit=1,file={image}",
    )
    assert status == 0, err
    by_name = {b["device"]: b for b in blocks}
    assert by_name["pflash1"]["inserted"]["image"]["virtual-size"] == largest
    assert by_name["pflash1"]["inserted"]["file"] == str(image)
    assert by_name["pflash1"]["inserted"]["ro"] is False


def test_virtio_image_attaches(ovmf_code: Path, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    FileDevice.create(image, 1 << 30, profile=ImageProfile.VIRTIO).close()
    status, blocks, err = qmp_query_block(f"if=virtio,format=raw,file={image}")
    assert status == 0, err
    (disk,) = blocks
    assert disk["device"] == "virtio0"
    assert disk["inserted"]["image"]["virtual-size"] == 1 << 30


@pytest.mark.parametrize("excess", [4096, 1 << 20])
def test_oversized_pflash_refused_by_us_and_by_qemu(
    ovmf_code: Path, tmp_path: Path, excess: int
) -> None:
    size = Q35_FLASH_LIMIT - ovmf_code.stat().st_size + excess
    image = tmp_path / "big.img"
    with pytest.raises(DeviceError, match="does not fit"):
        FileDevice.create(image, size, profile=ImageProfile.PFLASH, firmware_code=ovmf_code)
    assert not image.exists()
    # QEMU agrees: a file of that size is refused.
    with open(image, "wb") as f:
        f.truncate(size)
    status, _, err = qmp_query_block(
        f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf_code}",
        f"if=pflash,format=raw,unit=1,file={image}",
    )
    assert status != 0
    assert "exceeds" in err


def test_misaligned_pflash_refused_by_us_and_by_qemu(ovmf_code: Path, tmp_path: Path) -> None:
    image = tmp_path / "odd.img"
    with pytest.raises(DeviceError, match="multiple of 4 KiB"):
        FileDevice.create(image, 6144, block_size=512, profile=ImageProfile.PFLASH)
    image.write_bytes(os.urandom(6144))
    status, _, err = qmp_query_block(
        f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf_code}",
        f"if=pflash,format=raw,unit=1,file={image}",
    )
    assert status != 0
    assert "multiple of 0x1000" in err
