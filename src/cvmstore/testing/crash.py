"""`CrashDevice`: record a workload's writes, then walk every state a crash could leave.

How it is used:

```python
crash = CrashDevice(MemoryDevice(64))
workload(crash)                      # runs once, for real, against the wrapped device
for point in crash.crash_points():   # after every write and every flush
    for state in point.states(bound=64):
        check_recovers(state.device(), acknowledged=point.marks)
```

The model. The device below keeps what was flushed; the writes since the last flush (the
*pending* writes, split into one *unit* per block) may each have reached the medium or not,
in any combination, and one of them may be torn at 512-byte sector granularity. A crash
point is a position in the recorded trace: before the first operation, and after every write
and every flush. At a crash point with `n` pending units on a device with `s` sectors per
block, the states are, in this order:

1. **Subsets**: for every subset K of the pending units, exactly the units in K persisted
   (applied in write order, so a later write to the same block wins when both are kept):
   `2**n` states, from "all lost" to "all kept".
2. **Torn writes**: for every unit `i` and every `t` in `1..s-1`, the units before `i` persisted,
   unit `i` persisted only in its first `t` sectors (the rest of that block keeps its old
   bytes), and the units after `i` were lost: `n * (s - 1)` states.

So an exhaustive point yields exactly `2**n + n*(s-1)` states (`exhaustive_state_count`).
With a `bound`, subsets are taken in a fixed, documented order until the bound is met: "all
lost", "all kept", every in-order prefix, every "all but one", every "only one", then subsets
drawn by a generator seeded with the point's index, so a bounded run is reproducible. Torn
states are always all included: they are linear in `n`.

`mark(label)` puts a label into the trace: a test marks each acknowledged commit, and each
crash point reports the marks made before it, which is what the store must at least recover.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cvmstore._types import BlockIndex
from cvmstore.block.memory import MemoryDevice
from cvmstore.block.protocol import SECTOR_SIZE, BlockDevice, blocks_in, check_range
from cvmstore.testing._wrapper import PassThroughDevice

__all__ = [
    "CrashDevice",
    "CrashPoint",
    "CrashState",
    "PendingWrite",
    "exhaustive_state_count",
]


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """One block written since the last flush."""

    block: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _Write:
    units: tuple[PendingWrite, ...]


@dataclass(frozen=True, slots=True)
class _Flush:
    pass


@dataclass(frozen=True, slots=True)
class _Mark:
    label: object


_Event = _Write | _Flush | _Mark


def exhaustive_state_count(pending: int, sectors_per_block: int) -> int:
    """The number of crash states of a point with `pending` units, when not bounded."""
    return (1 << pending) + pending * (sectors_per_block - 1)


@dataclass(frozen=True, slots=True)
class CrashState:
    """One image a crash could leave behind."""

    point: CrashPoint
    kept: frozenset[int]
    torn: tuple[int, int] | None  # (unit index, sectors that reached the medium)

    def describe(self) -> str:
        """Say in words which writes survived (for assertion messages)."""
        if self.torn is not None:
            unit, sectors = self.torn
            how = f"units 0..{unit - 1} kept, unit {unit} torn after {sectors} sector(s)"
        else:
            how = f"kept units {sorted(self.kept)} of {len(self.point.pending)}"
        return f"crash after {self.point.describe()}: {how}"

    def image(self) -> bytes:
        """The bytes of the whole device in this state."""
        image = bytearray(self.point.durable)
        bs = self.point.block_size
        for i, unit in enumerate(self.point.pending):
            start = unit.block * bs
            if i in self.kept:
                image[start : start + bs] = unit.data
            elif self.torn is not None and self.torn[0] == i:
                cut = self.torn[1] * SECTOR_SIZE
                image[start : start + cut] = unit.data[:cut]
        return bytes(image)

    def device(self) -> MemoryDevice:
        """A fresh `MemoryDevice` holding this state."""
        return MemoryDevice.from_image(self.image(), self.point.block_size)


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """A position in the trace at which the machine may lose power."""

    index: int  # operations (writes and flushes) completed before the crash
    after: str  # "start", "write" or "flush"
    durable: bytes  # the image as of the last completed flush
    pending: tuple[PendingWrite, ...]
    marks: tuple[object, ...]  # labels marked before this point
    block_size: int

    def describe(self) -> str:
        """Say in words where this point lies."""
        return f"operation {self.index} ({self.after}), {len(self.pending)} pending block(s)"

    def state_count(self, bound: int | None = None) -> int:
        """How many states `states(bound)` yields."""
        subsets = 1 << len(self.pending)
        if bound is not None:
            subsets = min(subsets, bound)
        return subsets + len(self.pending) * (self.block_size // SECTOR_SIZE - 1)

    def states(self, bound: int | None = None) -> Iterator[CrashState]:
        """Yield the crash states of this point (see the module docstring for the order).

        Args:
            bound: the most subset states to yield; `None` for all `2**n` of them.
        """
        n = len(self.pending)
        for kept in _subsets(n, bound, seed=self.index):
            yield CrashState(self, kept, None)
        for unit in range(n):
            for sectors in range(1, self.block_size // SECTOR_SIZE):
                yield CrashState(self, frozenset(range(unit)), (unit, sectors))


def _subsets(n: int, bound: int | None, seed: int) -> Iterator[frozenset[int]]:
    everything = range(n)
    if bound is None or 2**n <= bound:
        for size in range(n + 1):
            for combo in itertools.combinations(everything, size):
                yield frozenset(combo)
        return
    seen: set[frozenset[int]] = set()

    def ordered() -> Iterator[frozenset[int]]:
        yield frozenset()
        yield frozenset(everything)
        for size in range(1, n):
            yield frozenset(range(size))
        for drop in everything:
            yield frozenset(everything) - {drop}
        for only in everything:
            yield frozenset({only})
        rng = random.Random(seed)
        while True:
            yield frozenset(i for i in everything if rng.random() < 0.5)

    for kept in ordered():
        if len(seen) >= bound:
            return
        if kept not in seen:
            seen.add(kept)
            yield kept


class CrashDevice(PassThroughDevice):
    """A `BlockDevice` wrapper that records every write, flush and mark for crash replay.

    The wrapped device is read once at construction (the initial image), and every write
    goes through to it, so the workload runs exactly as it would without the recorder.
    """

    def __init__(self, inner: BlockDevice) -> None:
        super().__init__(inner)
        self._initial = inner.read(BlockIndex(0), inner.block_count)
        self._trace: list[_Event] = []

    def write(self, first: BlockIndex, data: bytes) -> None:
        """Write through, recording one pending unit per block."""
        count = blocks_in(self, data)
        check_range(self, first, count)
        self._inner.write(first, data)
        bs = self.block_size
        units = tuple(
            PendingWrite(first + i, bytes(data[i * bs : (i + 1) * bs])) for i in range(count)
        )
        self._trace.append(_Write(units))

    def flush(self) -> None:
        """Flush through, recording the barrier."""
        self._inner.flush()
        self._trace.append(_Flush())

    def mark(self, label: object) -> None:
        """Record `label` at this position (e.g. "commit 3 acknowledged")."""
        self._trace.append(_Mark(label))

    @property
    def operation_count(self) -> int:
        """Writes and flushes recorded so far."""
        return sum(1 for event in self._trace if not isinstance(event, _Mark))

    def crash_points(self, *, every: int = 1) -> Iterator[CrashPoint]:
        """Yield the crash points: the start, then after every write and every flush.

        Args:
            every: yield only every `every`-th point (after the start), to thin out a long
                trace in a bounded run; the last point is always yielded.
        """
        if every < 1:
            raise ValueError("every must be at least 1")
        durable = bytearray(self._initial)
        pending: list[PendingWrite] = []
        marks: list[object] = []
        bs = self.block_size
        index = 0

        def point(after: str) -> CrashPoint:
            return CrashPoint(index, after, bytes(durable), tuple(pending), tuple(marks), bs)

        yield point("start")
        total = self.operation_count
        for event in self._trace:
            if isinstance(event, _Mark):
                marks.append(event.label)
                continue
            index += 1
            if isinstance(event, _Write):
                pending.extend(event.units)
                after = "write"
            else:
                for unit in pending:
                    durable[unit.block * bs : (unit.block + 1) * bs] = unit.data
                pending.clear()
                after = "flush"
            if index % every == 0 or index == total:
                yield point(after)

    def final_marks(self) -> Sequence[object]:
        """Every label marked so far."""
        return [event.label for event in self._trace if isinstance(event, _Mark)]
