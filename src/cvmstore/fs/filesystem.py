"""`Filesystem`: directories and files over a `SecureStore`, every change an atomic commit.

The store already makes a set of block writes atomic, durable, confidential and
authenticated, so the filesystem needs no journal: an operation (or a `transaction()` of
many) changes blocks, and one `store.commit()` makes all of them land together. Anything
that fails after the first change rolls back the store and every cache, so the tree is
always the last commit's.

Layout of the store's logical blocks: 0 the superblock (with the inode table's own inode),
1.. the block bitmap, then inode-table, directory, indirect and data blocks as allocated.
docs/format.md, part 2, has the bytes.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Self, TypeVar

from cvmstore.errors import (
    DeviceError,
    DeviceFullError,
    DirectoryNotEmptyError,
    FsCorruptError,
    FsError,
    InvalidPathError,
    IsADirectoryPathError,
    NotADirectoryPathError,
    PathExistsError,
    PathNotFoundError,
    StateError,
)
from cvmstore.fs.blockmap import BlockMap
from cvmstore.fs.directory import Directory
from cvmstore.fs.fsck import FsckReport, check_filesystem
from cvmstore.fs.layout import (
    INODE_SIZE,
    INODE_TABLE,
    ROOT,
    Inode,
    Kind,
    Superblock,
    encode_dir_block,
)
from cvmstore.fs.meta import BlockBitmap, MetaCache
from cvmstore.fs.paths import join, split_path
from cvmstore.integrity.store import SecureStore, StoreState

__all__ = ["DirEntry", "Filesystem", "Stat", "Usage"]

log = logging.getLogger("cvmstore.fs")

Clock = Callable[[], int]
T = TypeVar("T")
_CHUNK_BLOCKS = 256  # file I/O is done in runs of at most this many blocks (1 MiB at 4 KiB)
_META_SLACK = 16  # store blocks a change may need beyond its data (inode, bitmap, dir, ...)


@dataclass(frozen=True, slots=True)
class Stat:
    """What `stat()` reports. Times are nanoseconds since the Unix epoch."""

    ino: int
    kind: str  # "file" or "dir"
    size: int
    blocks: int
    ctime_ns: int
    mtime_ns: int

    @property
    def is_dir(self) -> bool:
        """Whether this is a directory."""
        return self.kind == "dir"


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of `scandir()`."""

    name: str
    stat: Stat


@dataclass(frozen=True, slots=True)
class Usage:
    """Space accounting (`df`)."""

    block_size: int
    total_blocks: int
    used_blocks: int
    free_blocks: int
    files: int
    directories: int
    store_free_blocks: int  # new copies the store can still take in this commit

    @property
    def free_bytes(self) -> int:
        """Bytes of file data that still fit."""
        return self.free_blocks * self.block_size


def _stat(ino: int, inode: Inode) -> Stat:
    kind = "dir" if inode.kind is Kind.DIR else "file"
    return Stat(ino, kind, inode.size, inode.blocks, inode.ctime_ns, inode.mtime_ns)


class Filesystem:
    """A tree of directories and files in a `SecureStore`; see the module docstring."""

    def __init__(self, store: SecureStore, clock: Clock) -> None:
        self.store = store
        self._clock = clock
        self._meta = MetaCache(store)
        self._dirs: dict[int, Directory] = {}
        self._sb = Superblock.decode(store.read(0))
        self._check_geometry()
        self._bitmap = self._new_bitmap()
        self._map = BlockMap(self._meta, self._allocate, self._free)
        self._sb_dirty = False
        self._in_txn = False
        self._doomed = False
        self._changes = 0
        self._closed = False
        # Which making of an inode number a file object refers to, since numbers are reused:
        # inode -> serial of its latest making, and what uncommitted makings replaced.
        self._serials: dict[int, int] = {}
        self._serial_undo: list[tuple[int, int]] = []
        self._next_serial = 1

    # ---------------------------------------------------------------- make and open

    @classmethod
    def format(cls, store: SecureStore, *, clock: Clock = time.time_ns) -> Self:
        """Make an empty filesystem (just the root directory) in a new store, and commit.

        Raises:
            DeviceError: the store is too small to hold a filesystem.
        """
        bs = store.block_size
        total = store.geometry.logical
        bitmap_blocks = -(-total // (bs * 8))
        if total < bitmap_blocks + 4:
            raise DeviceError(f"{total} blocks are too few for a filesystem")
        now = clock()
        first_free = 1 + bitmap_blocks
        sb = Superblock(
            block_size=bs,
            total_blocks=total,
            bitmap_start=1,
            bitmap_blocks=bitmap_blocks,
            inode_slots=1,  # slot 0 of the table is unused: inode 0 is the table itself
            free_inode_head=0,
            used_blocks=first_free,
            live_inodes=0,
            created_ns=now,
            table=Inode(Kind.FILE, ctime_ns=now, mtime_ns=now),
        )
        bitmaps = bytearray(bitmap_blocks * bs)
        for block in range(first_free):
            bitmaps[block >> 3] |= 1 << (block & 7)
        store.write_blocks(0, sb.encode() + bytes(bitmaps))
        fs = cls(store, clock)
        if fs._new_inode(Kind.DIR, parent=ROOT) != ROOT:
            raise AssertionError("the first inode made is the root")
        fs._commit()
        return fs

    @classmethod
    def mount(cls, store: SecureStore, *, clock: Clock = time.time_ns) -> Self:
        """Open the filesystem in `store`.

        Raises:
            FsCorruptError: the store holds no filesystem.
            UnsupportedVersionError: a filesystem version this code cannot read.
        """
        return cls(store, clock)

    def _check_geometry(self) -> None:
        sb = self._sb
        if sb.total_blocks != self.store.geometry.logical or sb.bitmap_start != 1:
            raise FsCorruptError("the filesystem superblock does not match the store's size")
        if sb.bitmap_blocks != -(-sb.total_blocks // (sb.block_size * 8)):
            raise FsCorruptError("the filesystem superblock has a wrong bitmap size")

    def _new_bitmap(self) -> BlockBitmap:
        sb = self._sb
        first = sb.bitmap_start + sb.bitmap_blocks
        return BlockBitmap(self._meta, sb.bitmap_start, sb.bitmap_blocks, sb.total_blocks, first)

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def transaction(self) -> Iterator[Self]:
        """Make every operation inside the block one atomic commit.

        If the block raises, nothing it did is kept. Nested transactions join the outer
        one. An operation that fails inside the block before changing anything (a missing
        path, a name too long, ...) leaves the transaction usable; one that fails after
        changing something (no space, I/O) rolls the whole transaction back, and the rest
        of the block then gets `StateError`.
        """
        self._check_open()
        if self._in_txn:
            yield self
            return
        self._in_txn, self._doomed = True, False
        try:
            yield self
        except BaseException:
            self._in_txn = self._doomed = False
            self._rollback()
            raise
        self._in_txn = False
        if self._doomed:
            self._doomed = False
            raise StateError("the transaction was rolled back after an operation in it failed")
        try:
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def _run(self, action: Callable[[], T]) -> T:
        """Run one operation: commit it alone, or as part of the open transaction."""
        self._check_open()
        if self._doomed:
            raise StateError("the transaction was rolled back after an operation in it failed")
        before = self._changes
        try:
            result = action()
            if not self._in_txn:
                self._commit()
            return result
        except BaseException:
            if self._changes != before or not self._in_txn:
                self._rollback()
                self._doomed = self._in_txn
            raise

    def _touch(self) -> None:
        self._changes += 1

    def _commit(self) -> None:
        for directory in self._dirs.values():
            self._encode_dir(directory)
        if self._sb_dirty:
            self._meta.put(0, self._sb.encode())
            self._sb_dirty = False
        self._meta.write_back()
        self.store.commit()
        self._serial_undo.clear()

    def _rollback(self) -> None:
        for ino, serial in reversed(self._serial_undo):
            self._serials[ino] = serial
        self._serial_undo.clear()
        self._meta.drop()
        self._dirs.clear()
        self._sb_dirty = False
        if self.store.state is StoreState.OPEN:
            self.store.abort()
            self._sb = Superblock.decode(self.store.read(0))
            self._bitmap = self._new_bitmap()

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("the filesystem is closed")
        if self.store.state is not StoreState.OPEN:
            raise StateError(f"the store is {self.store.state.value}; reopen it")

    def close(self) -> None:
        """Release the filesystem and close its store (anchoring any batched commits)."""
        if self._closed:
            return
        if self._in_txn:
            raise StateError("close() inside a transaction")
        self._closed = True
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- space

    def _allocate(self, count: int) -> list[int]:
        self._touch()
        free = self._sb.total_blocks - self._sb.used_blocks
        blocks = self._bitmap.allocate(count, free)
        self._sb.used_blocks += count
        self._sb_dirty = True
        return blocks

    def _free(self, blocks: list[int]) -> None:
        if not blocks:
            return
        self._touch()
        for block in blocks:
            self._bitmap.set(block, False)
            self._meta.forget(block)
            self.store.discard(block)
        self._sb.used_blocks -= len(blocks)
        self._sb_dirty = True

    def _need_room(self, new_blocks: int, written: int) -> None:
        """Refuse, before any change, an operation that cannot fit.

        `new_blocks` are logical blocks it will allocate; `written` are the blocks it will
        write, new or not: each needs a free store block until the commit frees the old
        copy.
        """
        free = self._sb.total_blocks - self._sb.used_blocks
        if new_blocks > free:
            raise DeviceFullError(
                f"not enough space: {new_blocks} blocks needed, {free} free "
                f"({free * self._sb.block_size} bytes)"
            )
        copies = written + self._meta.dirty_count + _META_SLACK
        if copies > self.store.free_blocks:
            raise DeviceFullError(
                f"not enough space for this commit: it needs about {copies} new store "
                f"blocks, {self.store.free_blocks} are free (commit smaller changes)"
            )

    def usage(self) -> Usage:
        """Blocks used and free, and how many files and directories exist."""
        self._check_open()
        sb = self._sb
        dirs = sum(1 for _ in self._walk_inodes() if _[1].kind is Kind.DIR)
        return Usage(
            block_size=sb.block_size,
            total_blocks=sb.total_blocks,
            used_blocks=sb.used_blocks,
            free_blocks=sb.total_blocks - sb.used_blocks,
            files=sb.live_inodes - dirs,
            directories=dirs,
            store_free_blocks=self.store.free_blocks,
        )

    # ---------------------------------------------------------------- inodes

    def _inode_block(self, ino: int) -> tuple[int, int]:
        byte = ino * INODE_SIZE
        bs = self._sb.block_size
        (block,) = self._map.lookup(self._sb.table, byte // bs, 1)
        if block == 0 or ino >= self._sb.inode_slots:
            raise FsCorruptError(f"inode {ino} is outside the inode table")
        return block, byte % bs

    def _inode(self, ino: int) -> Inode:
        if ino == INODE_TABLE:
            return self._sb.table
        block, offset = self._inode_block(ino)
        return Inode.decode(self._meta.get(block), offset, ino)

    def _put_inode(self, ino: int, inode: Inode) -> None:
        self._touch()
        if ino == INODE_TABLE:
            self._sb_dirty = True
            return
        block, offset = self._inode_block(ino)
        inode.encode_into(self._meta.get(block), offset)
        self._meta.mark_dirty(block)

    def _new_inode(self, kind: Kind, parent: int) -> int:
        self._touch()
        sb = self._sb
        now = self._clock()
        if sb.free_inode_head:
            ino = sb.free_inode_head
            sb.free_inode_head = self._inode(ino).next_free
        else:
            ino = sb.inode_slots
            sb.inode_slots += 1
            per_block = sb.block_size // INODE_SIZE
            fb = ino // per_block
            if self._map.lookup(sb.table, fb, 1) == [0]:
                (block,) = self._allocate(1)
                self._meta.fresh(block)
                self._map.assign(sb.table, fb, [block])
                sb.table.blocks += 1
                sb.table.size = (fb + 1) * sb.block_size
        sb.live_inodes += 1
        self._sb_dirty = True
        self._serial_undo.append((ino, self._serials.get(ino, 0)))
        self._serials[ino] = self._next_serial
        self._next_serial += 1
        self._put_inode(ino, Inode(kind, ctime_ns=now, mtime_ns=now, parent=parent))
        return ino

    def _drop_inode(self, ino: int, inode: Inode) -> None:
        self._map.cut(inode, 0)
        sb = self._sb
        self._put_inode(ino, Inode(Kind.FREE, next_free=sb.free_inode_head))
        sb.free_inode_head = ino
        sb.live_inodes -= 1
        self._sb_dirty = True
        self._dirs.pop(ino, None)

    # ---------------------------------------------------------------- directories

    def _dir(self, ino: int) -> Directory:
        directory = self._dirs.get(ino)
        if directory is None:
            inode = self._inode(ino)
            if inode.kind is not Kind.DIR:
                raise FsCorruptError(f"inode {ino} is used as a directory but is not one")
            count = inode.size // self._sb.block_size
            blocks = self._map.lookup(inode, 0, count)
            if 0 in blocks:
                raise FsCorruptError(f"directory inode {ino} has a hole")
            contents = [bytes(self._meta.get(block)) for block in blocks]
            directory = Directory.from_blocks(ino, self._sb.block_size, contents)
            self._dirs[ino] = directory
        return directory

    def _encode_dir(self, directory: Directory) -> None:
        if not directory.changed:
            return
        inode = self._inode(directory.ino)
        blocks = self._map.lookup(inode, 0, len(directory.blocks))
        for position in sorted(directory.changed):
            self._meta.put(
                blocks[position],
                encode_dir_block(directory.blocks[position], self._sb.block_size),
            )
        directory.changed.clear()

    def _link(self, parent: int, name: bytes, ino: int, kind: Kind) -> None:
        """Add `name -> ino` to directory `parent` (the name is known to be absent)."""
        self._touch()
        directory = self._dir(parent)
        inode = self._inode(parent)
        if directory.add(name, ino, kind):
            position = len(directory.blocks)
            (block,) = self._allocate(1)
            self._meta.fresh(block)
            self._map.assign(inode, position, [block])
            inode.blocks += 1
            inode.size = (position + 1) * self._sb.block_size
            directory.grow()
            directory.add(name, ino, kind)
        inode.mtime_ns = self._clock()
        self._put_inode(parent, inode)

    def _unlink_name(self, parent: int, name: bytes) -> None:
        self._touch()
        directory = self._dir(parent)
        directory.remove(name)
        inode = self._inode(parent)
        empty = directory.trailing_empty()
        if empty:
            keep = len(directory.blocks) - empty
            directory.shrink(empty)
            self._map.cut(inode, keep)
            inode.size = keep * self._sb.block_size
        inode.mtime_ns = self._clock()
        self._put_inode(parent, inode)

    # ---------------------------------------------------------------- path resolution

    def _resolve(self, names: list[bytes]) -> tuple[int, Kind]:
        ino, kind = ROOT, Kind.DIR
        for depth, name in enumerate(names):
            if kind is not Kind.DIR:
                raise NotADirectoryPathError(f"{join(names[:depth])} is not a directory")
            found = self._dir(ino).lookup(name)
            if found is None:
                raise PathNotFoundError(f"no such file or directory: {join(names[: depth + 1])}")
            ino, kind = found
        return ino, kind

    def _parent_of(self, path: str) -> tuple[int, bytes, tuple[int, Kind] | None, list[bytes]]:
        """(parent directory inode, last name, what the name points at or None, all names)."""
        names = split_path(path)
        if not names:
            raise InvalidPathError("the root directory cannot be used here")
        parent, kind = self._resolve(names[:-1])
        if kind is not Kind.DIR:
            raise NotADirectoryPathError(f"{join(names[:-1])} is not a directory")
        return parent, names[-1], self._dir(parent).lookup(names[-1]), names

    def _file(self, path: str) -> tuple[int, Inode]:
        names = split_path(path)
        ino, kind = self._resolve(names)
        if kind is Kind.DIR:
            raise IsADirectoryPathError(f"{join(names)} is a directory")
        return ino, self._inode(ino)

    # ---------------------------------------------------------------- queries

    def stat(self, path: str) -> Stat:
        """Type, size and times of `path`.

        Raises:
            PathNotFoundError, NotADirectoryPathError: the path does not lead anywhere.
        """
        self._check_open()
        ino, _ = self._resolve(split_path(path))
        return _stat(ino, self._inode(ino))

    def exists(self, path: str) -> bool:
        """Whether `path` names a file or directory."""
        try:
            self.stat(path)
        except (PathNotFoundError, NotADirectoryPathError):
            return False
        return True

    def listdir(self, path: str = "/") -> list[str]:
        """The names in a directory, sorted."""
        self._check_open()
        names = split_path(path)
        ino, kind = self._resolve(names)
        if kind is not Kind.DIR:
            raise NotADirectoryPathError(f"{join(names)} is not a directory")
        return sorted(name.decode("utf-8") for name in self._dir(ino).names())

    def scandir(self, path: str = "/") -> list[DirEntry]:
        """The entries of a directory with their `Stat`, sorted by name."""
        self._check_open()
        names = split_path(path)
        ino, kind = self._resolve(names)
        if kind is not Kind.DIR:
            raise NotADirectoryPathError(f"{join(names)} is not a directory")
        entries = [
            DirEntry(name.decode("utf-8"), _stat(child, self._inode(child)))
            for name, child, _ in self._dir(ino).items()
        ]
        return sorted(entries, key=lambda entry: entry.name)

    def walk(self, path: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like `os.walk`, top-down: (directory path, subdirectory names, file names)."""
        self._check_open()
        names = split_path(path)
        ino, kind = self._resolve(names)
        if kind is not Kind.DIR:
            raise NotADirectoryPathError(f"{join(names)} is not a directory")
        stack = [(join(names), ino)]
        while stack:
            where, ino = stack.pop()
            items = sorted(self._dir(ino).items())
            dirs = [name.decode("utf-8") for name, _, kind in items if kind is Kind.DIR]
            files = [name.decode("utf-8") for name, _, kind in items if kind is Kind.FILE]
            yield where, dirs, files
            base = where.rstrip("/")
            stack.extend(
                (f"{base}/{name.decode('utf-8')}", child)
                for name, child, kind in reversed(items)
                if kind is Kind.DIR
            )

    def _walk_inodes(self) -> Iterator[tuple[int, Inode]]:
        for ino in range(1, self._sb.inode_slots):
            inode = self._inode(ino)
            if inode.kind is not Kind.FREE:
                yield ino, inode

    # ---------------------------------------------------------------- reading

    def read_file(self, path: str) -> bytes:
        """The whole content of a file."""
        self._check_open()
        _, inode = self._file(path)
        return self._read(inode, 0, inode.size)

    def read(self, path: str, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset` (fewer at the end of the file)."""
        self._check_open()
        _, inode = self._file(path)
        return self._read(inode, offset, size)

    def _read(self, inode: Inode, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, inode.size)
        if end <= offset:
            return b""
        bs = self._sb.block_size
        first, last = offset // bs, (end - 1) // bs
        parts: list[bytes] = []
        fb = first
        while fb <= last:
            count = min(last + 1 - fb, _CHUNK_BLOCKS)
            blocks = self._map.lookup(inode, fb, count)
            k = 0
            while k < count:
                run = 1
                if blocks[k] == 0:
                    while k + run < count and blocks[k + run] == 0:
                        run += 1
                    parts.append(bytes(run * bs))
                else:
                    while k + run < count and blocks[k + run] == blocks[k] + run:
                        run += 1
                    parts.append(self.store.read_blocks(blocks[k], run))
                k += run
            fb += count
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        start = offset - first * bs
        if start == 0 and len(data) == end - offset:
            return data  # whole blocks: no copy
        return data[start : start + end - offset]

    # ---------------------------------------------------------------- writing

    def write_file(self, path: str, data: bytes, *, parents: bool = False) -> None:
        """Create or replace a file's whole content, atomically.

        An existing file keeps its blocks where the new content covers them (so a state
        file rewritten again and again reuses its place), then is cut to the new size.
        """

        def action() -> None:
            parent, name, found, names = self._parent_of_creating(path, parents)
            ino = self._open_for_write(parent, name, found, names, exclusive=False)
            inode = self._inode(ino)
            self._check_write_room(inode, 0, len(data))
            self._write(ino, inode, 0, data)
            self._truncate(ino, inode, len(data))

        self._run(action)

    def write_from(
        self,
        path: str,
        source: IO[bytes],
        size: int,
        *,
        parents: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Create or replace a file with exactly `size` bytes read from `source`, atomically.

        The space is checked before anything is written, so a file that does not fit
        changes nothing, not even free blocks of the image. `progress` gets the bytes
        written so far.

        Raises:
            DeviceFullError: the file does not fit.
            FsError: `source` ended before `size` bytes.
        """
        chunk = _CHUNK_BLOCKS * self._sb.block_size

        def action() -> None:
            parent, name, found, names = self._parent_of_creating(path, parents)
            ino = self._open_for_write(parent, name, found, names, exclusive=False)
            inode = self._inode(ino)
            self._check_write_room(inode, 0, size)
            done = 0
            while done < size:
                data = source.read(min(chunk, size - done))
                if not data:
                    raise FsError(f"the source ended after {done} of {size} bytes")
                self._write(ino, inode, done, data)
                done += len(data)
                if progress is not None:
                    progress(done)
            self._truncate(ino, inode, size)

        self._run(action)

    def read_to(
        self, path: str, sink: IO[bytes], *, progress: Callable[[int], None] | None = None
    ) -> int:
        """Copy a whole file to `sink` in large chunks; return its size."""
        self._check_open()
        _, inode = self._file(path)
        chunk = _CHUNK_BLOCKS * self._sb.block_size
        done = 0
        while done < inode.size:
            data = self._read(inode, done, chunk)
            sink.write(data)
            done += len(data)
            if progress is not None:
                progress(done)
        return done

    def write(self, path: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset` of an existing file (past the end leaves a hole)."""

        def action() -> int:
            ino, inode = self._file(path)
            self._check_write_room(inode, offset, len(data))
            self._write(ino, inode, offset, data)
            return len(data)

        return self._run(action)

    def create(self, path: str, *, exist_ok: bool = False) -> None:
        """Make an empty file (with `exist_ok`, leave an existing file as it is)."""

        def action() -> None:
            parent, name, found, names = self._parent_of_creating(path, False)
            if found is not None:
                if found[1] is Kind.DIR:
                    raise IsADirectoryPathError(f"{join(names)} is a directory")
                if not exist_ok:
                    raise PathExistsError(f"{join(names)} already exists")
                return
            self._need_room(2, 2)
            self._link(parent, name, self._new_inode(Kind.FILE, parent), Kind.FILE)

        self._run(action)

    def truncate(self, path: str, size: int) -> None:
        """Cut or extend (with a hole) a file to `size` bytes."""
        if size < 0:
            raise ValueError("a size cannot be negative")

        def action() -> None:
            ino, inode = self._file(path)
            self._need_room(0, 2)
            self._truncate(ino, inode, size)

        self._run(action)

    def _parent_of_creating(
        self, path: str, parents: bool
    ) -> tuple[int, bytes, tuple[int, Kind] | None, list[bytes]]:
        if parents:
            names = split_path(path)
            self._make_dirs(names[:-1])
        return self._parent_of(path)

    def _open_for_write(
        self,
        parent: int,
        name: bytes,
        found: tuple[int, Kind] | None,
        names: list[bytes],
        *,
        exclusive: bool,
    ) -> int:
        if found is None:
            self._need_room(2, 2)
            ino = self._new_inode(Kind.FILE, parent)
            self._link(parent, name, ino, Kind.FILE)
            return ino
        if found[1] is Kind.DIR:
            raise IsADirectoryPathError(f"{join(names)} is a directory")
        if exclusive:
            raise PathExistsError(f"{join(names)} already exists")
        return found[0]

    def _check_write_room(self, inode: Inode, offset: int, size: int) -> None:
        if size == 0:
            return
        bs = self._sb.block_size
        first, last = offset // bs, (offset + size - 1) // bs
        if last >= self._map.max_blocks:
            raise FsError(f"a file cannot grow past {self._map.max_blocks * bs} bytes")
        allocated = min(inode.size, (last + 1) * bs)
        mapped_upper = max(0, -(-allocated // bs) - first)  # blocks that may already exist
        count = last + 1 - first
        indirect = self._map.indirect_needed(first, count)
        self._need_room(count - min(count, mapped_upper) + indirect, count + indirect)

    def _write(self, ino: int, inode: Inode, offset: int, data: bytes | memoryview) -> None:
        if not data:
            return
        self._touch()
        bs = self._sb.block_size
        view = memoryview(data)
        end = offset + len(view)
        fb = offset // bs
        last = (end - 1) // bs
        while fb <= last:
            count = min(last + 1 - fb, _CHUNK_BLOCKS)
            blocks = self._map.lookup(inode, fb, count)
            chunk_start = fb * bs
            chunk_end = chunk_start + count * bs
            lo, hi = max(offset, chunk_start), min(end, chunk_end)
            if lo == chunk_start and hi == chunk_end:
                buf = bytes(view[lo - offset : hi - offset])  # whole blocks: one copy
            else:
                buf = self._merge_partial(
                    blocks, chunk_start, lo, hi, view[lo - offset : hi - offset]
                )
            holes = [k for k, block in enumerate(blocks) if block == 0]
            if holes:
                self._fill_holes(inode, fb, blocks, holes)
            k = 0
            while k < count:
                run = 1
                while k + run < count and blocks[k + run] == blocks[k] + run:
                    run += 1
                self.store.write_blocks(blocks[k], buf[k * bs : (k + run) * bs])
                k += run
            fb += count
        inode.size = max(inode.size, end)
        inode.mtime_ns = self._clock()
        self._put_inode(ino, inode)

    def _merge_partial(
        self, blocks: list[int], chunk_start: int, lo: int, hi: int, data: memoryview
    ) -> bytes:
        """The chunk's blocks with `data` at `lo..hi`, keeping the bytes around it."""
        bs = self._sb.block_size
        buf = bytearray(len(blocks) * bs)
        chunk_end = chunk_start + len(buf)
        if lo > chunk_start and blocks[0]:
            buf[:bs] = self.store.read(blocks[0])
        if hi < chunk_end and blocks[-1] and (len(blocks) > 1 or lo == chunk_start):
            buf[-bs:] = self.store.read(blocks[-1])
        buf[lo - chunk_start : hi - chunk_start] = data
        return bytes(buf)

    def _fill_holes(self, inode: Inode, fb: int, blocks: list[int], holes: list[int]) -> None:
        """Give file blocks `fb + k` (k in `holes`) new blocks, assigned in runs."""
        fresh = self._allocate(len(holes))
        for k, block in zip(holes, fresh, strict=True):
            blocks[k] = block
        inode.blocks += len(holes)
        start = 0
        while start < len(holes):
            end = start + 1
            while end < len(holes) and holes[end] == holes[end - 1] + 1:
                end += 1
            first = holes[start]
            self._map.assign(inode, fb + first, blocks[first : first + end - start])
            start = end

    def _truncate(self, ino: int, inode: Inode, size: int) -> None:
        bs = self._sb.block_size
        if size < inode.size:
            keep = -(-size // bs)
            self._map.cut(inode, keep)
            if size % bs:
                (block,) = self._map.lookup(inode, size // bs, 1)
                if block:
                    data = bytearray(self.store.read(block))
                    data[size % bs :] = bytes(bs - size % bs)
                    self.store.write_blocks(block, bytes(data))
        elif size == inode.size:
            return
        inode.size = size
        inode.mtime_ns = self._clock()
        self._put_inode(ino, inode)

    # ---------------------------------------------------------------- directories and names

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Make a directory (with `parents`, also the missing ones above it)."""

        def action() -> None:
            names = split_path(path)
            if parents:
                self._make_dirs(names[:-1])
            parent, name, found, names = self._parent_of(path)
            if found is not None:
                if found[1] is Kind.DIR and (exist_ok or parents):
                    return
                raise PathExistsError(f"{join(names)} already exists")
            self._need_room(2, 2)
            self._link(parent, name, self._new_inode(Kind.DIR, parent), Kind.DIR)

        self._run(action)

    def _make_dirs(self, names: list[bytes]) -> None:
        ino = ROOT
        for depth, name in enumerate(names):
            found = self._dir(ino).lookup(name)
            if found is None:
                self._need_room(2, 2)
                child = self._new_inode(Kind.DIR, ino)
                self._link(ino, name, child, Kind.DIR)
                ino = child
            elif found[1] is Kind.DIR:
                ino = found[0]
            else:
                raise NotADirectoryPathError(f"{join(names[: depth + 1])} is not a directory")

    def remove(self, path: str) -> None:
        """Delete a file (`unlink`)."""

        def action() -> None:
            parent, name, found, names = self._parent_of(path)
            if found is None:
                raise PathNotFoundError(f"no such file or directory: {join(names)}")
            if found[1] is Kind.DIR:
                raise IsADirectoryPathError(f"{join(names)} is a directory (use rmdir)")
            self._unlink_name(parent, name)
            self._drop_inode(found[0], self._inode(found[0]))

        self._run(action)

    unlink = remove

    def rmdir(self, path: str) -> None:
        """Delete an empty directory."""

        def action() -> None:
            parent, name, found, names = self._parent_of(path)
            if found is None:
                raise PathNotFoundError(f"no such file or directory: {join(names)}")
            if found[1] is not Kind.DIR:
                raise NotADirectoryPathError(f"{join(names)} is not a directory")
            if len(self._dir(found[0])):
                raise DirectoryNotEmptyError(f"{join(names)} is not empty")
            self._unlink_name(parent, name)
            self._drop_inode(found[0], self._inode(found[0]))

        self._run(action)

    def remove_tree(self, path: str) -> int:
        """Delete a file, or a directory and everything below it; return entries removed."""

        def action() -> int:
            parent, name, found, names = self._parent_of(path)
            if found is None:
                raise PathNotFoundError(f"no such file or directory: {join(names)}")
            self._unlink_name(parent, name)
            return self._drop_tree(*found)

        return self._run(action)

    def _drop_tree(self, ino: int, kind: Kind) -> int:
        removed = 1
        if kind is Kind.DIR:
            for _, child, child_kind in self._dir(ino).items():
                removed += self._drop_tree(child, child_kind)
        self._drop_inode(ino, self._inode(ino))
        return removed

    def rename(self, source: str, target: str) -> None:
        """Move `source` to `target` atomically, replacing a file or empty directory there."""

        def action() -> None:
            s_parent, s_name, s_found, s_names = self._parent_of(source)
            if s_found is None:
                raise PathNotFoundError(f"no such file or directory: {join(s_names)}")
            t_parent, t_name, t_found, t_names = self._parent_of(target)
            ino, kind = s_found
            if s_names == t_names:
                return
            if kind is Kind.DIR and t_names[: len(s_names)] == s_names:
                raise InvalidPathError(f"cannot move {join(s_names)} into itself")
            if t_found is not None:
                t_ino, t_kind = t_found
                if kind is Kind.FILE and t_kind is Kind.DIR:
                    raise IsADirectoryPathError(f"{join(t_names)} is a directory")
                if kind is Kind.DIR and t_kind is Kind.FILE:
                    raise NotADirectoryPathError(f"{join(t_names)} is not a directory")
                if t_kind is Kind.DIR and len(self._dir(t_ino)):
                    raise DirectoryNotEmptyError(f"{join(t_names)} is not empty")
            self._need_room(1, 6)
            if t_found is not None:
                self._unlink_name(t_parent, t_name)
                self._drop_inode(t_found[0], self._inode(t_found[0]))
            self._unlink_name(s_parent, s_name)
            self._link(t_parent, t_name, ino, kind)
            if kind is Kind.DIR and s_parent != t_parent:
                inode = self._inode(ino)
                inode.parent = t_parent
                self._put_inode(ino, inode)

        self._run(action)

    # ---------------------------------------------------------------- file objects

    def open(self, path: str, mode: str = "rb", *, buffering: int = -1) -> io.IOBase:
        """Open a file as a Python file object (binary modes: r, r+, w, w+, a, a+, x, x+).

        Every write through it is one commit, or part of the open transaction; with the
        default buffering, writes are gathered in a buffer (1 MiB) first, so a commit happens
        only when the buffer fills, on `flush()` and on `close()`.
        """
        from cvmstore.fs.fileobj import open_file

        return open_file(self, path, mode, buffering)

    # ---------------------------------------------------------------- inode-level access

    def _file_by_ino(self, ino: int) -> Inode:
        inode = self._inode(ino)
        if inode.kind is not Kind.FILE:
            raise PathNotFoundError(f"the file (inode {ino}) was removed")
        return inode

    def _read_ino(self, ino: int, offset: int, size: int) -> bytes:
        self._check_open()
        return self._read(self._file_by_ino(ino), offset, size)

    def _write_ino(self, ino: int, offset: int, data: bytes | memoryview) -> int:
        def action() -> int:
            inode = self._file_by_ino(ino)
            self._check_write_room(inode, offset, len(data))
            self._write(ino, inode, offset, data)
            return len(data)

        return self._run(action)

    def _truncate_ino(self, ino: int, size: int) -> None:
        def action() -> None:
            inode = self._file_by_ino(ino)
            self._need_room(0, 2)
            self._truncate(ino, inode, size)

        self._run(action)

    def _size_ino(self, ino: int) -> int:
        self._check_open()
        return self._file_by_ino(ino).size

    def _open_ino(self, path: str, *, create: bool, exclusive: bool, truncate: bool) -> int:
        def action() -> int:
            if not create:
                ino, inode = self._file(path)
            else:
                parent, name, found, names = self._parent_of(path)
                ino = self._open_for_write(parent, name, found, names, exclusive=exclusive)
                inode = self._inode(ino)
            if truncate and inode.size:
                self._truncate(ino, inode, 0)
            return ino

        return self._run(action)

    # ---------------------------------------------------------------- check

    def fsck(self, progress: Callable[[int, int], None] | None = None) -> FsckReport:
        """Verify the store (every reachable block) and every piece of filesystem metadata.

        `progress`, if given, gets (done, total) as the store's blocks are verified.
        """
        self._check_open()
        if self._in_txn:
            raise StateError("fsck() inside a transaction")
        return check_filesystem(self, progress)
