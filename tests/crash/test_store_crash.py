"""Crash at every write and every flush of a store workload; recovery is always exact.

The workload (`run_workload`) makes 200 block operations (writes, rewrites, discards) over 20
commits on a `CrashDevice`, marking what each commit acknowledged, and the anchor's every
advance. For every crash point, and every crash state there (every subset of the unflushed
writes up to a bound, plus every torn write), the image is reopened with the anchor as it
stood at that point. The store must open, hold exactly the last acknowledged commit or the
in-flight one, never return wrong data, and pass `check()`.

Bound: `CVMSTORE_CRASH_BOUND` subsets per point (default 24 in CI); `none` enumerates every
subset (the exhaustive run of docs/guarantees.md:
`CVMSTORE_CRASH_BOUND=none .venv/bin/pytest -s tests/crash/test_store_crash.py`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from cvmstore.block import MemoryDevice
from cvmstore.integrity import AnchorState, MemoryAnchor, format_store, open_store
from cvmstore.testing import CrashDevice, CrashPoint

KEY = bytes(range(32))
BS = 4096
OPERATIONS = 200
COMMITS = 20


@dataclass(frozen=True)
class Acked:
    generation: int
    model: dict[int, bytes]


@dataclass(frozen=True)
class InFlight:
    generation: int
    model: dict[int, bytes]


@dataclass(frozen=True)
class Anchored:
    volume: bytes
    state: AnchorState


class MarkingAnchor(MemoryAnchor):
    """A MemoryAnchor that puts every advance into the crash trace."""

    def __init__(self, crash: CrashDevice) -> None:
        super().__init__()
        self.crash = crash

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        super().advance(volume_id, expected, new)
        self.crash.mark(Anchored(volume_id, new))


def block(index: int, version: int) -> bytes:
    return (index.to_bytes(2, "little") + version.to_bytes(2, "little")) * (BS // 4)


def run_workload(blocks: int = 64) -> tuple[CrashDevice, int]:
    crash = CrashDevice(MemoryDevice(blocks))
    anchor = MarkingAnchor(crash)
    store = format_store(crash, KEY, anchor)
    rng = random.Random(7)
    model: dict[int, bytes] = {}
    logical = store.block_count
    version = 0
    per_commit = OPERATIONS // COMMITS
    for _ in range(COMMITS):
        for _ in range(per_commit):
            index = rng.randrange(logical)
            version += 1
            if rng.random() < 0.1 and model:
                victim = rng.choice(sorted(model))
                store.discard(victim)
                del model[victim]
            else:
                store.write(index, block(index, version))
                model[index] = block(index, version)
        crash.mark(InFlight(store.generation + 1, dict(model)))
        generation = store.commit()
        crash.mark(Acked(generation, dict(model)))
    store.close()
    return crash, logical


def expectations(point: CrashPoint) -> tuple[Acked, InFlight | None, Anchored | None]:
    acked: Acked | None = None
    inflight: InFlight | None = None
    anchored: Anchored | None = None
    for mark in point.marks:
        if isinstance(mark, Acked):
            acked, inflight = mark, None
        elif isinstance(mark, InFlight):
            inflight = mark
        elif isinstance(mark, Anchored):
            anchored = mark
    return acked or Acked(0, {}), inflight, anchored


def bound() -> int | None:
    text = os.environ.get("CVMSTORE_CRASH_BOUND", "24")
    return None if text == "none" else int(text)


def test_crash_at_every_write_and_flush() -> None:
    crash, logical = run_workload()
    limit = bound()
    points = states = inflight_recoveries = checks = 0
    for point in crash.crash_points():
        points += 1
        acked, inflight, anchored = expectations(point)
        for state in point.states(bound=limit):
            states += 1
            anchor = MemoryAnchor()
            if anchored is not None:
                anchor.advance(anchored.volume, None, anchored.state)
            device = state.device()
            if anchored is None:
                # a crash during format, before the first anchor: nothing was acknowledged
                continue
            store = open_store(device, KEY, anchor)
            allowed = [acked] + ([inflight] if inflight is not None else [])
            match = [m for m in allowed if m.generation == store.generation]
            assert match, f"{state.describe()}: generation {store.generation} not in {allowed}"
            expected = match[0].model
            for index in range(logical):
                got = store.read(index)
                assert got == expected.get(index, bytes(BS)), (
                    f"{state.describe()}: block {index} differs at generation {store.generation}"
                )
            if match[0] is inflight:
                inflight_recoveries += 1
            if states % 50 == 0:
                checks += 1
                assert store.check().ok, state.describe()
            store.close()
    print(
        f"\ncrash suite: {crash.operation_count} operations, {points} crash points, {states} "
        f"crash states (bound {limit}), {inflight_recoveries} recovered the in-flight commit, "
        f"{checks} full checks"
    )
    assert crash.operation_count > OPERATIONS
    assert points == crash.operation_count + 1
    assert inflight_recoveries > 0
    assert states >= points
