"""Crash at every write and every flush of a filesystem workload; the tree is always exact.

Each workload starts from a committed filesystem, state A (a model: every file's path and
bytes, and every directory), and runs one or more steps, each exactly one store commit
(one operation, or one `transaction()`): A -> B (-> C ...). The device under the workload is
a `CrashDevice`, which marks what each step is about to commit, when a superblock write is
issued, when it is flushed, every anchor advance, and each acknowledgement.

For every crash point (the start, and after every write and every flush) and every crash
state there (every subset of the unflushed writes up to a bound, plus every torn write), the
image is opened with a fresh `MemoryAnchor` holding what the real anchor held at that point
(as tests/crash/test_store_crash.py does), and:

- the filesystem opens, and `fsck()` finds nothing wrong;
- the generation is that of the last acknowledged state or of the in-flight one, and the
  whole tree (`walk` + `read_file` of every file) equals that state's model exactly;
- the in-flight state is only possible once its commit's superblock write was issued, and
  is the only one possible once that write was flushed.

The workloads: (1) the vTPM pattern, write `/vtpm/nv.tmp` then rename it over `/vtpm/nv`
(two commits); (2) unlink of a file of 14 blocks (with an indirect block); (3) a transaction
that updates `/uefi/db`, creates `/uefi/dbx`, deletes `/uefi/old` and makes `/uefi/new`;
(4) `write_file` rewriting a 16 KiB file in place, same size, new bytes; (5) a `write` that
grows a file from 11 to 13 blocks of 512 bytes, across the direct -> indirect boundary.
A negative control runs workload 1 with a non-atomic replacement (remove, then rename, two
commits declared as one step) and the checker must catch the state in between.

Bound: `CVMSTORE_CRASH_BOUND` subsets per point, read as in test_store_crash.py, but with a
default of 256 here (a filesystem state takes about a millisecond to check; 24 is the
store's default); `none` enumerates every subset:
`CVMSTORE_CRASH_BOUND=none .venv/bin/pytest -s tests/crash/test_fs_crash.py`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from cvmstore._types import BlockIndex
from cvmstore.block import MemoryDevice
from cvmstore.fs import Filesystem, make_filesystem, open_filesystem
from cvmstore.fs.layout import DIRECT
from cvmstore.integrity import AnchorState, MemoryAnchor
from cvmstore.integrity.geometry import SUPERBLOCKS
from cvmstore.testing import CrashDevice, CrashPoint, CrashState

KEY = bytes(range(32))


# ---------------------------------------------------------------- the model


@dataclass(frozen=True, repr=False)
class Tree:
    """What a filesystem holds: every file's bytes, and every directory (with "/")."""

    files: dict[str, bytes]
    dirs: frozenset[str]

    def __repr__(self) -> str:
        sizes = {path: len(data) for path, data in sorted(self.files.items())}
        return f"Tree(files={sizes}, dirs={sorted(self.dirs)})"

    def diff(self, other: Tree) -> str:
        """Say in words how `other` differs from this tree (for assertion messages)."""
        parts: list[str] = []
        if self.dirs != other.dirs:
            parts.append(
                f"dirs missing {sorted(self.dirs - other.dirs)}, "
                f"extra {sorted(other.dirs - self.dirs)}"
            )
        for path in sorted(self.files.keys() | other.files.keys()):
            want, got = self.files.get(path), other.files.get(path)
            if want is None:
                parts.append(f"extra file {path}")
            elif got is None:
                parts.append(f"missing file {path}")
            elif want != got:
                same = sum(1 for a, b in zip(want, got, strict=False) if a == b)
                parts.append(f"{path}: {len(got)} bytes, {same} of {len(want)} as expected")
        return "; ".join(parts) or "identical"


def read_tree(fs: Filesystem) -> Tree:
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for where, subdirs, names in fs.walk():
        dirs.add(where)
        base = where.rstrip("/")
        dirs.update(f"{base}/{name}" for name in subdirs)
        for name in names:
            files[f"{base}/{name}"] = fs.read_file(f"{base}/{name}")
    return Tree(files, frozenset(dirs))


def content(tag: str, size: int) -> bytes:
    return random.Random(tag).randbytes(size)


def with_files(tree: Tree, changes: dict[str, bytes | None]) -> Tree:
    """A copy of `tree` with files set (bytes) or removed (None)."""
    files = dict(tree.files)
    for path, value in changes.items():
        if value is None:
            del files[path]
        else:
            files[path] = value
    return Tree(files, tree.dirs)


# ---------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Step:
    """One commit: what it does to the filesystem and to the model."""

    run: Callable[[Filesystem], object]
    model: Callable[[Tree], Tree]
    commits: int = 1  # only the negative control makes more than one


@dataclass(frozen=True)
class Workload:
    name: str
    block_size: int
    device_blocks: int
    setup: Callable[[Filesystem], None]  # builds state A, in any number of commits
    steps: tuple[Step, ...]
    after: Callable[[Filesystem], None] = lambda fs: None  # checks on the live result


NV_OLD = content("nv-old", 10_000)
NV_NEW = content("nv-new", 9_000)
OTHER = content("other", 3_000)


def setup_vtpm(fs: Filesystem) -> None:
    fs.write_file("/vtpm/nv", NV_OLD, parents=True)
    fs.write_file("/vtpm/other", OTHER)


def setup_split(fs: Filesystem) -> None:
    setup_vtpm(fs)
    fs.write_file("/vtpm/nv.tmp", NV_NEW)


def replace_split(fs: Filesystem) -> None:
    """Not atomic: the old file goes in one commit, the new one arrives in the next."""
    fs.remove("/vtpm/nv")
    fs.rename("/vtpm/nv.tmp", "/vtpm/nv")


RENAME_OVER = Workload(
    "rename-over",
    4096,
    64,
    setup_vtpm,
    (
        Step(
            lambda fs: fs.write_file("/vtpm/nv.tmp", NV_NEW),
            lambda t: with_files(t, {"/vtpm/nv.tmp": NV_NEW}),
        ),
        Step(
            lambda fs: fs.rename("/vtpm/nv.tmp", "/vtpm/nv"),
            lambda t: with_files(t, {"/vtpm/nv.tmp": None, "/vtpm/nv": NV_NEW}),
        ),
    ),
)

# the negative control: the same end state, reached by two commits the model calls one
RENAME_SPLIT = Workload(
    "rename-split (negative control)",
    4096,
    64,
    setup_split,
    (Step(replace_split, lambda t: with_files(t, {"/vtpm/nv.tmp": None, "/vtpm/nv": NV_NEW}), 2),),
)

BIG = content("big", 13 * 4096 + 1000)  # 14 blocks: 12 direct, 2 behind an indirect block


def setup_unlink(fs: Filesystem) -> None:
    setup_vtpm(fs)
    fs.write_file("/data/big", BIG, parents=True)
    assert fs.stat("/data/big").blocks == 14 + 1, "the file should need an indirect block"


UNLINK = Workload(
    "unlink-multiblock",
    4096,
    96,
    setup_unlink,
    (Step(lambda fs: fs.remove("/data/big"), lambda t: with_files(t, {"/data/big": None})),),
)

DB_OLD = content("db-old", 6_000)
DB_NEW = content("db-new", 9_500)
DBX = content("dbx", 5_000)
OLD = content("old", 4_500)
KEEP = content("keep", 700)


def setup_uefi(fs: Filesystem) -> None:
    fs.write_file("/uefi/db", DB_OLD, parents=True)
    fs.write_file("/uefi/old", OLD)
    fs.write_file("/uefi/keep", KEEP)
    fs.write_file("/vtpm/nv", NV_OLD, parents=True)


def uefi_transaction(fs: Filesystem) -> None:
    with fs.transaction():
        fs.write_file("/uefi/db", DB_NEW)
        fs.write_file("/uefi/dbx", DBX)
        fs.remove("/uefi/old")
        fs.mkdir("/uefi/new")


def uefi_model(tree: Tree) -> Tree:
    changed = with_files(tree, {"/uefi/db": DB_NEW, "/uefi/dbx": DBX, "/uefi/old": None})
    return Tree(changed.files, changed.dirs | {"/uefi/new"})


TRANSACTION = Workload(
    "uefi-transaction", 4096, 64, setup_uefi, (Step(uefi_transaction, uefi_model),)
)

STATE_OLD = content("state-old", 16 * 1024)
STATE_NEW = content("state-new", 16 * 1024)


STATE_BLOCKS: list[list[int]] = []  # where setup_rewrite put the file


def file_blocks(fs: Filesystem, path: str) -> list[int]:
    """The filesystem blocks holding a file's data, in order."""
    _, inode = fs._file(path)
    return fs._map.lookup(inode, 0, -(-inode.size // fs.store.block_size))


def setup_rewrite(fs: Filesystem) -> None:
    fs.write_file("/vtpm/state", STATE_OLD, parents=True)
    fs.write_file("/vtpm/other", OTHER)
    STATE_BLOCKS[:] = [file_blocks(fs, "/vtpm/state")]


def rewritten_in_place(fs: Filesystem) -> None:
    assert_blocks(fs, "/vtpm/state", 4)
    assert file_blocks(fs, "/vtpm/state") == STATE_BLOCKS[0], "not rewritten in place"


REWRITE = Workload(
    "rewrite-16k-in-place",
    4096,
    64,
    setup_rewrite,
    (
        Step(
            lambda fs: fs.write_file("/vtpm/state", STATE_NEW),
            lambda t: with_files(t, {"/vtpm/state": STATE_NEW}),
        ),
    ),
    after=rewritten_in_place,
)

SMALL = 512
GROW_FROM = content("grow-from", 11 * SMALL - 100)  # ends inside the last-but-one direct block
GROW_TAIL = content("grow-tail", 1000)  # to 13 blocks: the 13th is behind the indirect block


def setup_grow(fs: Filesystem) -> None:
    fs.write_file("/vtpm/nv", GROW_FROM, parents=True)
    fs.write_file("/vtpm/other", OTHER[:700])
    assert_blocks(fs, "/vtpm/nv", 11)


def assert_blocks(fs: Filesystem, path: str, blocks: int) -> None:
    assert fs.stat(path).blocks == blocks, f"{path}: {fs.stat(path)}"


GROW = Workload(
    "grow-across-indirect",
    SMALL,
    160,
    setup_grow,
    (
        Step(
            lambda fs: fs.write("/vtpm/nv", len(GROW_FROM), GROW_TAIL),
            lambda t: with_files(t, {"/vtpm/nv": GROW_FROM + GROW_TAIL}),
        ),
    ),
    after=lambda fs: assert_blocks(fs, "/vtpm/nv", DIRECT + 1 + 1),  # 13 data, 1 indirect
)

assert len(GROW_FROM) < DIRECT * SMALL < len(GROW_FROM) + len(GROW_TAIL)


# ---------------------------------------------------------------- recording


@dataclass(frozen=True)
class Committed:
    """State of step `step` (0 is A), at store generation `generation`."""

    step: int
    generation: int
    tree: Tree


@dataclass(frozen=True)
class Begin:
    """Step `state.step` starts; it will commit `state`."""

    state: Committed


@dataclass(frozen=True)
class Acked:
    state: Committed


@dataclass(frozen=True)
class SuperblockWrite:
    pass


@dataclass(frozen=True)
class SuperblockFlush:
    pass


@dataclass(frozen=True)
class Anchored:
    volume: bytes
    state: AnchorState


class FsCrashDevice(CrashDevice):
    """A CrashDevice that marks where superblock writes are issued and flushed."""

    def __init__(self, inner: MemoryDevice) -> None:
        super().__init__(inner)
        self._superblock_pending = False

    def write(self, first: BlockIndex, data: bytes) -> None:
        if first < SUPERBLOCKS:
            self.mark(SuperblockWrite())
            self._superblock_pending = True
        super().write(first, data)

    def flush(self) -> None:
        if self._superblock_pending:
            self.mark(SuperblockFlush())  # the point after this flush sees the mark
            self._superblock_pending = False
        super().flush()


class MarkingAnchor(MemoryAnchor):
    """A MemoryAnchor that puts every advance into the crash trace."""

    def __init__(self, crash: CrashDevice, volume: bytes, state: AnchorState) -> None:
        super().__init__()
        super().advance(volume, None, state)
        self.crash = crash

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        super().advance(volume_id, expected, new)
        self.crash.mark(Anchored(volume_id, new))


@dataclass
class Recorded:
    crash: FsCrashDevice
    block_size: int
    initial: Committed
    volume: bytes
    anchored: AnchorState


def clock() -> int:
    return 1_700_000_000_000_000_000


def record(workload: Workload) -> Recorded:
    """Build state A on a plain device, then run the steps on a `FsCrashDevice` over it."""
    device = MemoryDevice(workload.device_blocks, workload.block_size)
    anchor = MemoryAnchor()
    with make_filesystem(device, KEY, anchor, clock=clock) as fs:
        workload.setup(fs)
        volume, generation = fs.store.volume_id, fs.store.generation
        tree = read_tree(fs)
        assert fs.fsck().ok
    anchored = anchor.read(volume)
    assert anchored is not None
    assert anchored.generation == generation
    initial = Committed(0, generation, tree)

    crash = FsCrashDevice(device)
    marking = MarkingAnchor(crash, volume, anchored)
    with open_filesystem(crash, KEY, marking, clock=clock) as fs:
        state = initial
        for number, step in enumerate(workload.steps, start=1):
            state = Committed(number, state.generation + step.commits, step.model(state.tree))
            crash.mark(Begin(state))
            step.run(fs)
            generation = fs.store.generation
            assert generation == state.generation, f"step {number}: not {step.commits} commit(s)"
            crash.mark(Acked(state))
        live = read_tree(fs)
        assert live == state.tree, f"the live result: {state.tree.diff(live)}"
        workload.after(fs)
    return Recorded(crash, workload.block_size, initial, volume, anchored)


# ---------------------------------------------------------------- checking


@dataclass(frozen=True)
class Expected:
    allowed: tuple[Committed, ...]
    anchored: AnchorState


def expectations(point: CrashPoint, recorded: Recorded) -> Expected:
    acked = recorded.initial
    inflight: Committed | None = None
    written = flushed = False
    anchored = recorded.anchored
    for mark in point.marks:
        if isinstance(mark, Begin):
            inflight, written, flushed = mark.state, False, False
        elif isinstance(mark, Acked):
            acked, inflight = mark.state, None
        elif isinstance(mark, SuperblockWrite):
            written = True
        elif isinstance(mark, SuperblockFlush):
            flushed = True
        elif isinstance(mark, Anchored):
            anchored = mark.state
    if inflight is None or not written:
        allowed: tuple[Committed, ...] = (acked,)
    elif flushed:
        allowed = (inflight,)
    else:
        allowed = (acked, inflight)
    return Expected(allowed, anchored)


@dataclass
class Outcome:
    points: int = 0
    states: int = 0
    pending: list[int] = field(default_factory=list)  # unflushed blocks at each point
    recovered: dict[int, int] = field(default_factory=dict)  # step -> states that held it
    both_allowed: int = 0  # states where the superblock write was in flight
    violations: list[str] = field(default_factory=list)


def check_state(state: CrashState, recorded: Recorded, expected: Expected) -> Committed | str:
    """Open one crash image; return the state it holds, or what is wrong with it."""
    anchor = MemoryAnchor()
    anchor.advance(recorded.volume, None, expected.anchored)
    try:
        fs = open_filesystem(state.device(), KEY, anchor, clock=clock)
    except Exception as exc:
        return f"does not open: {type(exc).__name__}: {exc}"
    try:
        generation = fs.store.generation
        try:
            tree = read_tree(fs)
        except Exception as exc:
            return f"generation {generation}: reading the tree: {type(exc).__name__}: {exc}"
        match = [c for c in expected.allowed if c.tree == tree]
        if not match:
            diffs = [f"vs step {c.step}: {c.tree.diff(tree)}" for c in expected.allowed]
            return f"generation {generation}: the tree is no allowed state ({'; '.join(diffs)})"
        if match[0].generation != generation:
            return f"the tree of step {match[0].step} at generation {generation}"
        report = fs.fsck()
        if not report.ok:
            return f"generation {generation}: fsck: {report.problems[:3]}"
        return match[0]
    finally:
        fs.close()


def crash_check(recorded: Recorded, limit: int | None) -> Outcome:
    outcome = Outcome()
    for point in recorded.crash.crash_points():
        outcome.points += 1
        outcome.pending.append(len(point.pending))
        expected = expectations(point, recorded)
        for state in point.states(bound=limit):
            outcome.states += 1
            if len(expected.allowed) > 1:
                outcome.both_allowed += 1
            result = check_state(state, recorded, expected)
            if isinstance(result, str):
                outcome.violations.append(f"{state.describe()}: {result}")
            else:
                outcome.recovered[result.step] = outcome.recovered.get(result.step, 0) + 1
    return outcome


def bound() -> int | None:
    text = os.environ.get("CVMSTORE_CRASH_BOUND", "256")
    return None if text == "none" else int(text)


TOTAL = {"workloads": 0, "points": 0, "states": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_total() -> Iterator[None]:
    yield
    print(
        f"\nfs crash suite: {TOTAL['workloads']} workloads, {TOTAL['points']} crash points, "
        f"{TOTAL['states']} crash states checked (bound {bound()})"
    )


WORKLOADS = [RENAME_OVER, UNLINK, TRANSACTION, REWRITE, GROW]


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_crash_at_every_write_and_flush(workload: Workload) -> None:
    recorded = record(workload)
    limit = bound()
    outcome = crash_check(recorded, limit)
    TOTAL["workloads"] += 1
    TOTAL["points"] += outcome.points
    TOTAL["states"] += outcome.states
    print(
        f"\n{workload.name}: {recorded.crash.operation_count} operations, {outcome.points} "
        f"crash points, {outcome.states} crash states (bound {limit}); recovered per step "
        f"{dict(sorted(outcome.recovered.items()))}, {outcome.both_allowed} with the "
        f"superblock write in flight"
    )
    if outcome.violations:
        shown = "\n".join(outcome.violations[:10])
        pytest.fail(f"{len(outcome.violations)} bad crash states, the first:\n{shown}")
    assert outcome.points == recorded.crash.operation_count + 1
    # every state was opened and checked: min(2**n, bound) subsets and n*(s-1) torn writes
    # for a point with n unflushed blocks of s sectors (counted here, not by CrashPoint)
    sectors = workload.block_size // 512
    expected = sum(
        min(2**n, limit if limit is not None else 2**n) + n * (sectors - 1) for n in outcome.pending
    )
    assert outcome.states == expected
    assert max(outcome.pending) >= 4  # the workload left several writes in flight at once
    # every state of the workload was recovered somewhere: A, and each step's result
    assert sorted(outcome.recovered) == list(range(len(workload.steps) + 1))
    assert outcome.both_allowed > 0  # the window where either state is right was reached


def test_the_checker_catches_a_non_atomic_replace() -> None:
    """Negative control: two commits declared as one must produce violations."""
    recorded = record(RENAME_SPLIT)
    outcome = crash_check(recorded, bound())
    assert outcome.violations, "the checker accepted a replace that is not atomic"
    # and for the right reason: the state between the two commits has no /vtpm/nv
    strays = [v for v in outcome.violations if "missing file /vtpm/nv;" not in v]
    assert not strays, strays[:3]
