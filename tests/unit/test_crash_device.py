"""The crash device yields exactly the documented crash states, and each is right."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvmstore._types import BlockIndex
from cvmstore.block import MemoryDevice
from cvmstore.testing import CrashDevice, exhaustive_state_count

BS = 4096
SECTORS = BS // 512


def fill(value: int) -> bytes:
    return bytes([value]) * BS


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8])
def test_n_unflushed_writes_give_the_documented_count(n: int) -> None:
    crash = CrashDevice(MemoryDevice(16))
    for i in range(n):
        crash.write(BlockIndex(i), fill(i + 1))
    last = list(crash.crash_points())[-1]
    assert len(last.pending) == n
    states = list(last.states())
    assert len(states) == exhaustive_state_count(n, SECTORS) == 2**n + n * (SECTORS - 1)
    assert len(states) == last.state_count()
    assert len({s.image() for s in states}) == len(states)  # all distinct images


def test_subset_states_are_exactly_the_subsets() -> None:
    crash = CrashDevice(MemoryDevice(4))
    for i in range(3):
        crash.write(BlockIndex(i), fill(i + 1))
    last = list(crash.crash_points())[-1]
    images = {s.image() for s in last.states() if s.torn is None}
    expected = set()
    for mask in itertools.product([False, True], repeat=3):
        img = bytearray(4 * BS)
        for i, keep in enumerate(mask):
            if keep:
                img[i * BS : (i + 1) * BS] = fill(i + 1)
        expected.add(bytes(img))
    assert images == expected


def test_torn_write_keeps_a_sector_prefix() -> None:
    crash = CrashDevice(MemoryDevice(2, data=fill(0xAA) * 2))
    crash.write(BlockIndex(1), fill(0x55))
    torn = [s for s in list(crash.crash_points())[-1].states() if s.torn is not None]
    assert [s.torn for s in torn] == [(0, t) for t in range(1, SECTORS)]
    for state in torn:
        block = state.device().read(BlockIndex(1))
        cut = state.torn[1] * 512  # type: ignore[index]
        assert block == fill(0x55)[:cut] + fill(0xAA)[cut:]
        assert state.device().read(BlockIndex(0)) == fill(0xAA)


def test_flush_makes_writes_durable_and_points_cover_every_operation() -> None:
    crash = CrashDevice(MemoryDevice(4))
    crash.write(BlockIndex(0), fill(1))
    crash.flush()
    crash.mark("commit 1")
    crash.write(BlockIndex(1), fill(2))
    crash.write(BlockIndex(0), fill(3))
    crash.flush()
    crash.mark("commit 2")
    points = list(crash.crash_points())
    assert [(p.index, p.after) for p in points] == [
        (0, "start"),
        (1, "write"),
        (2, "flush"),
        (3, "write"),
        (4, "write"),
        (5, "flush"),
    ]
    assert [p.marks for p in points] == [(), (), (), ("commit 1",), ("commit 1",), ("commit 1",)]
    assert points[2].pending == ()
    assert points[2].durable[:BS] == fill(1)
    assert len(points[4].pending) == 2
    # both units rewrite blocks: keeping the second but not the first is a legal crash state
    only_second = [s for s in points[4].states() if s.kept == frozenset({1})]
    dev = only_second[0].device()
    assert dev.read(BlockIndex(0)) == fill(3)
    assert dev.read(BlockIndex(1)) == bytes(BS)
    assert crash.final_marks() == ["commit 1", "commit 2"]


def test_multi_block_write_splits_into_units() -> None:
    crash = CrashDevice(MemoryDevice(8))
    crash.write(BlockIndex(2), fill(7) * 3)
    last = list(crash.crash_points())[-1]
    assert [u.block for u in last.pending] == [2, 3, 4]


def test_bounded_enumeration_is_reproducible_and_covers_the_edges() -> None:
    crash = CrashDevice(MemoryDevice(16))
    for i in range(12):
        crash.write(BlockIndex(i), fill(i + 1))
    last = list(crash.crash_points())[-1]
    first = [s.kept for s in last.states(bound=50) if s.torn is None]
    again = [s.kept for s in last.states(bound=50) if s.torn is None]
    assert first == again
    assert len(first) == len(set(first)) == 50
    assert last.state_count(bound=50) == 50 + 12 * (SECTORS - 1)
    everything = frozenset(range(12))
    assert first[:2] == [frozenset(), everything]
    for k in range(1, 12):
        assert frozenset(range(k)) in first  # every in-order prefix
    for drop in range(12):
        assert everything - {drop} in first


def test_every_thins_points_but_keeps_the_last() -> None:
    crash = CrashDevice(MemoryDevice(4))
    for i in range(10):
        crash.write(BlockIndex(i % 4), fill(i))
    assert [p.index for p in crash.crash_points(every=4)] == [0, 4, 8, 10]
    with pytest.raises(ValueError, match="every"):
        list(crash.crash_points(every=0))


@given(
    ops=st.lists(
        st.one_of(st.tuples(st.just("w"), st.integers(0, 3), st.integers(1, 255)), st.just(("f",))),
        max_size=12,
    )
)
def test_all_kept_state_at_each_point_is_the_live_image(ops: list[tuple[object, ...]]) -> None:
    """Keeping every pending write must reproduce what the device held at that moment."""
    inner = MemoryDevice(4)
    crash = CrashDevice(inner)
    live = [inner.image()]
    for op in ops:
        if op[0] == "w":
            crash.write(BlockIndex(op[1]), fill(op[2]))  # type: ignore[arg-type]
        else:
            crash.flush()
        live.append(inner.image())
    points = list(crash.crash_points())
    assert len(points) == len(ops) + 1
    for point, image in zip(points, live, strict=True):
        everything = frozenset(range(len(point.pending)))
        kept = next(s for s in point.states() if s.torn is None and s.kept == everything)
        assert kept.image() == image
