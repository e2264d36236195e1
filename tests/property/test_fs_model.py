"""Stateful model test: `Filesystem` against a pure in-memory tree (dirs set, files dict).

A hypothesis `RuleBasedStateMachine` drives one filesystem on a 1024-block `MemoryDevice` of
512-byte blocks (an indirect block holds 64 pointers, so writes reach the single indirect
tree) and compares it with `Model`. Paths are drawn over the names a, b, c at depth one or
two (renames can move things deeper). Every operation is predicted by the model: its result,
or the exact error class it must raise (PathNotFoundError, NotADirectoryPathError, ...), in
the order the filesystem checks them; an error must leave the tree as it was.

Rules: write_file, write at an offset (overwrite, append, holes; also through a file object
opened "r+b", raw or buffered), truncate, create, mkdir (parents, exist_ok), remove, rmdir,
remove_tree (with its count), rename; a transaction of a few generated operations that
commits, or raises inside to abort (the model then keeps none of it); reopen (close, then
open_filesystem on the same device and anchor); and crash: on a `CrashDevice` wrapping a copy
of the image, run one or two batches of operations, each a transaction, marking in the trace
when each commit returned and each anchor advance; then pick one crash point of that trace
and one crash state there (subsets of the writes not yet flushed, in CrashDevice's bounded
order) and open it with the anchor as it stood at that point. The tree must be exactly the
model of the last batch acknowledged before that point, or of the batch in flight.

After every step the whole tree (listing, kinds, contents, sizes) must equal the model, and
fsck must find nothing wrong (every few steps, and after every reopen and crash).
"""

from __future__ import annotations

import dataclasses
import io

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cvmstore.block.memory import MemoryDevice
from cvmstore.errors import (
    DirectoryNotEmptyError,
    FsError,
    InvalidPathError,
    IsADirectoryPathError,
    NotADirectoryPathError,
    PathExistsError,
    PathNotFoundError,
)
from cvmstore.fs import Filesystem, make_filesystem, open_filesystem
from cvmstore.integrity import AnchorState, MemoryAnchor
from cvmstore.testing import CrashDevice

SECRET = bytes(range(64, 96))
BS = 512
BLOCKS = 1024
FSCK_EVERY = 4

Names = tuple[str, ...]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        self.now += 1
        return self.now


def show(names: Names) -> str:
    return "/" + "/".join(names)


# ---------------------------------------------------------------- the model


@dataclasses.dataclass
class Model:
    """The expected tree: every directory (the root is ()) and every file's content."""

    dirs: set[Names] = dataclasses.field(default_factory=lambda: {()})
    files: dict[Names, bytes] = dataclasses.field(default_factory=dict)

    def copy(self) -> Model:
        return Model(set(self.dirs), dict(self.files))

    def snapshot(self) -> tuple[frozenset[Names], dict[Names, bytes]]:
        return frozenset(self.dirs), dict(self.files)

    def walk(self, names: Names) -> type[FsError] | None:
        """The error of walking every component of `names` (None: it exists)."""
        for depth in range(1, len(names) + 1):
            prefix = names[:depth]
            if prefix in self.dirs:
                continue
            if prefix in self.files and depth < len(names):
                return NotADirectoryPathError
            if prefix not in self.files:
                return PathNotFoundError
        return None

    def parent_error(self, names: Names) -> type[FsError] | None:
        """The error of reaching the directory that holds `names` (the fs's `_parent_of`)."""
        if not names:
            return InvalidPathError
        error = self.walk(names[:-1])
        if error is None and names[:-1] in self.files:
            return NotADirectoryPathError
        return error

    def file_error(self, names: Names) -> type[FsError] | None:
        """The error of using `names` as an existing file."""
        error = self.walk(names)
        if error is None and names in self.dirs:
            return IsADirectoryPathError
        return error

    def below(self, names: Names) -> list[Names]:
        """`names` and everything under it."""
        n = len(names)
        everything = [*self.dirs, *self.files]
        return [p for p in everything if p[:n] == names]

    def children(self, names: Names) -> list[Names]:
        return [p for p in self.below(names) if len(p) == len(names) + 1]

    # Each operation returns (error class or None, result); it changes the model only when
    # it succeeds.

    def write_file(self, names: Names, data: bytes) -> type[FsError] | None:
        error = self.parent_error(names)
        if error is None and names in self.dirs:
            error = IsADirectoryPathError
        if error is None:
            self.files[names] = data
        return error

    def write(self, names: Names, offset: int, data: bytes) -> type[FsError] | None:
        error = self.file_error(names)
        if error is None and data:
            old = self.files[names]
            new = bytearray(old.ljust(max(len(old), offset + len(data)), b"\0"))
            new[offset : offset + len(data)] = data
            self.files[names] = bytes(new)
        return error

    def truncate(self, names: Names, size: int) -> type[FsError] | None:
        error = self.file_error(names)
        if error is None:
            self.files[names] = self.files[names][:size].ljust(size, b"\0")
        return error

    def create(self, names: Names, exist_ok: bool) -> type[FsError] | None:
        error = self.parent_error(names)
        if error is None and names in self.dirs:
            error = IsADirectoryPathError
        elif error is None and names in self.files:
            error = None if exist_ok else PathExistsError
        elif error is None:
            self.files[names] = b""
        return error

    def mkdir(self, names: Names, parents: bool, exist_ok: bool) -> type[FsError] | None:
        if not names:
            return InvalidPathError
        if parents:
            for depth in range(1, len(names)):
                if names[:depth] in self.files:
                    return NotADirectoryPathError
                if names[:depth] not in self.dirs:
                    break  # the rest is made under a new, empty directory
            self.dirs.update(names[:depth] for depth in range(1, len(names)))
        error = self.parent_error(names)
        if error is None and names in self.dirs:
            error = None if (exist_ok or parents) else PathExistsError
        elif error is None and names in self.files:
            error = PathExistsError
        elif error is None:
            self.dirs.add(names)
        return error

    def remove(self, names: Names) -> type[FsError] | None:
        error = self.parent_error(names)
        if error is None and names not in self.files and names not in self.dirs:
            error = PathNotFoundError
        elif error is None and names in self.dirs:
            error = IsADirectoryPathError
        elif error is None:
            del self.files[names]
        return error

    def rmdir(self, names: Names) -> type[FsError] | None:
        error = self.parent_error(names)
        if error is None and names not in self.files and names not in self.dirs:
            error = PathNotFoundError
        elif error is None and names in self.files:
            error = NotADirectoryPathError
        elif error is None and self.children(names):
            error = DirectoryNotEmptyError
        elif error is None:
            self.dirs.discard(names)
        return error

    def remove_tree(self, names: Names) -> tuple[type[FsError] | None, int]:
        error = self.parent_error(names)
        if error is None and names not in self.files and names not in self.dirs:
            error = PathNotFoundError
        if error is not None:
            return error, 0
        doomed = self.below(names)
        for path in doomed:
            self.dirs.discard(path)
            self.files.pop(path, None)
        return None, len(doomed)

    def rename(self, source: Names, target: Names) -> type[FsError] | None:
        error = self.parent_error(source)
        if error is None and source not in self.files and source not in self.dirs:
            error = PathNotFoundError
        if error is None:
            error = self.parent_error(target)
        if error is not None or source == target:
            return error
        is_dir = source in self.dirs
        if is_dir and target[: len(source)] == source:
            return InvalidPathError
        if target in self.dirs and not is_dir:
            return IsADirectoryPathError
        if target in self.files and is_dir:
            return NotADirectoryPathError
        if target in self.dirs and self.children(target):
            return DirectoryNotEmptyError
        self.dirs.discard(target)
        self.files.pop(target, None)
        n = len(source)
        for path in self.below(source):
            moved = target + path[n:]
            if path in self.dirs:
                self.dirs.discard(path)
                self.dirs.add(moved)
            else:
                self.files[moved] = self.files.pop(path)
        return None


# ---------------------------------------------------------------- operations on both

Outcome = tuple[type[FsError] | None, object]  # the error class, or None and the result


@dataclasses.dataclass(frozen=True)
class WriteFile:
    names: Names
    data: bytes

    def on_fs(self, fs: Filesystem) -> object:
        fs.write_file(show(self.names), self.data)
        return None

    def on_model(self, model: Model) -> Outcome:
        return model.write_file(self.names, self.data), None


@dataclasses.dataclass(frozen=True)
class Write:
    names: Names
    offset: int
    data: bytes

    def on_fs(self, fs: Filesystem) -> object:
        return fs.write(show(self.names), self.offset, self.data)

    def on_model(self, model: Model) -> Outcome:
        error = model.write(self.names, self.offset, self.data)
        return error, None if error else len(self.data)


@dataclasses.dataclass(frozen=True)
class WriteThroughFile:
    """Open with "r+b" (raw or buffered), seek, write, read the write back, close."""

    names: Names
    offset: int
    data: bytes
    buffered: bool

    def on_fs(self, fs: Filesystem) -> object:
        f = fs.open(show(self.names), "r+b", buffering=-1 if self.buffered else 0)
        assert isinstance(f, io.RawIOBase | io.BufferedIOBase)
        with f:
            f.seek(self.offset)
            f.write(self.data)
            f.seek(self.offset)
            assert f.read(len(self.data)) == self.data
        return None

    def on_model(self, model: Model) -> Outcome:
        return model.write(self.names, self.offset, self.data), None


@dataclasses.dataclass(frozen=True)
class Truncate:
    names: Names
    size: int

    def on_fs(self, fs: Filesystem) -> object:
        fs.truncate(show(self.names), self.size)
        return None

    def on_model(self, model: Model) -> Outcome:
        return model.truncate(self.names, self.size), None


@dataclasses.dataclass(frozen=True)
class Create:
    names: Names
    exist_ok: bool

    def on_fs(self, fs: Filesystem) -> object:
        fs.create(show(self.names), exist_ok=self.exist_ok)
        return None

    def on_model(self, model: Model) -> Outcome:
        return model.create(self.names, self.exist_ok), None


@dataclasses.dataclass(frozen=True)
class Mkdir:
    names: Names
    parents: bool
    exist_ok: bool

    def on_fs(self, fs: Filesystem) -> object:
        fs.mkdir(show(self.names), parents=self.parents, exist_ok=self.exist_ok)
        return None

    def on_model(self, model: Model) -> Outcome:
        return model.mkdir(self.names, self.parents, self.exist_ok), None


@dataclasses.dataclass(frozen=True)
class Remove:
    names: Names

    def on_fs(self, fs: Filesystem) -> object:
        fs.remove(show(self.names))
        return None

    def on_model(self, model: Model) -> Outcome:
        return model.remove(self.names), None


@dataclasses.dataclass(frozen=True)
class Rmdir:
    names: Names

    def on_fs(self, fs: Filesystem) -> object:
        fs.rmdir(show(self.names))
        return None

    def on_model(self, model: Model) -> Outcome:
        return model.rmdir(self.names), None


@dataclasses.dataclass(frozen=True)
class RemoveTree:
    names: Names

    def on_fs(self, fs: Filesystem) -> object:
        return fs.remove_tree(show(self.names))

    def on_model(self, model: Model) -> Outcome:
        error, count = model.remove_tree(self.names)
        return error, None if error else count


@dataclasses.dataclass(frozen=True)
class Rename:
    source: Names
    target: Names

    def on_fs(self, fs: Filesystem) -> object:
        fs.rename(show(self.source), show(self.target))
        return None

    def on_model(self, model: Model) -> Outcome:
        return model.rename(self.source, self.target), None


Op = (
    WriteFile
    | Write
    | WriteThroughFile
    | Truncate
    | Create
    | Mkdir
    | Remove
    | Rmdir
    | RemoveTree
    | Rename
)

names_st = st.lists(st.sampled_from("abc"), min_size=1, max_size=2).map(tuple)
data_st = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 6 * BS), st.integers(1, 255)),
)
offset_st = st.one_of(st.integers(0, 2 * BS), st.integers(0, 14 * BS))
op_st: st.SearchStrategy[Op] = st.one_of(
    st.builds(WriteFile, names_st, data_st),
    st.builds(Write, names_st, offset_st, data_st),
    st.builds(WriteThroughFile, names_st, offset_st, data_st, st.booleans()),
    st.builds(Truncate, names_st, offset_st),
    st.builds(Create, names_st, st.booleans()),
    st.builds(Mkdir, names_st, st.booleans(), st.booleans()),
    st.builds(Remove, names_st),
    st.builds(Rmdir, names_st),
    st.builds(RemoveTree, names_st),
    st.builds(Rename, names_st, names_st),
)


def apply(fs: Filesystem, model: Model, op: Op) -> None:
    """Run `op` on both; the filesystem must fail exactly as the model says, or succeed."""
    got: type[FsError] | None = None
    result: object = None
    try:
        result = op.on_fs(fs)
    except FsError as exc:
        got = type(exc)
    expected, want = op.on_model(model)
    assert got is expected, f"{op}: raised {got}, the model says {expected}"
    assert result == want, f"{op}: returned {result!r}, the model says {want!r}"
    event(f"{type(op).__name__}: {'ok' if got is None else got.__name__}")


def observe(fs: Filesystem) -> tuple[frozenset[Names], dict[Names, bytes]]:
    """The filesystem's tree in the model's terms, with a few cross-checks on the way."""
    dirs: set[Names] = set()
    files: dict[Names, bytes] = {}
    for where, subdirs, names in fs.walk("/"):
        base: Names = tuple(part for part in where.split("/") if part)
        dirs.add(base)
        assert fs.listdir(where) == sorted(subdirs + names)
        for name in names:
            content = fs.read_file(show((*base, name)))
            assert fs.stat(show((*base, name))).size == len(content)
            files[(*base, name)] = content
    return frozenset(dirs), files


class Abort(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Anchored:
    state: AnchorState


class MarkingAnchor(MemoryAnchor):
    """A MemoryAnchor that puts every advance into the crash trace."""

    def __init__(self, crash: CrashDevice) -> None:
        super().__init__()
        self.crash = crash

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        super().advance(volume_id, expected, new)
        self.crash.mark(Anchored(new))


@dataclasses.dataclass(frozen=True)
class Acked:
    count: int  # transactions whose commit had returned


# ---------------------------------------------------------------- the machine


@settings(max_examples=max(150, settings().max_examples), stateful_step_count=50)
class FsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.device = MemoryDevice(BLOCKS, BS)
        self.anchor = MemoryAnchor()
        self.clock = Clock()
        self.fs = make_filesystem(self.device, SECRET, self.anchor, clock=self.clock)
        self.model = Model()
        self.steps = 0

    def _open(self) -> None:
        self.fs = open_filesystem(self.device, SECRET, self.anchor, clock=self.clock)

    def _check_fsck(self) -> None:
        report = self.fs.fsck()
        assert report.ok, report.problems
        assert report.files == len(self.model.files)
        assert report.directories == len(self.model.dirs)

    @rule(op=op_st)
    def operation(self, op: Op) -> None:
        apply(self.fs, self.model, op)

    @rule(ops=st.lists(op_st, min_size=1, max_size=5), abort=st.booleans())
    def transaction(self, ops: list[Op], abort: bool) -> None:
        inside = self.model.copy()
        generation = self.fs.store.generation
        try:
            with self.fs.transaction():
                for op in ops:
                    apply(self.fs, inside, op)
                assert observe(self.fs) == inside.snapshot()  # it sees its own changes
                if abort:
                    raise Abort
        except Abort:
            event("transaction aborted")
            assert self.fs.store.generation == generation
            return
        event("transaction committed")
        assert self.fs.store.generation in (generation, generation + 1)
        self.model = inside

    @rule()
    def reopen(self) -> None:
        self.fs.close()
        self._open()
        assert observe(self.fs) == self.model.snapshot()
        self._check_fsck()

    @rule(
        batches=st.lists(st.lists(op_st, min_size=1, max_size=3), min_size=1, max_size=2),
        data=st.data(),
    )
    def crash(self, batches: list[list[Op]], data: st.DataObject) -> None:
        volume = self.fs.store.volume_id
        anchored = self.anchor.read(volume)
        assert anchored is not None
        self.fs.close()
        # run each batch as one transaction on a recorded copy of the image, marking in
        # the trace when its commit returned
        recorder = CrashDevice(MemoryDevice.from_image(self.device.image(), BS))
        marking = MarkingAnchor(recorder)
        marking.advance(volume, None, anchored)
        fs = open_filesystem(recorder, SECRET, marking, clock=self.clock)
        models = [self.model]
        for batch in batches:
            after = models[-1].copy()
            with fs.transaction():
                for op in batch:
                    apply(fs, after, op)
            recorder.mark(Acked(len(models)))
            models.append(after)
        fs.close()
        # lose power somewhere in there
        points = list(recorder.crash_points())
        point = points[data.draw(st.integers(0, len(points) - 1), label="crash point")]
        states = list(point.states(bound=8))
        state = states[data.draw(st.integers(0, len(states) - 1), label="crash state")]
        anchor_state, acked = anchored, 0
        for mark in point.marks:
            if isinstance(mark, Anchored):
                anchor_state = mark.state
            elif isinstance(mark, Acked):
                acked = mark.count
        self.anchor = MemoryAnchor()
        self.anchor.advance(volume, None, anchor_state)
        self.device = state.device()
        self._open()
        # the last acknowledged commit, or the one in flight at the crash
        got = observe(self.fs)
        allowed = models[acked : acked + 2]
        matches = [k for k, model in enumerate(allowed) if got == model.snapshot()]
        assert matches, f"{state.describe()}: the tree is none of {len(allowed)} allowed"
        self.model = allowed[matches[-1]]
        event(f"crash: {'in-flight commit' if matches[-1] else 'last acknowledged commit'}")
        self._check_fsck()

    @invariant()
    def matches_the_model(self) -> None:
        self.steps += 1
        assert observe(self.fs) == self.model.snapshot()
        if self.steps % FSCK_EVERY == 0:
            self._check_fsck()

    def teardown(self) -> None:
        self.fs.close()


TestFsModel = FsMachine.TestCase
