"""A cvmstore transaction interrupted at every crash point recovers, in cvmstore and in the
real `cocoonfs` tool, to the same content: all of the old state or all of the new one.

The transaction is recorded on a `CrashDevice`; every state a crash could leave (bounded per
point, torn sectors included) is opened by both. cvmstore replays a pending journal itself;
the tool gets its own copy of the same state and replays it its own way.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cvmstore.block.memory import MemoryDevice
from cvmstore.cocoonfs.volume import CocoonFsVolume
from cvmstore.errors import WrongKeyError
from cvmstore.testing.crash import CrashDevice
from tests.cocoonfs.conftest import KEY, Tool

BLOCK = 512
#: Subset states tried per crash point (torn states come on top, all of them).
BOUND = 16

Files = dict[int, bytes]


def _tool_files(tool: Tool, image: Path) -> Files:
    return {inode: tool.read_file(image, inode) for inode, _ in tool.list_files(image)}


def _ours(image: bytes, block: int = BLOCK) -> tuple[Files, bytes]:
    device = MemoryDevice.from_image(image, block)
    volume = CocoonFsVolume.open(device, KEY)
    files = {e.inode: volume.read_file(e.inode) for e in volume.list_files()}
    return files, device.image()


@pytest.mark.parametrize(
    ("family", "cipher", "strength", "geometry", "block"),
    [
        ("sha2", "aes", "128", (), 512),
        # 4 KiB device blocks: writes tear at every 512-byte sector.
        ("sha2", "sm4", "128", ("--io-block-size", "4K"), 4096),
        ("sha3", "camellia", "256", ("--io-block-size", "1K"), 1024),
    ],
)
def test_every_crash_point_recovers_to_old_or_new_in_both_tools(
    cocoonfs_tool: Tool,
    tmp_path: Path,
    family: str,
    cipher: str,
    strength: str,
    geometry: tuple[str, ...],
    block: int,
) -> None:
    base = tmp_path / "base.img"
    cocoonfs_tool.mkfs(base, family, cipher, strength, "-s", "256K", *geometry)
    cocoonfs_tool.write_file(base, 1 << 32, b"old NVChip" * 50, 1)
    cocoonfs_tool.write_file(base, 40, b"to be removed")
    old = _tool_files(cocoonfs_tool, base)

    crash = CrashDevice(MemoryDevice.from_image(base.read_bytes(), block))
    volume = CocoonFsVolume.open(crash, KEY)
    changes = {
        1 << 32: (os.urandom(9000), 1),  # through an extents list
        (1 << 32) | 1: (b"", 0),
        40: None,
        77: (b"x" * 300, 7),
    }
    volume.commit(changes)
    new = {e.inode: volume.read_file(e.inode) for e in volume.list_files()}
    assert new != old

    states = outcomes_old = outcomes_new = replayed = 0
    copy = tmp_path / "state.img"
    for point in crash.crash_points():
        for state in point.states(bound=BOUND):
            states += 1
            image = state.image()
            ours, after = _ours(image, block)
            assert ours in (old, new), state.describe()
            copy.write_bytes(image)
            theirs = _tool_files(cocoonfs_tool, copy)
            assert theirs == ours, state.describe()
            if ours == new:
                outcomes_new += 1
            else:
                outcomes_old += 1
            if after != image:
                replayed += 1
                # What our replay left behind is a finished image the tool reads as is.
                copy.write_bytes(after)
                assert _tool_files(cocoonfs_tool, copy) == ours, state.describe()
    # Figures for the report: every state ended old or new, and replay did happen.
    print(f"{states} crash states: {outcomes_old} old, {outcomes_new} new, {replayed} replayed")
    assert outcomes_old
    assert outcomes_new
    assert replayed


def _pending_journal_image(tool: Tool, tmp_path: Path) -> tuple[bytes, Files, Files]:
    """An image stopped right after its journal head was written (before applying)."""
    base = tmp_path / "j.img"
    tool.mkfs(base, "sha2", "aes", "128", "-s", "256K")
    tool.write_file(base, 50, b"before")
    old = _tool_files(tool, base)
    crash = CrashDevice(MemoryDevice.from_image(base.read_bytes(), BLOCK))
    volume = CocoonFsVolume.open(crash, KEY)
    volume.write_file(50, b"after", 2)
    new = {50: b"after"}
    # The first flush after the head's write: the journal is committed, nothing applied.
    for point in crash.crash_points():
        if point.after != "flush":
            continue
        image = next(iter(point.states(bound=1))).image()
        if _journal_pending(image):
            return image, old, new
    raise AssertionError("no crash point with a pending journal")


def _journal_pending(image: bytes) -> bool:
    return b"CCFSJRNL" in image[: 64 * 1024] and _ours_safe(image)


def _ours_safe(image: bytes) -> bool:
    _, after = _ours(image)
    return after != image


def test_pending_journal_replays_in_both_and_twice_is_harmless(
    cocoonfs_tool: Tool, tmp_path: Path
) -> None:
    image, _, new = _pending_journal_image(cocoonfs_tool, tmp_path)
    ours, after = _ours(image)
    assert ours == new
    # Replaying an already replayed image changes nothing more.
    again, after_again = _ours(after)
    assert again == new
    assert after_again == after
    copy = tmp_path / "pending.img"
    copy.write_bytes(image)
    assert _tool_files(cocoonfs_tool, copy) == new


def test_forged_journal_is_refused_and_nothing_written(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image, _, _ = _pending_journal_image(cocoonfs_tool, tmp_path)
    # The whole journal under another key: its head HMAC fails first.
    with pytest.raises(WrongKeyError):
        CocoonFsVolume.open(MemoryDevice.from_image(image, BLOCK), bytes(16))
    device = MemoryDevice.from_image(image, BLOCK)
    with pytest.raises(WrongKeyError):
        CocoonFsVolume.open(device, bytes(16))
    assert device.image() == image


def test_torn_journal_head_means_not_committed(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    image, old, _ = _pending_journal_image(cocoonfs_tool, tmp_path)
    at = image.index(b"CCFSJRNL")
    torn = bytearray(image)
    torn[at + 200] ^= 0xFF  # a byte past the first 128 changed: the checksum fails
    ours, _ = _ours(bytes(torn))
    assert ours == old
    copy = tmp_path / "torn.img"
    copy.write_bytes(bytes(torn))
    assert _tool_files(cocoonfs_tool, copy) == old
    result = subprocess.run(
        [str(cocoonfs_tool.path), "-i", str(copy), "-f", "list-files", "-K", KEY.hex()],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0
