"""Stateful model test: `SecureStore` against a dict model kept per committed generation.

A hypothesis `RuleBasedStateMachine` drives one store on a 32-block `MemoryDevice` (22
logical blocks, a spare of 4, so "device full" is reachable) with a `MemoryAnchor`. Rules:
write, fill (write every block), discard, commit, abort, crash (take the image as it is, with
this commit's data blocks already on it but no new superblock, and open it again), clean
reopen (close, open), and a rollback attempt (open the image of an older generation: must
raise `RollbackError`). The model keeps the committed contents of every generation and the
uncommitted view; it also predicts exactly when a write must raise `DeviceFullError` (the
data area holds the committed blocks plus those this commit allocated; frees apply at
commit) and whether a commit creates a generation. After every step a few reads must match
the uncommitted-inclusive view; after a crash or reopen every block must match the last
committed generation and `check()` must be clean.
"""

from __future__ import annotations

import random

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cvmstore.block import MemoryDevice
from cvmstore.errors import DeviceFullError, RollbackError
from cvmstore.integrity import MemoryAnchor, SecureStore, format_store, open_store
from cvmstore.integrity.geometry import plan

BS = 4096
BLOCKS = 32
SECRET = bytes(range(32, 64))
GEOMETRY = plan(BLOCKS, BS)
LOGICAL = GEOMETRY.logical
ZEROS = bytes(BS)

indexes = st.integers(0, LOGICAL - 1)
values = st.integers(0, 255)


def block(index: int, value: int) -> bytes:
    """Content of a block: the value, with the index mixed in so no two blocks look alike."""
    return bytes([index, value]) * (BS // 2)


# 150 runs of up to 80 steps take a few seconds; a larger profile (HYPOTHESIS_PROFILE=deep)
# still gets its own, larger number.
@settings(max_examples=max(150, settings().max_examples), stateful_step_count=80)
class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.anchor = MemoryAnchor()
        self.device = MemoryDevice(BLOCKS)
        self.store: SecureStore = format_store(self.device, SECRET, self.anchor)
        assert self.store.block_count == LOGICAL
        self.generation = 0
        self.generations: dict[int, dict[int, bytes]] = {0: {}}  # committed, per generation
        self.images: dict[int, bytes] = {0: self.device.image()}
        self.current: dict[int, bytes] = {}  # the view including uncommitted writes
        self.allocated: set[int] = set()  # logical blocks on a block this commit allocated
        self.touched = False  # whether commit() has anything to write
        self.steps = 0

    @property
    def committed(self) -> dict[int, bytes]:
        return self.generations[self.generation]

    def _forget_pending(self) -> None:
        self.current = dict(self.committed)
        self.allocated.clear()
        self.touched = False

    def _write(self, index: int, value: int) -> None:
        data = block(index, value)
        in_use = len(self.committed) + len(self.allocated)
        if index not in self.allocated and in_use >= GEOMETRY.data_blocks:
            try:
                self.store.write(index, data)
            except DeviceFullError:
                event("write refused: device full")
                return
            raise AssertionError(f"write {index} succeeded with all {in_use} blocks in use")
        self.store.write(index, data)
        self.current[index] = data
        self.allocated.add(index)
        self.touched = True

    def _assert_all_committed(self) -> None:
        assert self.store.generation == self.generation
        for index in range(LOGICAL):
            assert self.store.read(index) == self.committed.get(index, ZEROS), index
        whole = b"".join(self.committed.get(index, ZEROS) for index in range(LOGICAL))
        assert self.store.read_blocks(0, LOGICAL) == whole  # the bulk path agrees
        report = self.store.check()
        assert report.ok, report.problems
        assert report.data_blocks == len(self.committed)

    @rule(index=indexes, value=values)
    def write(self, index: int, value: int) -> None:
        self._write(index, value)

    @rule(value=values)
    def fill(self, value: int) -> None:
        for index in range(LOGICAL):
            self._write(index, value)

    @rule(index=indexes)
    def discard(self, index: int) -> None:
        self.store.discard(index)
        if index in self.current:
            self.touched = True
            del self.current[index]
        self.allocated.discard(index)

    @rule(index=indexes)
    def read(self, index: int) -> None:
        assert self.store.read(index) == self.current.get(index, ZEROS)

    @rule(first=indexes, data=st.data())
    def read_run(self, first: int, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, LOGICAL - first))
        expected = b"".join(self.current.get(i, ZEROS) for i in range(first, first + count))
        assert self.store.read_blocks(first, count) == expected

    @rule()
    def commit(self) -> None:
        generation = self.store.commit()
        if self.touched:
            event("commit made a generation")
            assert generation == self.generation + 1
            self.generations[generation] = dict(self.current)
            self.images[generation] = self.device.image()
        else:
            assert generation == self.generation
        self.generation = generation
        self._forget_pending()
        assert not self.store.dirty

    @rule()
    def abort(self) -> None:
        self.store.abort()
        self._forget_pending()

    @rule()
    def crash_and_reopen(self) -> None:
        # The host keeps the image exactly as the crash left it: this commit's data blocks
        # were written, its superblock was not. The old store object is abandoned.
        self.device = MemoryDevice.from_image(self.device.image())
        self.store = open_store(self.device, SECRET, self.anchor)
        self._forget_pending()
        self._assert_all_committed()
        event("recovered after a crash")

    @rule()
    def reopen_clean(self) -> None:
        self.store.close()
        self.store = open_store(self.device, SECRET, self.anchor)
        self._forget_pending()
        self._assert_all_committed()

    @precondition(lambda self: self.generation > 0)
    @rule(data=st.data())
    def rollback_attempt(self, data: st.DataObject) -> None:
        older = data.draw(st.sampled_from(sorted(g for g in self.images if g < self.generation)))
        try:
            open_store(MemoryDevice.from_image(self.images[older]), SECRET, self.anchor)
        except RollbackError:
            event("older image refused")
            return
        raise AssertionError(f"the image of generation {older} opened at {self.generation}")

    @invariant()
    def reads_match_the_model(self) -> None:
        self.steps += 1
        for index in random.Random(self.steps).sample(range(LOGICAL), 3):
            assert self.store.read(index) == self.current.get(index, ZEROS), index
        assert self.store.generation == self.generation

    def teardown(self) -> None:
        self.store.close()


TestStoreModel = StoreMachine.TestCase
