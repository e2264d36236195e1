"""SecureStore behaviour: errors at open, anchors and modes, rekey, space, nonces, scale."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from cvmstore._types import BlockIndex
from cvmstore.block import FileDevice, MemoryDevice
from cvmstore.errors import (
    DeviceFullError,
    ForkError,
    IntegrityError,
    NotAnImageError,
    RollbackError,
    StateError,
    UnsupportedVersionError,
    WrongKeyError,
)
from cvmstore.integrity import (
    AnchorPolicy,
    FileAnchor,
    MemoryAnchor,
    NoAnchor,
    StoreState,
    format_store,
    open_store,
)
from cvmstore.integrity.geometry import plan
from cvmstore.testing import CrashDevice, flip_bit

KEY = bytes(32)
OTHER = bytes([1]) * 32


def blk(value: int) -> bytes:
    return bytes([value % 256]) * 4096


def populated(blocks: int = 64) -> tuple[MemoryDevice, MemoryAnchor]:
    dev, anchor = MemoryDevice(blocks), MemoryAnchor()
    store = format_store(dev, KEY, anchor)
    for i in range(10):
        store.write(i, blk(i + 1))
    store.commit()
    store.close()
    return dev, anchor


def test_roundtrip_and_zero_reads() -> None:
    dev, anchor = populated()
    store = open_store(dev, KEY, anchor)
    assert [store.read(i) for i in range(10)] == [blk(i + 1) for i in range(10)]
    assert store.read(store.block_count - 1) == bytes(4096)
    assert store.generation == 1


def test_uncommitted_writes_are_visible_then_lost_on_abort() -> None:
    dev, anchor = populated()
    store = open_store(dev, KEY, anchor)
    store.write(3, blk(99))
    assert store.read(3) == blk(99)
    store.abort()
    assert store.read(3) == blk(4)
    store.write(3, blk(98))
    store.close()  # close does not commit
    assert open_store(dev, KEY, anchor).read(3) == blk(4)


def test_not_an_image_wrong_key_and_damaged_are_distinct() -> None:
    with pytest.raises(NotAnImageError):
        open_store(MemoryDevice(64), KEY, MemoryAnchor())
    dev, anchor = populated()
    with pytest.raises(WrongKeyError):
        open_store(dev, OTHER, anchor)
    for slot in (0, 1):
        flip_bit(dev, slot, 8 * 200)  # inside the MACed body, past the key check value
    with pytest.raises(IntegrityError, match="superblock") as info:
        open_store(dev, KEY, anchor)
    assert not isinstance(info.value, (WrongKeyError, RollbackError, ForkError))


def test_unsupported_version() -> None:
    dev, anchor = populated()
    for slot in (0, 1):
        data = bytearray(dev.read(slot))  # type: ignore[arg-type]
        data[8] = 2  # format version 2
        dev.write(slot, bytes(data))  # type: ignore[arg-type]
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        open_store(dev, KEY, anchor)


def test_wrong_key_changes_nothing() -> None:
    dev, anchor = populated()
    before = dev.image()
    with pytest.raises(WrongKeyError):
        open_store(dev, OTHER, anchor)
    assert dev.image() == before


def test_truncated_image_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "s.img"
    anchor = FileAnchor(tmp_path / "anchor.json")
    with FileDevice.create(path, 1 << 20) as dev:
        store = format_store(dev, KEY, anchor)
        store.write(0, blk(1))
        store.commit()
        store.close()
    os.truncate(path, 512 << 10)
    with FileDevice.open(path) as dev, pytest.raises(IntegrityError, match="truncated"):
        open_store(dev, KEY, anchor)


def test_integrity_failure_makes_the_store_fail() -> None:
    dev, anchor = populated()
    store = open_store(dev, KEY, anchor)
    physical = store._nodes.leaf(5).physical
    flip_bit(dev, physical, 77)
    with pytest.raises(IntegrityError, match=f"logical block 5 at block {physical}"):
        store.read(5)
    assert store.state is StoreState.FAILED
    with pytest.raises(StateError):
        store.read(0)


def test_file_anchor_rollback_and_fork(tmp_path: Path) -> None:
    anchor = FileAnchor(tmp_path / "a.json")
    dev = MemoryDevice(64)
    store = format_store(dev, KEY, anchor)
    store.write(0, blk(1))
    store.commit()
    old = dev.image()
    store.write(0, blk(2))
    store.commit()
    store.close()
    with pytest.raises(RollbackError, match="generation 1 but the anchor holds generation 2"):
        open_store(MemoryDevice.from_image(old), KEY, anchor)
    a = open_store(MemoryDevice.from_image(dev.image()), KEY, anchor)
    b = open_store(MemoryDevice.from_image(dev.image()), KEY, anchor)
    a.write(1, blk(3))
    a.commit()
    b.write(1, blk(4))
    with pytest.raises(ForkError):
        b.commit()
    assert b.state is StoreState.FAILED


def test_file_anchor_problems(tmp_path: Path) -> None:
    from cvmstore.errors import AnchorError

    path = tmp_path / "a.json"
    path.write_text("{not json")
    with pytest.raises(AnchorError, match="malformed"):
        FileAnchor(path).read(b"x" * 16)
    anchor = FileAnchor(path := tmp_path / "b.json")
    format_store(MemoryDevice(32), KEY, anchor).close()
    with pytest.raises(AnchorError, match="belongs to volume"):
        anchor.read(b"\0" * 16)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_crash_between_commit_and_anchor_is_finished() -> None:
    dev, anchor = populated()
    store = open_store(dev, KEY, anchor)
    frozen = MemoryAnchor()
    frozen._states = dict(anchor._states)
    store.write(0, blk(50))
    store.commit()  # image and anchor at generation 2
    reopened = open_store(dev, KEY, frozen)  # the anchor missed the advance: finish it
    assert reopened.generation == 2
    assert frozen.read(store.volume_id).generation == 2  # type: ignore[union-attr]


def test_batched_mode_reports_its_window_and_anchors_on_close() -> None:
    dev, anchor = MemoryDevice(64), MemoryAnchor()
    ticks = iter(range(1000))
    store = format_store(
        dev, KEY, anchor, policy=AnchorPolicy(every_commits=4), clock=lambda: float(next(ticks))
    )
    for i in range(6):
        store.write(i, blk(i))
        store.commit()
    assert anchor.read(store.volume_id).generation == 4  # type: ignore[union-attr]
    commits, seconds = store.rollback_window()
    assert commits == 2
    assert seconds > 0
    assert store.info().rollback_window_commits == 2
    store.close()
    assert anchor.read(store.volume_id).generation == 6  # type: ignore[union-attr]


def test_batched_open_accepts_unanchored_tail_but_not_a_clone() -> None:
    dev, anchor = MemoryDevice(64), MemoryAnchor()
    store = format_store(dev, KEY, anchor, policy=AnchorPolicy(every_commits=10))
    for i in range(3):
        store.write(i, blk(i))
        store.commit()
    image = dev.image()  # three commits ahead of the anchor (generation 0)
    first = open_store(MemoryDevice.from_image(image), KEY, anchor, policy=AnchorPolicy(10))
    assert first.generation == 3
    assert anchor.read(first.volume_id).generation == 3  # type: ignore[union-attr]
    clone = open_store(MemoryDevice.from_image(image), KEY, anchor, policy=AnchorPolicy(10))
    for copy, value in ((first, 1), (clone, 2)):
        copy.write(9, blk(value))
        copy.commit()  # generation 4 on both copies, not anchored yet (batched)
    first.anchor_now()
    with pytest.raises(ForkError):
        clone.anchor_now()
    with pytest.raises(RollbackError):  # an untouched copy is now simply older
        open_store(MemoryDevice.from_image(image), KEY, anchor)


def test_no_anchor_warns_at_every_open(caplog: pytest.LogCaptureFixture) -> None:
    dev = MemoryDevice(32)
    format_store(dev, KEY, NoAnchor()).close()
    with caplog.at_level(logging.WARNING, logger="cvmstore.integrity"):
        open_store(dev, KEY, NoAnchor())
        open_store(dev, KEY, NoAnchor())
    assert sum("cannot be detected" in r.message for r in caplog.records) == 2


def test_rekey_moves_to_the_new_secret() -> None:
    dev, anchor = populated()
    store = open_store(dev, KEY, anchor)
    store.write(11, blk(11))
    store.rekey(OTHER)
    store.close()
    with pytest.raises(WrongKeyError):
        open_store(dev, KEY, anchor)
    reopened = open_store(dev, OTHER, anchor)
    assert reopened.read(11) == blk(11)
    assert reopened.read(0) == blk(1)


def test_rekey_is_crash_safe() -> None:
    dev, anchor = populated()
    crash = CrashDevice(dev)
    store = open_store(crash, KEY, anchor)
    store.rekey(OTHER)
    outcomes = set()
    for point in crash.crash_points():
        for state in point.states():
            image = state.device()
            try:
                s = open_store(image, OTHER, NoAnchor())
            except WrongKeyError:
                s = open_store(image, KEY, NoAnchor())
                outcomes.add("old key")
            else:
                outcomes.add("new key")
            assert s.read(0) == blk(1)
    assert outcomes == {"old key", "new key"}


def test_full_device_refuses_the_write_and_keeps_the_store() -> None:
    dev, anchor = MemoryDevice(16), MemoryAnchor()
    store = format_store(dev, KEY, anchor)
    n = store.block_count
    for i in range(n):
        store.write(i, blk(i))
    store.commit()
    written = store.geometry.spare
    for i in range(written):
        store.write(i, blk(100 + i))
    with pytest.raises(DeviceFullError, match="commit more often"):
        store.write(written, blk(100 + written))
    assert written == store.geometry.spare
    assert store.read(written) == blk(written)  # the refused write was not applied
    store.commit()
    assert open_store(dev, KEY, anchor).read(0) == blk(100)


def test_nonces_never_repeat_across_crash_and_retry() -> None:
    """Record every (generation, nonce) used; crash and retry the same generation many times."""
    dev, anchor = populated()
    used: list[tuple[int, bytes]] = []
    image = dev.image()
    for attempt in range(30):
        device = MemoryDevice.from_image(image)
        store = open_store(device, KEY, anchor)
        store.nonces_used = used
        for i in range(20):
            store.write(i % 12, blk(attempt + i))  # generation 2 every time: never committed
    assert len(used) == 30 * 20
    assert len(set(used)) == len(used)
    assert {generation for generation, _ in used} == {2}


def test_open_reads_only_the_superblocks_at_64_gib(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    anchor = FileAnchor(tmp_path / "anchor.json")
    with FileDevice.create(path, 64 << 30) as dev:
        store = format_store(dev, KEY, anchor)
        store.write(store.block_count - 1, blk(7))
        store.write(0, blk(8))
        store.commit()
        store.close()
    reads: list[int] = []
    with FileDevice.open(path) as dev:
        original = dev.read

        def counting(first, count=1):
            reads.append(first)
            return original(first, count)

        dev.read = counting  # type: ignore[method-assign]
        store = open_store(dev, KEY, anchor)
        assert reads == [0, 1]
        assert store.read(store.block_count - 1) == blk(7)
        assert len(reads) == 2 + store.geometry.depth + 1  # one path, then the block
    geo = plan((64 << 30) // 4096, 4096)
    assert geo.metadata_blocks / geo.physical < 0.03
    assert path.stat().st_blocks * 512 < 4 << 20  # still sparse


def test_cache_is_bounded() -> None:
    dev, anchor = MemoryDevice(4096), MemoryAnchor()
    store = format_store(dev, KEY, anchor, cache_bytes=4 * 4096)
    for i in range(0, store.block_count, 97):
        store.write(i, blk(i))
    store.commit()
    for i in range(0, store.block_count, 97):
        store.read(i)
    assert len(store._nodes._clean) <= 4


def test_bulk_reads_and_writes_match_single_block_ones() -> None:
    dev, anchor = MemoryDevice(256), MemoryAnchor()
    store = format_store(dev, KEY, anchor)
    payload = b"".join(blk(i) for i in range(40))
    store.write_blocks(10, payload)
    store.write(20, blk(200))  # rewritten in place within the commit
    store.discard(30)
    expected = [blk(i) for i in range(40)]
    expected[10] = blk(200)
    expected[20] = bytes(4096)
    assert store.read_blocks(10, 40) == b"".join(expected)
    store.commit()
    reopened = open_store(dev, KEY, anchor)
    assert reopened.read_blocks(0, 60) == bytes(40960) + b"".join(expected) + bytes(40960)
    assert [reopened.read(i) for i in range(10, 50)] == expected
    with pytest.raises(ValueError, match="outside"):
        reopened.read_blocks(reopened.block_count - 1, 2)
    with pytest.raises(ValueError, match="whole blocks"):
        reopened.write_blocks(0, b"x")


def test_bulk_write_that_does_not_fit_changes_nothing() -> None:
    dev, anchor = MemoryDevice(16), MemoryAnchor()
    store = format_store(dev, KEY, anchor)
    for i in range(store.block_count):
        store.write(i, blk(i))
    store.commit()
    too_many = store.geometry.spare + 1
    with pytest.raises(DeviceFullError):
        store.write_blocks(0, b"".join(blk(50 + i) for i in range(too_many)))
    assert not store.dirty
    assert [store.read(i) for i in range(too_many)] == [blk(i) for i in range(too_many)]


def test_reads_and_writes_go_to_the_device_in_physical_runs() -> None:
    class Counting(MemoryDevice):
        def __init__(self, blocks: int) -> None:
            super().__init__(blocks)
            self.reads: list[tuple[int, int]] = []
            self.writes: list[tuple[int, int]] = []

        def read(self, first: BlockIndex, count: int = 1) -> bytes:
            self.reads.append((first, count))
            return super().read(first, count)

        def write(self, first: BlockIndex, data: bytes) -> None:
            self.writes.append((first, len(data) // self.block_size))
            super().write(first, data)

    device = Counting(256)
    store = format_store(device, KEY, MemoryAnchor())
    device.writes.clear()
    store.write_blocks(0, b"".join(blk(i) for i in range(8)))
    assert len(device.writes) == 1  # eight new copies, consecutive: one call
    assert device.writes[0][1] == 8
    store.commit()
    store.discard(3)
    store.discard(4)  # an empty gap in the middle
    store.write(6, blk(60))  # a new copy elsewhere: the physical run breaks at 6 and at 7
    store.commit()
    device.reads.clear()
    expected = [blk(0), blk(1), blk(2), bytes(4096), bytes(4096), blk(5), blk(60), blk(7)]
    assert store.read_blocks(0, 8) == b"".join(expected)
    data_reads = [call for call in device.reads if call[0] >= store.geometry.data_start]
    assert [count for _, count in data_reads] == [3, 1, 1, 1]


def test_format_against_another_volumes_anchor_writes_nothing(tmp_path: Path) -> None:
    from cvmstore.errors import AnchorError

    anchor = FileAnchor(tmp_path / "anchor.json")
    format_store(MemoryDevice(32), KEY, anchor).close()
    second = MemoryDevice(32)
    with pytest.raises(AnchorError, match="belongs to volume"):
        format_store(second, KEY, anchor)
    assert second.image() == bytes(32 * 4096)


def test_io_failure_during_commit_fails_the_store_and_loses_nothing_committed() -> None:
    from cvmstore.errors import DeviceError
    from cvmstore.testing._wrapper import PassThroughDevice

    class FlakyFlush(PassThroughDevice):
        fail = False

        def flush(self) -> None:
            if self.fail:
                raise DeviceError("flush failed (injected)")
            super().flush()

    dev, anchor = populated()
    flaky = FlakyFlush(dev)
    store = open_store(flaky, KEY, anchor)
    store.write(0, blk(77))
    flaky.fail = True
    with pytest.raises(DeviceError, match="injected"):
        store.commit()
    assert store.state is StoreState.FAILED
    with pytest.raises(StateError):
        store.commit()  # a retry could overwrite committed nodes: refused
    reopened = open_store(dev, KEY, anchor)
    assert reopened.read(0) == blk(1)
    assert reopened.check().ok


def test_a_superblock_read_error_at_open_is_raised_not_skipped() -> None:
    """Falling back to the older slot would let the next commit reuse the newer one's copies."""
    from cvmstore.errors import DeviceError
    from cvmstore.testing._wrapper import PassThroughDevice

    class OneBadRead(PassThroughDevice):
        bad = -1

        def read(self, first, count=1):
            if first == self.bad:
                raise DeviceError("read failed (injected)")
            return super().read(first, count)

    dev, anchor = populated()
    for bad in (0, 1):
        flaky = OneBadRead(dev)
        flaky.bad = bad
        with pytest.raises(DeviceError, match="injected"):
            open_store(flaky, KEY, anchor)


def test_a_damaged_other_slot_is_replaced_before_the_first_change() -> None:
    dev, anchor = populated()
    store = open_store(dev, KEY, anchor)
    newest, other = store._slot_index, 1 - store._slot_index
    store.close()
    flip_bit(dev, other, 8 * 300)  # the older slot no longer authenticates
    damaged = dev.read(BlockIndex(other))
    reopened = open_store(dev, KEY, anchor)
    assert dev.read(BlockIndex(other)) == damaged  # opening and reading change nothing
    reopened.write(5, blk(55))
    assert dev.read(BlockIndex(other)) == dev.read(BlockIndex(newest))  # repaired first
    reopened.commit()
    assert open_store(dev, KEY, anchor).read(5) == blk(55)


def test_rekey_in_batched_mode_anchors_at_once() -> None:
    dev, anchor = MemoryDevice(64), MemoryAnchor()
    store = format_store(dev, KEY, anchor, policy=AnchorPolicy(every_commits=100))
    store.write(0, blk(1))
    store.commit()
    store.rekey(OTHER)
    assert anchor.read(store.volume_id).generation == store.generation  # type: ignore[union-attr]
