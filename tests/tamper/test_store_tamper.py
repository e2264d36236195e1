"""Tamper suite: try to break guarantees I, F-blk, F-dev and Fork of the secure store.

One populated store is built once: a 128-block `MemoryDevice` (114 logical blocks, a tree of
depth 2: two level-0 nodes under a root) behind a `HostileDevice`, with 5 commits making 76
writes to 54 logical blocks across both level-0 nodes: rewrites (up to three versions of a
block), discards, a write then discard and a double write within one commit. The committed
state then holds 47 data blocks and relies on 52 physical blocks (the newest superblock
slot, 3 tree nodes, 1 bitmap block, 47 data blocks). Every attack works on a fresh copy of
that image, opens it with a fresh anchor holding the committed state, reads *every* logical
block (reopening after each integrity failure, so one failure cannot hide wrong data in
another block) and runs `check()` on a fresh open.

The oracle: the committed state relies on the newest superblock slot (the first 512 bytes of
block 0 or 1) and on the blocks its tree references (nodes, bitmap blocks, data blocks). If an
attack changed any of those, it must be detected: `open_store` raises `IntegrityError`, or a
read does, or `check()` reports a problem; and `check()` must report one whenever the open
succeeds. If it changed none of them (a free or never-written block, the unused A/B twin of a
node or bitmap block, the older superblock slot, the zero padding after a slot, or a swap of
the two slots), the store must open, return exactly the committed data, and `check()` must be
clean. In no case may a read return wrong data, and every failure must be an
`IntegrityError` (with a location), never another exception.

Cases tried (each test prints its counts with `pytest -s` and asserts them):

- bit flips: each of the 126 non-superblock blocks at 8 bytes (first, 1, 17, 47, 1000,
  middle, 3000, last), and blocks 0 and 1 at every byte of the 512-byte slot plus 3 bytes of
  padding: 126 x 8 + 2 x 515 = 2038 cases. 920 damage the committed state (51 blocks x 8 +
  the newest slot's 512) and all are detected: 512 at open (`RollbackError`: the older slot
  is all that is left), 400 by a read, 8 (the bitmap block) by `check()` alone. 1118 land in
  unused space and are harmless.
- swaps: every pair of the 85 blocks ever written (every non-zero block: referenced blocks
  and stale versions), plus each of them with a never-written block: 3570 + 85 = 3655 cases;
  3093 damage the committed state and are detected, 562 are harmless.
- replays (F-blk): every older version (including the never-written one) of each of the 85
  blocks written while building, put back with `HostileDevice.replay`: 103 cases; the 64 that
  hit the committed state are detected, 39 (unused twins, free blocks, the older superblock
  slot) are harmless.
- whole-image rollback (F-dev, `FileAnchor` and `FileDevice`): each of the 5 older snapshots
  restored raises `RollbackError`; so do its superblocks spliced onto the newest image (5);
  the newest superblocks over each older body are detected by reads and `check()` (5).
- forks, each with a `MemoryAnchor` and with a `FileAnchor`: a restored copy run after the
  original advanced (`RollbackError`); two guests opened from one image (`ForkError` at the
  second commit, the loser `FAILED`, its image refused with `ForkError` afterwards, and once
  the winner is further ahead refused as stale); a loser whose rival committed twice; a
  batched, not yet anchored commit overtaken by a clone (`ForkError` at reopen).

These numbers follow from the fixed workload and geometry (allocation is deterministic); the
tests assert them, so a change to the layout shows up here.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cvmstore.block import FileDevice, MemoryDevice
from cvmstore.errors import CvmstoreError, ForkError, IntegrityError, RollbackError, StateError
from cvmstore.integrity import (
    AnchorPolicy,
    AnchorState,
    FileAnchor,
    MemoryAnchor,
    SecureStore,
    StoreState,
    format_store,
    open_store,
)
from cvmstore.integrity.anchor import Anchor
from cvmstore.integrity.geometry import SUPERBLOCKS
from cvmstore.integrity.superblock import SLOT_SIZE
from cvmstore.testing import HostileDevice, flip_bit, restore, snapshot, swap_blocks

BS = 4096
BLOCKS = 128
SECRET = bytes(range(32))

# Byte offsets whose bits are flipped (a different bit in each byte): 8 spread over every
# block; in the two superblock blocks, every byte of the 512-byte slot (each field of
# superblock.py's table) and 3 bytes of the zero padding after it.
BLOCK_OFFSETS = (0, 1, 17, 47, 1000, BS // 2, 3000, BS - 1)
SUPERBLOCK_OFFSETS = (*range(SLOT_SIZE), SLOT_SIZE, BS // 2, BS - 1)

Op = tuple[str, int]
# Five commits. Logical blocks 0..84 live in level-0 node 0, 85..113 in node 1 (fanout 85).
WORKLOAD: tuple[tuple[Op, ...], ...] = (
    tuple(("w", i) for i in [*range(30), *range(100, 110)]),
    (*(("w", i) for i in range(10)), *(("w", i) for i in range(110, 114))),
    (*(("d", i) for i in range(20, 25)), *(("w", i) for i in range(100, 105))),
    (*(("w", i) for i in range(5)), *(("w", i) for i in range(50, 55))),
    (
        ("w", 25),
        ("d", 109),
        ("w", 60),
        ("w", 61),
        ("d", 61),  # written and discarded within one commit
        ("w", 62),
        ("w", 62),  # rewritten within one commit (reused in place)
        ("w", 84),  # the last entry of level-0 node 0
        ("w", 85),  # the first entry of level-0 node 1
    ),
)


def content(index: int, version: int) -> bytes:
    """A block's content, distinct for every (logical block, version)."""
    seed = hashlib.sha256(f"block {index} version {version}".encode()).digest()
    return seed * (BS // len(seed))


def run_workload(
    store: SecureStore, after_commit: Callable[[int], None] | None = None
) -> dict[int, bytes]:
    """Apply WORKLOAD, committing after each batch; return the committed contents."""
    model: dict[int, bytes] = {}
    versions: Counter[int] = Counter()
    for ops in WORKLOAD:
        for op, index in ops:
            if op == "w":
                versions[index] += 1
                model[index] = content(index, versions[index])
                store.write(index, model[index])
            else:
                store.discard(index)
                model.pop(index, None)
        generation = store.commit()
        if after_commit is not None:
            after_commit(generation)
    return model


def referenced_blocks(store: SecureStore) -> dict[int, str]:
    """Every physical block the committed state relies on, and what it holds there.

    Reads the store's internals (the tree walk and the leaf entries) on purpose: the oracle
    must know which blocks matter independently of what `check()` says about them.
    """
    geo = store.geometry
    found = {store._slot_index: "the newest superblock slot"}
    for level, index, entry in store._nodes.walk():
        found[entry.physical] = f"tree node level {level} #{index}"
    for virtual in range(geo.virtual):
        entry = store._nodes.leaf(virtual)
        if entry.empty:
            continue
        if virtual < geo.logical:
            found[entry.physical] = f"logical block {virtual}"
        else:
            found[entry.physical] = f"bitmap block {virtual - geo.logical}"
    return found


def block_of(image: bytes, block: int) -> bytes:
    return image[block * BS : (block + 1) * BS]


@dataclass(frozen=True)
class Built:
    """The populated store every tamper case starts from."""

    image: bytes
    volume_id: bytes
    anchored: AnchorState
    expected: tuple[bytes, ...]  # every logical block, zeros where never written
    referenced: dict[int, str]
    newest_slot: int
    host: HostileDevice  # remembers every version of every block written while building

    def anchor(self) -> MemoryAnchor:
        """A fresh anchor holding the committed state (so no case can disturb another)."""
        anchor = MemoryAnchor()
        anchor.advance(self.volume_id, None, self.anchored)
        return anchor

    def damage(self, image: bytes) -> list[str]:
        """What of the committed state `image` changed; empty when the change is harmless."""
        where = [
            f"{what} (block {block})"
            for block, what in sorted(self.referenced.items())
            if block >= SUPERBLOCKS and block_of(image, block) != block_of(self.image, block)
        ]
        slot = self.newest_slot * BS
        newest = self.image[slot : slot + SLOT_SIZE]
        if newest not in (image[:SLOT_SIZE], image[BS : BS + SLOT_SIZE]):
            where.append(f"the newest superblock slot (block {self.newest_slot})")
        return where


@pytest.fixture(scope="module")
def built() -> Built:
    host = HostileDevice(MemoryDevice(BLOCKS))
    anchor = MemoryAnchor()
    store = format_store(host, SECRET, anchor)
    model = run_workload(store)
    assert store.generation == len(WORKLOAD)
    store.close()
    image = snapshot(host)
    volume_id = store.volume_id
    anchored = anchor.read(volume_id)
    assert anchored is not None
    assert anchored.generation == len(WORKLOAD)

    fresh = open_store(MemoryDevice.from_image(image), SECRET, anchor)
    assert fresh.geometry.depth == 2, "the suite wants interior tree nodes"
    referenced = referenced_blocks(fresh)
    expected = tuple(model.get(i, bytes(BS)) for i in range(fresh.block_count))
    assert [fresh.read(i) for i in range(fresh.block_count)] == list(expected)
    report = fresh.check()
    assert report.ok, report.problems
    # The oracle's view of the committed state agrees with check()'s.
    kinds = Counter(what.split()[0] for what in referenced.values())
    assert kinds["logical"] == report.data_blocks == len(model)
    assert kinds["tree"] == report.nodes == 3
    assert kinds["bitmap"] == report.bitmap_blocks == 1
    newest = fresh._slot_index
    fresh.close()
    return Built(image, volume_id, anchored, expected, referenced, newest, host)


@dataclass
class Outcome:
    """What one open-read-check pass over a tampered image saw."""

    open_error: CvmstoreError | None = None
    read_errors: dict[int, IntegrityError] = field(default_factory=dict)
    wrong: list[int] = field(default_factory=list)  # logical blocks returned with wrong data
    misreported: list[str] = field(default_factory=list)  # failures of the wrong kind
    check_problems: list[str] | None = None  # None: not run (open failed)

    @property
    def detected(self) -> bool:
        return (
            self.open_error is not None
            or bool(self.read_errors)
            or bool(self.check_problems)
            or bool(self.misreported)
        )


def attempt(built: Built, image: bytes) -> Outcome:
    """Open `image`, read every logical block, then check() on a fresh open."""
    out = Outcome()
    anchor = built.anchor()

    def opened() -> SecureStore:
        return open_store(MemoryDevice.from_image(image), SECRET, anchor)

    try:
        store = opened()
    except IntegrityError as exc:
        out.open_error = exc
        return out
    except CvmstoreError as exc:
        out.open_error = exc
        out.misreported.append(f"open raised {type(exc).__name__}: {exc}")
        return out
    except Exception as exc:  # a bug, not a detection: report it with the case
        out.misreported.append(f"open CRASHED with {type(exc).__name__}: {exc!r}")
        return out
    for index, want in enumerate(built.expected):
        if store.state is StoreState.FAILED:
            store = opened()
        try:
            got = store.read(index)
        except IntegrityError as exc:
            if exc.location is None:
                out.misreported.append(f"read {index}: IntegrityError without a location")
            out.read_errors[index] = exc
            continue
        except Exception as exc:
            out.misreported.append(f"read {index} raised {type(exc).__name__}: {exc!r}")
            store = opened()
            continue
        if got != want:
            out.wrong.append(index)
    try:
        out.check_problems = opened().check().problems
    except Exception as exc:
        out.misreported.append(f"check() raised {type(exc).__name__}: {exc!r}")
    return out


@dataclass
class Tally:
    """Counts over one family of attacks, and every violation found."""

    name: str
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def judge(self, built: Built, image: bytes, label: str) -> None:
        """Attack with `image` and hold the outcome to the oracle."""
        where = built.damage(image)
        out = attempt(built, image)
        self.counts["cases"] += 1
        bad = self.violations.append
        if out.wrong:
            self.counts["silent wrong data"] += 1
            bad(f"{label}: WRONG DATA returned silently for logical blocks {out.wrong}")
        for message in out.misreported:
            bad(f"{label}: {message}")
        if where:
            self.counts["damaged committed state"] += 1
            if not out.detected:
                bad(f"{label}: damage to {where} went undetected")
            elif out.open_error is not None:
                self.counts[f"detected at open ({type(out.open_error).__name__})"] += 1
            elif out.read_errors:
                self.counts["detected by a read"] += 1
            else:
                self.counts["detected by check() only"] += 1
            if out.check_problems == []:
                bad(f"{label}: check() finds nothing wrong, but {where} changed")
        else:
            self.counts["harmless (unused space)"] += 1
            if out.detected:
                first = out.open_error or next(iter(out.read_errors.values()), None)
                bad(
                    f"{label}: a change to unused space was reported: {first!r}, "
                    f"check: {out.check_problems}"
                )

    def report(self) -> None:
        seconds = time.perf_counter() - self.started
        print(f"\n[{self.name}] {self.counts['cases']} cases in {seconds:.1f} s")
        for key, value in sorted(self.counts.items()):
            if key != "cases":
                print(f"  {key}: {value}")
        for violation in self.violations[:50]:
            print(f"  VIOLATION {violation}")
        assert self.counts["silent wrong data"] == 0
        assert not self.violations, f"{len(self.violations)} violations: {self.violations[0]}"


def tampered(image: bytes, edit: Callable[[MemoryDevice, int, int], None], a: int, b: int) -> bytes:
    """A copy of `image` with `edit(device, a, b)` (a surgeon function) applied."""
    device = MemoryDevice.from_image(image)
    edit(device, a, b)
    return device.image()


def flip_positions(block: int) -> Iterator[int]:
    """Bit positions to flip in `block`: a different bit of each chosen byte."""
    for offset in SUPERBLOCK_OFFSETS if block < SUPERBLOCKS else BLOCK_OFFSETS:
        yield offset * 8 + offset % 8


def test_every_bit_flip_is_detected_or_harmless(built: Built) -> None:
    tally = Tally("bit flips")
    for block in range(BLOCKS):
        for bit in flip_positions(block):
            image = tampered(built.image, flip_bit, block, bit)
            tally.judge(built, image, f"flip block {block} bit {bit}")
    tally.report()
    per_block = len(BLOCK_OFFSETS)
    cases = (BLOCKS - SUPERBLOCKS) * per_block + SUPERBLOCKS * len(SUPERBLOCK_OFFSETS)
    assert tally.counts["cases"] == cases == 2038
    # Each flip in a referenced block or in the newest slot's 512 bytes damages the
    # committed state, and all of those were detected (else report() would have failed).
    damaged = (len(built.referenced) - 1) * per_block + SLOT_SIZE
    assert tally.counts["damaged committed state"] == damaged
    assert tally.counts["detected at open (RollbackError)"] == SLOT_SIZE
    assert tally.counts["detected by a read"] == 400
    assert tally.counts["detected by check() only"] == per_block  # the one bitmap block
    assert tally.counts["harmless (unused space)"] == cases - damaged


def test_every_swap_is_detected_or_harmless(built: Built) -> None:
    tally = Tally("block swaps")
    written = [b for b in range(BLOCKS) if any(block_of(built.image, b))]
    never = next(b for b in range(BLOCKS) if not any(block_of(built.image, b)))
    assert set(built.referenced) <= set(written)
    pairs = [*itertools.combinations(written, 2), *((b, never) for b in written)]
    for a, b in pairs:
        image = tampered(built.image, swap_blocks, a, b)
        tally.judge(built, image, f"swap blocks {a} and {b}")
    tally.report()
    assert len(written) == 85
    assert tally.counts["cases"] == len(pairs) == 85 * 84 // 2 + 85 == 3655
    assert tally.counts["damaged committed state"] == 3093
    # Among the harmless: swapping the two superblock slots (the newest is found by its
    # generation, wherever it is), which the oracle held to "opens, reads all correct".
    assert not built.damage(tampered(built.image, swap_blocks, 0, 1))
    assert tally.counts["harmless (unused space)"] == 562


def test_every_replayed_block_version_is_detected_or_harmless(built: Built) -> None:
    tally = Tally("replays")
    host = built.host
    replayed_referenced = 0
    for block in host.written_blocks():
        versions = host.versions(block)
        current = versions[-1]
        assert current == block_of(built.image, block)
        for version in range(len(versions) - 1):
            try:
                old = host.replay(block, version)
                image = snapshot(host)
            finally:
                host.replay(block, -1)  # put the current version back for the next case
            if old == current:
                tally.counts["identical to the current version (skipped)"] += 1
                continue
            referenced = block in built.referenced and (
                block >= SUPERBLOCKS or block == built.newest_slot
            )
            replayed_referenced += referenced
            tally.judge(built, image, f"replay block {block} version {version}")
    assert snapshot(host) == built.image
    tally.report()
    assert tally.counts["cases"] == 103
    # F-blk: putting an older version of a referenced block back is always detected.
    assert tally.counts["damaged committed state"] == replayed_referenced == 64
    assert tally.counts["harmless (unused space)"] == 39


def test_whole_image_rollback_is_refused(tmp_path: Path) -> None:
    anchor = FileAnchor(tmp_path / "anchor.json")
    path = tmp_path / "store.img"
    counts: Counter[str] = Counter()
    with FileDevice.create(path, BLOCKS * BS) as device:
        store = format_store(device, SECRET, anchor)
        snapshots = {0: snapshot(device)}

        def take_snapshot(generation: int) -> None:
            snapshots[generation] = snapshot(device)

        model = run_workload(store, take_snapshot)
        store.close()
        newest = snapshots.pop(len(WORKLOAD))
        assert sorted(snapshots) == list(range(len(WORKLOAD)))

        def open_it() -> SecureStore:
            return open_store(device, SECRET, anchor)

        for generation, old in snapshots.items():
            restore(device, old)
            with pytest.raises(RollbackError) as caught:
                open_it()
            assert caught.value.location is not None
            assert f"generation {generation}" in str(caught.value)
            counts["whole image restored: RollbackError"] += 1

            # The old superblocks alone over the newest body: still the old commit.
            restore(device, old[: SUPERBLOCKS * BS] + newest[SUPERBLOCKS * BS :])
            with pytest.raises(RollbackError):
                open_it()
            counts["old superblocks over the newest body: RollbackError"] += 1

            # The newest superblocks over an old body: authentic blocks, wrong versions.
            restore(device, newest[: SUPERBLOCKS * BS] + old[SUPERBLOCKS * BS :])
            store = open_it()
            failed = []
            for index in range(store.block_count):
                if store.state is StoreState.FAILED:
                    store = open_it()
                try:
                    got = store.read(index)
                except IntegrityError:
                    failed.append(index)
                    continue
                assert got == model.get(index, bytes(BS)), f"wrong data, block {index}"
            assert failed, f"the body of generation {generation} passed as the newest"
            assert not open_it().check().ok
            counts["newest superblocks over an old body: detected"] += 1

        restore(device, newest)
        store = open_it()
        assert [store.read(i) for i in range(store.block_count)] == [
            model.get(i, bytes(BS)) for i in range(store.block_count)
        ]
        assert store.check().ok
        store.close()
    print(f"\n[whole-image rollback] {sum(counts.values())} cases")
    for key, value in counts.items():
        print(f"  {key}: {value}")
    assert counts == {
        "whole image restored: RollbackError": len(WORKLOAD),
        "old superblocks over the newest body: RollbackError": len(WORKLOAD),
        "newest superblocks over an old body: detected": len(WORKLOAD),
    }


def make_anchor(kind: str, tmp_path: Path) -> Anchor:
    return MemoryAnchor() if kind == "memory" else FileAnchor(tmp_path / "anchor.json")


def populated(anchor: Anchor) -> tuple[bytes, dict[int, bytes]]:
    device = MemoryDevice(BLOCKS)
    store = format_store(device, SECRET, anchor)
    model = run_workload(store)
    store.close()
    return device.image(), model


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_restored_copy_cannot_run_after_the_original_advanced(kind: str, tmp_path: Path) -> None:
    anchor = make_anchor(kind, tmp_path)
    image, _ = populated(anchor)
    original, copy = MemoryDevice.from_image(image), MemoryDevice.from_image(image)
    a = open_store(original, SECRET, anchor)
    a.write(0, content(0, 99))
    assert a.commit() == len(WORKLOAD) + 1
    a.close()
    with pytest.raises(RollbackError):
        open_store(copy, SECRET, anchor)
    assert open_store(original, SECRET, anchor).read(0) == content(0, 99)


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_two_guests_from_one_image_cannot_both_advance(kind: str, tmp_path: Path) -> None:
    anchor = make_anchor(kind, tmp_path)
    image, model = populated(anchor)
    dev_a, dev_b = MemoryDevice.from_image(image), MemoryDevice.from_image(image)
    a = open_store(dev_a, SECRET, anchor)
    b = open_store(dev_b, SECRET, anchor)  # both open before either commits
    a.write(1, content(1, 101))
    assert a.commit() == len(WORKLOAD) + 1
    b.write(1, content(1, 202))
    b.write(70, content(70, 202))
    with pytest.raises(ForkError) as caught:
        b.commit()
    assert caught.value.location == "anchor"
    assert b.state is StoreState.FAILED
    with pytest.raises(StateError):
        b.read(1)
    with pytest.raises(StateError):
        b.commit()
    # B's commit reached its image before the anchor refused it: the same generation as the
    # anchor with another digest, which every later open refuses.
    with pytest.raises(ForkError) as reopened:
        open_store(MemoryDevice.from_image(dev_b.image()), SECRET, anchor)
    assert reopened.value.location is not None
    # The winner carries on, with its own data and none of the loser's.
    a.write(2, content(2, 101))
    assert a.commit() == len(WORKLOAD) + 2
    a.close()
    a = open_store(dev_a, SECRET, anchor)
    assert a.read(1) == content(1, 101)
    assert a.read(2) == content(2, 101)
    assert a.read(70) == model.get(70, bytes(BS))
    assert a.check().ok
    # Once the winner is two commits ahead, the loser's image is refused as stale.
    with pytest.raises(IntegrityError) as behind:
        open_store(MemoryDevice.from_image(dev_b.image()), SECRET, anchor)
    assert isinstance(behind.value, (ForkError, RollbackError))


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_clone_that_loses_the_race_to_a_later_commit_is_refused(
    kind: str, tmp_path: Path
) -> None:
    """Both guests commit; the second to reach the anchor fails even if A is further ahead."""
    anchor = make_anchor(kind, tmp_path)
    image, _ = populated(anchor)
    dev_a, dev_b = MemoryDevice.from_image(image), MemoryDevice.from_image(image)
    a = open_store(dev_a, SECRET, anchor)
    b = open_store(dev_b, SECRET, anchor)
    for version in (1, 2):
        a.write(3, content(3, 300 + version))
        a.commit()
    b.write(3, content(3, 400))
    with pytest.raises(ForkError):
        b.commit()
    assert b.state is StoreState.FAILED
    with pytest.raises(IntegrityError):
        open_store(MemoryDevice.from_image(dev_b.image()), SECRET, anchor)
    a.close()


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_an_unanchored_commit_overtaken_by_a_clone_is_refused(kind: str, tmp_path: Path) -> None:
    """A commits in batched mode and stops before anchoring; a clone B advances the anchor."""
    anchor = make_anchor(kind, tmp_path)
    image, _ = populated(anchor)
    dev_a, dev_b = MemoryDevice.from_image(image), MemoryDevice.from_image(image)
    a = open_store(dev_a, SECRET, anchor, policy=AnchorPolicy(every_commits=2))
    a.write(4, content(4, 500))
    a.commit()  # on A's image, not yet anchored; A then crashes (never closed)
    assert a.rollback_window()[0] == 1
    b = open_store(dev_b, SECRET, anchor)
    b.write(4, content(4, 600))
    b.commit()
    b.close()
    with pytest.raises(ForkError):
        open_store(MemoryDevice.from_image(dev_a.image()), SECRET, anchor)
    assert open_store(dev_b, SECRET, anchor).read(4) == content(4, 600)
