"""Filesystem behaviour: every operation and its errors, space, times, transactions, files.

Most tests use 512-byte blocks: an indirect block then holds 64 pointers, so the single
indirect tree covers file blocks 12..75 and the double indirect tree starts at file block 76
(byte 38,912), well within a small device.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from cvmstore.block.memory import MemoryDevice
from cvmstore.errors import (
    DeviceFullError,
    DirectoryNotEmptyError,
    InvalidPathError,
    IsADirectoryPathError,
    NameTooLongError,
    NotADirectoryPathError,
    PathExistsError,
    PathNotFoundError,
    StateError,
)
from cvmstore.fs import Filesystem, Stat, make_filesystem, open_filesystem
from cvmstore.fs.fileobj import FsFile
from cvmstore.integrity import MemoryAnchor

SECRET = bytes(range(32))
BS = 512
PER_BLOCK = BS // 8  # pointers per indirect block
DIRECT = 12
SINGLE_END = DIRECT + PER_BLOCK  # first file block of the double indirect tree (76)


class FakeClock:
    """A clock that ticks by one microsecond every time it is read."""

    def __init__(self, start: int = 1_700_000_000_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1000
        return self.now


class Env:
    """A device, an anchor, a clock and the filesystem open on them."""

    def __init__(self, blocks: int = 512, block_size: int = BS) -> None:
        self.device = MemoryDevice(blocks, block_size)
        self.anchor = MemoryAnchor()
        self.clock = FakeClock()
        self.fs: Filesystem = make_filesystem(self.device, SECRET, self.anchor, clock=self.clock)

    def reopen(self) -> Filesystem:
        self.fs.close()
        self.fs = open_filesystem(self.device, SECRET, self.anchor, clock=self.clock)
        return self.fs


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.fs.close()


@pytest.fixture
def fs(env: Env) -> Filesystem:
    return env.fs


def pattern(size: int, seed: int = 0) -> bytes:
    """`size` bytes that differ at every position (so a misplaced block shows)."""
    return bytes((i * 7 + seed + (i >> 8) * 13) % 251 for i in range(size))


def tree(fs: Filesystem) -> dict[str, object]:
    """Everything observable: every path with its stat, and each file's content."""
    out: dict[str, object] = {}
    for where, dirs, files in fs.walk("/"):
        base = where.rstrip("/")
        out[where] = ("dir", fs.stat(where), sorted(dirs), sorted(files))
        for name in files:
            path = f"{base}/{name}"
            out[path] = ("file", fs.stat(path), fs.read_file(path))
    return out


def buffered(fs: Filesystem, path: str, mode: str, **kwargs: int) -> io.BufferedIOBase:
    f = fs.open(path, mode, **kwargs)
    assert isinstance(f, io.BufferedIOBase)
    return f


def raw(fs: Filesystem, path: str, mode: str) -> FsFile:
    f = fs.open(path, mode, buffering=0)
    assert isinstance(f, FsFile)
    return f


# ---------------------------------------------------------------- create, write, read


def test_fresh_filesystem_is_an_empty_root(fs: Filesystem) -> None:
    st = fs.stat("/")
    assert st.is_dir
    assert st.kind == "dir"
    assert st.size == 0
    assert st.ino == 1
    assert fs.listdir("/") == [] == fs.listdir("")
    assert list(fs.walk()) == [("/", [], [])]
    assert fs.exists("/")
    assert not fs.exists("/nothing")
    assert fs.fsck().ok


def test_create_and_write_file_roundtrip(fs: Filesystem) -> None:
    fs.create("/empty")
    assert fs.read_file("/empty") == b""
    empty = fs.stat("/empty")
    assert isinstance(empty, Stat)
    assert (empty.kind, empty.size, empty.blocks, empty.is_dir) == ("file", 0, 0, False)
    assert empty.ino not in (0, 1)  # the inode table and the root
    fs.write_file("/f", b"hello world")
    assert fs.read_file("/f") == b"hello world"
    assert fs.read("/f", 6, 100) == b"world"
    assert fs.read("/f", 11, 5) == b""
    assert fs.read("/f", 500, 5) == b""
    assert fs.read("/f", 0, 0) == b""
    st = fs.stat("/f")
    assert (st.kind, st.size, st.blocks, st.is_dir) == ("file", 11, 1, False)
    with pytest.raises(PathExistsError):
        fs.create("/f")
    fs.create("/f", exist_ok=True)  # leaves the content alone
    assert fs.read_file("/f") == b"hello world"
    with pytest.raises(ValueError, match="negative"):
        fs.read("/f", -1, 3)
    with pytest.raises(ValueError, match="negative"):
        fs.read("/f", 0, -3)


def test_write_file_replaces_and_shrinks(fs: Filesystem) -> None:
    fs.write_file("/f", pattern(5000))
    assert fs.stat("/f").blocks == 10
    fs.write_file("/f", b"short")
    assert fs.read_file("/f") == b"short"
    assert fs.stat("/f").blocks == 1
    assert fs.stat("/f").size == 5
    fs.write_file("/f", b"")
    assert fs.read_file("/f") == b""
    assert fs.stat("/f").blocks == 0
    assert fs.fsck().ok


def test_write_at_offsets_partial_overwrite_append_and_holes(fs: Filesystem) -> None:
    base = pattern(3000)
    fs.write_file("/f", base)
    # partial overwrite inside one block and across a block boundary
    assert fs.write("/f", 10, b"ABCDE") == 5
    assert fs.write("/f", 510, b"xyzw") == 4
    expected = bytearray(base)
    expected[10:15] = b"ABCDE"
    expected[510:514] = b"xyzw"
    assert fs.read_file("/f") == bytes(expected)
    # append at the end
    fs.write("/f", 3000, b"tail")
    expected += b"tail"
    assert fs.read_file("/f") == bytes(expected)
    # past the end: a hole in the same block, then whole missing blocks
    fs.write("/f", 3010, b"Q")
    expected += bytes(6) + b"Q"
    fs.write("/f", 9000, b"far")
    expected += bytes(9000 - len(expected)) + b"far"
    assert fs.read_file("/f") == bytes(expected)
    assert fs.stat("/f").size == 9003
    # the holes (blocks 6..16) take no space: blocks 0..5 and 17 are mapped, + 1 indirect
    assert fs.stat("/f").blocks == 6 + 1 + 1
    assert fs.read("/f", 4000, 1000) == bytes(1000)
    # an empty write changes nothing
    assert fs.write("/f", 100_000, b"") == 0
    assert fs.stat("/f").size == 9003
    assert fs.fsck().ok


def test_sparse_file_reads_zeros_and_fills_in(fs: Filesystem) -> None:
    fs.create("/sparse")
    offset = (SINGLE_END + 30) * BS + 3  # deep in the double indirect tree
    fs.write("/sparse", offset, b"hello")
    assert fs.stat("/sparse").size == offset + 5
    # one data block, the double indirect root and one of its leaves
    assert fs.stat("/sparse").blocks == 3
    assert fs.read_file("/sparse") == bytes(offset) + b"hello"
    # fill a hole in the direct part and one in the single indirect part
    fs.write("/sparse", 5 * BS + 100, b"D" * 700)
    fs.write("/sparse", 40 * BS, b"S" * BS)
    want = bytearray(offset + 5)
    want[offset:] = b"hello"
    want[5 * BS + 100 : 5 * BS + 800] = b"D" * 700
    want[40 * BS : 41 * BS] = b"S" * BS
    assert fs.read_file("/sparse") == bytes(want)
    assert fs.stat("/sparse").blocks == 3 + 2 + 2  # + 2 direct, + 1 data and 1 single indirect
    assert fs.fsck().ok


@pytest.mark.parametrize(
    ("start_block", "nblocks", "skew"),
    [
        (0, DIRECT, 0),  # exactly the direct blocks
        (DIRECT - 1, 2, 0),  # direct -> single indirect
        (DIRECT - 1, 2, 100),  # the same, unaligned
        (SINGLE_END - 1, 2, 0),  # single -> double indirect
        (SINGLE_END - 1, 2, 300),
        (SINGLE_END + PER_BLOCK - 1, 2, 17),  # two leaves of the double indirect tree
        (DIRECT - 2, SINGLE_END - DIRECT + 4, 5),  # direct -> single -> double in one write
    ],
)
def test_writes_spanning_pointer_boundaries(
    fs: Filesystem, start_block: int, nblocks: int, skew: int
) -> None:
    total = (SINGLE_END + PER_BLOCK + 10) * BS
    base = pattern(total, seed=1)
    fs.write_file("/f", base)
    assert fs.read_file("/f") == base
    offset = start_block * BS + skew
    data = pattern(nblocks * BS - 2 * skew + 1, seed=99)
    fs.write("/f", offset, data)
    expected = bytearray(base)
    expected[offset : offset + len(data)] = data
    assert fs.read_file("/f") == bytes(expected)
    around = fs.read("/f", max(offset - 1, 0), len(data) + 2)
    assert around == bytes(expected[max(offset - 1, 0) : max(offset - 1, 0) + len(data) + 2])
    # data blocks + 1 single indirect + the double root + 2 of its leaves
    assert fs.stat("/f").blocks == total // BS + 1 + 1 + 2
    assert fs.fsck().ok


def test_fresh_write_spanning_every_tree_and_read_chunks() -> None:
    env = Env(blocks=1024)  # room for a second copy of most of the file in one commit
    fs = env.fs
    # 300 blocks: more than one 256-block I/O chunk, in all three kinds of pointer
    data = os.urandom(300 * BS + 123)
    fs.write_file("/big", data, parents=False)
    assert fs.read_file("/big") == data
    # an unaligned overwrite across the 256-block chunk boundary of a single write
    patch = os.urandom(260 * BS + 77)
    fs.write("/big", 3 * BS + 11, patch)
    expected = bytearray(data)
    expected[3 * BS + 11 : 3 * BS + 11 + len(patch)] = patch
    assert fs.read_file("/big") == bytes(expected)
    assert fs.read("/big", 255 * BS - 7, 20) == bytes(expected[255 * BS - 7 : 255 * BS + 13])
    # 301 data blocks, 1 single indirect, the double root and ceil(225 / 64) = 4 leaves
    assert fs.stat("/big").blocks == 301 + 1 + 1 + 4
    assert env.reopen().read_file("/big") == bytes(expected)
    assert env.fs.fsck().ok
    env.fs.close()


# ---------------------------------------------------------------- truncate


def test_truncate_down_and_up_zeroes_the_tail(fs: Filesystem) -> None:
    data = pattern(4000)
    fs.write_file("/f", data)
    fs.truncate("/f", 600)  # to the middle of block 1
    assert fs.read_file("/f") == data[:600]
    assert fs.stat("/f").blocks == 2
    fs.truncate("/f", 2000)  # extend: the old bytes 600..1023 must not come back
    assert fs.read_file("/f") == data[:600] + bytes(1400)
    assert fs.stat("/f").size == 2000
    assert fs.stat("/f").blocks == 2  # the extension is a hole
    # writing into the extended area keeps the zeros around the write
    fs.write("/f", 700, b"W")
    assert fs.read_file("/f") == data[:600] + bytes(100) + b"W" + bytes(1299)
    fs.truncate("/f", 0)
    assert fs.read_file("/f") == b""
    assert fs.stat("/f").blocks == 0
    fs.truncate("/f", 0)  # same size: nothing to do
    assert fs.fsck().ok


def test_truncate_frees_indirect_trees(env: Env) -> None:
    fs = env.fs
    before = fs.usage().used_blocks
    data = pattern((SINGLE_END + PER_BLOCK + 5) * BS)
    fs.write_file("/f", data)
    # data + single indirect + double root + 2 leaves (inode table block 1 and a root
    # directory block come with the first file)
    assert fs.usage().used_blocks == before + 2 + len(data) // BS + 4
    fs.truncate("/f", (SINGLE_END + 3) * BS + 1)  # keep 80 blocks: the second leaf goes
    assert fs.stat("/f").blocks == SINGLE_END + 4 + 1 + 1 + 1
    assert fs.read_file("/f") == data[: (SINGLE_END + 3) * BS + 1]
    fs.truncate("/f", DIRECT * BS)  # only direct blocks remain
    assert fs.stat("/f").blocks == DIRECT
    assert fs.usage().used_blocks == before + 2 + DIRECT
    fs.truncate("/f", 0)
    assert fs.usage().used_blocks == before + 2
    assert fs.fsck().ok


def test_truncate_errors(fs: Filesystem) -> None:
    fs.mkdir("/d")
    with pytest.raises(ValueError, match="negative"):
        fs.truncate("/x", -1)
    with pytest.raises(PathNotFoundError):
        fs.truncate("/x", 1)
    with pytest.raises(IsADirectoryPathError):
        fs.truncate("/d", 1)


# ---------------------------------------------------------------- remove, mkdir, rmdir


def test_remove_unlink(fs: Filesystem) -> None:
    fs.write_file("/f", b"x")
    fs.mkdir("/d")
    fs.remove("/f")
    assert not fs.exists("/f")
    with pytest.raises(PathNotFoundError):
        fs.remove("/f")
    with pytest.raises(PathNotFoundError):
        fs.read_file("/f")
    with pytest.raises(IsADirectoryPathError):
        fs.remove("/d")
    with pytest.raises(InvalidPathError):
        fs.remove("/")
    fs.write_file("/g", b"y")
    fs.unlink("/g")
    assert fs.listdir("/") == ["d"]


def test_mkdir_parents_and_exist_ok(fs: Filesystem) -> None:
    fs.mkdir("/a")
    with pytest.raises(PathExistsError):
        fs.mkdir("/a")
    fs.mkdir("/a", exist_ok=True)
    with pytest.raises(PathNotFoundError):
        fs.mkdir("/x/y")
    fs.mkdir("/x/y/z", parents=True)
    assert fs.stat("/x/y/z").is_dir
    assert fs.listdir("/x") == ["y"]
    fs.mkdir("/x/y/z", parents=True)  # like mkdir -p: an existing directory is fine
    fs.write_file("/a/f", b"")
    with pytest.raises(PathExistsError):
        fs.mkdir("/a/f", exist_ok=True)
    with pytest.raises(PathExistsError):
        fs.mkdir("/a/f", parents=True)
    with pytest.raises(NotADirectoryPathError):
        fs.mkdir("/a/f/sub", parents=True)
    with pytest.raises(NotADirectoryPathError):
        fs.mkdir("/a/f/sub")
    with pytest.raises(InvalidPathError):
        fs.mkdir("/")
    assert fs.stat("/x/y").ino != fs.stat("/x/y/z").ino
    assert fs.fsck().ok


def test_rmdir(fs: Filesystem) -> None:
    fs.mkdir("/d/e", parents=True)
    fs.write_file("/f", b"")
    with pytest.raises(DirectoryNotEmptyError):
        fs.rmdir("/d")
    with pytest.raises(NotADirectoryPathError):
        fs.rmdir("/f")
    with pytest.raises(PathNotFoundError):
        fs.rmdir("/nope")
    with pytest.raises(InvalidPathError):
        fs.rmdir("/")
    fs.rmdir("/d/e")
    fs.rmdir("/d")
    assert fs.listdir("/") == ["f"]
    assert fs.fsck().ok


def test_remove_tree(env: Env) -> None:
    fs = env.fs
    fs.write_file("/keep", b"k")
    before = fs.usage()
    fs.write_file("/t/a/b/f1", pattern(3000), parents=True)
    fs.write_file("/t/a/f2", pattern(DIRECT * BS + 1), parents=True)
    fs.mkdir("/t/empty")
    fs.write_file("/t/f3", b"3")
    assert fs.remove_tree("/t") == 7  # t, a, b, f1, f2, empty, f3
    assert fs.listdir("/") == ["keep"]
    after = fs.usage()
    # the inode table keeps its blocks; everything else comes back
    table_growth = (9 * 256) // BS - (3 * 256) // BS
    assert after.used_blocks == before.used_blocks + table_growth
    assert (after.files, after.directories) == (before.files, before.directories)
    assert fs.remove_tree("/keep") == 1
    with pytest.raises(PathNotFoundError):
        fs.remove_tree("/keep")
    with pytest.raises(InvalidPathError):
        fs.remove_tree("/")
    assert fs.fsck().ok


# ---------------------------------------------------------------- rename


def test_rename_file_and_over_file(fs: Filesystem) -> None:
    fs.write_file("/a", b"AAAA")
    fs.write_file("/b", pattern(2000))
    ino_a = fs.stat("/a").ino
    fs.rename("/a", "/c")
    assert fs.read_file("/c") == b"AAAA"
    assert fs.stat("/c").ino == ino_a
    assert not fs.exists("/a")
    used = fs.usage().used_blocks
    fs.rename("/c", "/b")  # replaces /b, whose 4 blocks are freed
    assert fs.read_file("/b") == b"AAAA"
    assert fs.listdir("/") == ["b"]
    assert fs.usage().used_blocks == used - 4
    assert fs.fsck().ok


def test_rename_directories(fs: Filesystem) -> None:
    fs.mkdir("/src/sub", parents=True)
    fs.write_file("/src/sub/f", b"data")
    fs.mkdir("/empty")
    fs.mkdir("/full")
    fs.write_file("/full/x", b"")
    fs.write_file("/file", b"")
    with pytest.raises(DirectoryNotEmptyError):
        fs.rename("/src", "/full")
    with pytest.raises(IsADirectoryPathError):
        fs.rename("/file", "/empty")
    with pytest.raises(NotADirectoryPathError):
        fs.rename("/src", "/file")
    with pytest.raises(InvalidPathError):
        fs.rename("/src", "/src/sub/inside")
    with pytest.raises(InvalidPathError):
        fs.rename("/src", "/src/new")
    with pytest.raises(PathNotFoundError):
        fs.rename("/missing", "/other")
    with pytest.raises(PathNotFoundError):
        fs.rename("/file", "/missing/file")
    with pytest.raises(NotADirectoryPathError):
        fs.rename("/file", "/file/under")
    with pytest.raises(InvalidPathError):
        fs.rename("/", "/x")
    # dir over an empty dir, into another parent: the parent link follows
    fs.rename("/src", "/empty")
    assert fs.read_file("/empty/sub/f") == b"data"
    assert not fs.exists("/src")
    fs.rename("/empty/sub", "/full/moved")
    assert fs.listdir("/full") == ["moved", "x"]
    assert fs.read_file("/full/moved/f") == b"data"
    # a sibling whose name starts with the source's is not inside it
    fs.rename("/full", "/fullness")
    assert fs.exists("/fullness/moved/f")
    report = fs.fsck()
    assert report.ok, report.problems


def test_rename_to_same_path_is_a_no_op(env: Env) -> None:
    fs = env.fs
    fs.write_file("/d/f", b"x", parents=True)
    generation = fs.store.generation
    snapshot = tree(fs)
    fs.rename("/d/f", "/d//f/")
    fs.rename("/d", "d")
    assert tree(fs) == snapshot
    assert fs.store.generation == generation  # nothing changed, nothing was committed


# ---------------------------------------------------------------- names and paths


def test_name_and_path_limits(fs: Filesystem) -> None:
    name255 = "é" * 127 + "a"  # 255 bytes of UTF-8
    assert len(name255.encode()) == 255
    fs.write_file(f"/{name255}", b"long")
    assert fs.listdir("/") == [name255]
    assert fs.scandir("/")[0].name == name255
    assert fs.read_file(f"/{name255}") == b"long"
    fs.mkdir("/" + "é" * 127 + "d")  # another 255-byte name, a directory
    assert len(fs.listdir("/")) == 2
    name256 = "é" * 128
    with pytest.raises(NameTooLongError):
        fs.write_file(f"/{name256}", b"")
    with pytest.raises(NameTooLongError):
        fs.stat(f"/{name256}")
    with pytest.raises(NameTooLongError):
        fs.mkdir(f"/{name256}")
    # a path of 4096 bytes is allowed (it just does not exist), 4097 is not
    path4096 = "/a" * 2048
    with pytest.raises(PathNotFoundError):
        fs.stat(path4096)
    with pytest.raises(NameTooLongError):
        fs.stat(path4096 + "/")
    with pytest.raises(NameTooLongError):
        fs.write_file(path4096 + "b", b"", parents=True)
    assert fs.fsck().ok


@pytest.mark.parametrize("bad", [".", "..", "/a/./b", "/a/../b", "a\0b", "/\0", "\ud800"])
def test_bad_names_are_refused(fs: Filesystem, bad: str) -> None:
    fs.mkdir("/a")
    with pytest.raises(InvalidPathError):
        fs.write_file(bad, b"")
    with pytest.raises(InvalidPathError):
        fs.mkdir(bad, parents=True)
    with pytest.raises(InvalidPathError):
        fs.stat(bad)
    with pytest.raises(InvalidPathError):
        fs.rename("/a", bad)
    assert fs.listdir("/") == ["a"]


def test_empty_path_is_the_root_and_cannot_be_created(fs: Filesystem) -> None:
    assert fs.stat("").is_dir
    calls: list[Callable[[], object]] = [
        lambda: fs.write_file("", b""),
        lambda: fs.create("//"),
        lambda: fs.mkdir(""),
        lambda: fs.remove(""),
        lambda: fs.rename("", "/x"),
    ]
    for call in calls:
        with pytest.raises(InvalidPathError):
            call()
    with pytest.raises(IsADirectoryPathError):
        fs.read_file("")
    with pytest.raises(TypeError):
        fs.stat(b"/x")  # type: ignore[arg-type]


def test_path_spelling_is_normalised(fs: Filesystem) -> None:
    fs.write_file("a//b/", b"x", parents=True)
    assert fs.read_file("/a/b") == b"x"
    assert fs.listdir("a/") == ["b"]


def test_walking_through_a_file_and_into_missing_dirs(fs: Filesystem) -> None:
    fs.write_file("/f", b"")
    fs.mkdir("/d")
    with pytest.raises(NotADirectoryPathError):
        fs.stat("/f/x")
    with pytest.raises(NotADirectoryPathError):
        fs.write_file("/f/x", b"")
    with pytest.raises(PathNotFoundError):
        fs.write_file("/none/x", b"")
    with pytest.raises(NotADirectoryPathError):
        fs.listdir("/f")
    with pytest.raises(NotADirectoryPathError):
        fs.scandir("/f")
    with pytest.raises(NotADirectoryPathError):
        list(fs.walk("/f"))
    with pytest.raises(IsADirectoryPathError):
        fs.read_file("/d")
    with pytest.raises(IsADirectoryPathError):
        fs.read("/d", 0, 1)
    with pytest.raises(IsADirectoryPathError):
        fs.write("/d", 0, b"x")
    with pytest.raises(IsADirectoryPathError):
        fs.write_file("/d", b"x")
    with pytest.raises(IsADirectoryPathError):
        fs.create("/d", exist_ok=True)
    with pytest.raises(PathNotFoundError):
        fs.write("/none", 0, b"x")
    assert not fs.exists("/f/x")
    assert fs.exists("/d")


def test_listdir_scandir_walk(fs: Filesystem) -> None:
    fs.write_file("/b/y", b"yy", parents=True)
    fs.write_file("/b/x", b"x")
    fs.mkdir("/a/c", parents=True)
    fs.write_file("/z", b"zzz")
    assert fs.listdir("/") == ["a", "b", "z"]
    entries = fs.scandir("/")
    assert [e.name for e in entries] == ["a", "b", "z"]
    assert [e.stat.kind for e in entries] == ["dir", "dir", "file"]
    assert entries[2].stat.size == 3
    assert list(fs.walk("/")) == [
        ("/", ["a", "b"], ["z"]),
        ("/a", ["c"], []),
        ("/a/c", [], []),
        ("/b", [], ["x", "y"]),
    ]
    assert list(fs.walk("/b")) == [("/b", [], ["x", "y"])]


# ---------------------------------------------------------------- times


def test_times_follow_the_clock(env: Env) -> None:
    fs, clock = env.fs, env.clock
    fs.mkdir("/d")
    d0 = fs.stat("/d")
    assert d0.ctime_ns == d0.mtime_ns <= clock.now
    root0 = fs.stat("/").mtime_ns
    assert root0 >= d0.ctime_ns  # the root changed when /d was linked into it

    fs.write_file("/d/f", b"one")
    f0 = fs.stat("/d/f")
    d1 = fs.stat("/d")
    assert f0.ctime_ns > d0.ctime_ns
    assert d1.mtime_ns > d0.mtime_ns  # a new entry
    assert d1.ctime_ns == d0.ctime_ns
    assert fs.stat("/").mtime_ns == root0  # only the directory that changed

    fs.write("/d/f", 1, b"X")
    f1 = fs.stat("/d/f")
    assert f1.mtime_ns > f0.mtime_ns
    assert f1.ctime_ns == f0.ctime_ns
    assert fs.stat("/d").mtime_ns == d1.mtime_ns  # content changes leave the directory be

    fs.read_file("/d/f")
    fs.stat("/d/f")
    assert fs.stat("/d/f").mtime_ns == f1.mtime_ns  # reading changes nothing

    fs.truncate("/d/f", 1)
    f2 = fs.stat("/d/f")
    assert f2.mtime_ns > f1.mtime_ns

    fs.rename("/d/f", "/d/g")
    d2 = fs.stat("/d")
    assert d2.mtime_ns > d1.mtime_ns
    assert fs.stat("/d/g").mtime_ns == f2.mtime_ns  # the file itself did not change

    fs.mkdir("/e")
    e0 = fs.stat("/e")
    fs.rename("/d/g", "/e/g")
    assert fs.stat("/d").mtime_ns > d2.mtime_ns
    assert fs.stat("/e").mtime_ns > e0.mtime_ns

    d3 = fs.stat("/d").mtime_ns
    fs.write_file("/e/g", b"whole new")
    assert fs.stat("/d").mtime_ns == d3
    g = fs.stat("/e/g")
    fs.remove("/e/g")
    assert fs.stat("/e").mtime_ns > g.mtime_ns

    snapshot = {p: fs.stat(p) for p in ("/", "/d", "/e")}
    env.reopen()
    assert {p: env.fs.stat(p) for p in ("/", "/d", "/e")} == snapshot


# ---------------------------------------------------------------- a big directory


def content(name: str) -> bytes:
    return f"content of {name}".encode()


def test_ten_thousand_entries_in_one_directory() -> None:
    # 4 KiB blocks: 16 inodes per inode-table block, about 190 records per directory block.
    # Every 10th entry is a directory, every 100th (offset by one) a file with content (a
    # data block each), the rest empty files.
    env = Env(blocks=2048, block_size=4096)
    fs = env.fs
    names = [f"entry-{i:05d}" for i in range(10_000)]

    def make(i: int, name: str) -> None:
        if i % 10 == 0:
            fs.mkdir(f"/big/{name}")
        elif i % 100 == 1:
            fs.write_file(f"/big/{name}", content(name))
        else:
            fs.create(f"/big/{name}")

    generation = fs.store.generation
    with fs.transaction():
        fs.mkdir("/big")
        for i, name in enumerate(names):
            make(i, name)
    assert fs.store.generation == generation + 1  # one commit for all of it
    assert fs.listdir("/big") == names
    assert fs.read_file("/big/entry-04301") == content("entry-04301")
    assert fs.read_file("/big/entry-04302") == b""
    assert fs.stat("/big/entry-09990").is_dir
    usage = fs.usage()
    assert (usage.files, usage.directories) == (9000, 1002)
    # The superblock and the bitmap; 626 inode-table blocks for inodes 0..10001, which need
    # a single indirect block and, past 12 + 512 blocks, a double root and one leaf; 100
    # data blocks; the root's one directory block; /big's blocks (its records and one
    # single indirect block).
    dir_blocks = fs.stat("/big").blocks
    assert 50 <= dir_blocks <= 60
    assert usage.used_blocks == 2 + 626 + 3 + 100 + 1 + dir_blocks
    size_full = fs.stat("/big").size

    with fs.transaction():
        for name in names[1::2]:
            fs.remove_tree(f"/big/{name}")
    assert fs.listdir("/big") == names[::2]
    assert not fs.exists("/big/entry-00001")
    assert fs.exists("/big/entry-00002")
    assert fs.usage().files == 4000  # the odd entries: no directories among them
    with fs.transaction():
        for i in range(1, 10_000, 2):
            make(i, names[i])
    assert fs.listdir("/big") == names
    assert fs.read_file("/big/entry-00101") == content("entry-00101")
    assert fs.stat("/big").size == size_full  # the freed room was reused
    assert fs.usage() == usage

    fs = env.reopen()
    assert fs.listdir("/big") == names
    assert fs.read_file("/big/entry-09901") == content("entry-09901")
    assert [fs.exists(f"/big/{name}") for name in names[::997]] == [True] * 11
    report = fs.fsck()
    assert report.ok, report.problems[:5]
    assert (report.files, report.directories) == (9000, 1002)
    fs.close()


def test_directory_shrinks_when_its_last_blocks_empty(fs: Filesystem) -> None:
    fs.mkdir("/d")
    for i in range(100):  # records of 10 + 8 bytes, 28 to a 512-byte block
        fs.create(f"/d/file{i:04d}")
    assert fs.stat("/d").size == 4 * BS
    for i in range(30, 100):
        fs.remove(f"/d/file{i:04d}")
    assert fs.stat("/d").size == 2 * BS
    assert fs.stat("/d").blocks == 2
    assert len(fs.listdir("/d")) == 30
    assert fs.fsck().ok


# ---------------------------------------------------------------- space


def test_usage_accounting_is_exact(env: Env) -> None:
    fs = env.fs
    u0 = fs.usage()
    # superblock, bitmap block, inode table block 0 (inodes 0 and 1)
    assert (u0.block_size, u0.used_blocks, u0.files, u0.directories) == (BS, 3, 0, 1)
    assert u0.total_blocks == fs.store.block_count
    assert u0.free_blocks == u0.total_blocks - 3
    assert u0.free_bytes == u0.free_blocks * BS

    fs.create("/first")  # inode 2: inode table block 1; the root's first directory block
    u1 = fs.usage()
    assert u1.used_blocks == 5
    assert u1.files == 1
    fs.write_file("/ten", pattern(10 * BS))  # inode 3, same table block: 10 data blocks
    u2 = fs.usage()
    assert u2.used_blocks == 15
    assert u2.free_blocks == u1.free_blocks - 10
    fs.write_file("/big", pattern(21 * BS - 5))  # inode 4: a table block, 21 + 1 indirect
    u3 = fs.usage()
    assert u3.used_blocks == 15 + 1 + 22
    assert u3.files == 3
    fs.write("/ten", 0, b"rewrite")  # rewriting uses no new block
    assert fs.usage().used_blocks == u3.used_blocks
    fs.mkdir("/d")  # inode 5: in table block 2; a directory has no block until an entry
    assert fs.usage().used_blocks == u3.used_blocks
    assert fs.usage().directories == 2
    fs.create("/d/x")  # inode 6: table block 3, and /d's first block
    assert fs.usage().used_blocks == u3.used_blocks + 2

    fs.remove("/big")
    assert fs.usage().used_blocks == u3.used_blocks + 2 - 22
    fs.remove_tree("/d")
    fs.remove("/ten")
    u4 = fs.usage()
    assert u4.used_blocks == 5 + 2  # first's blocks + the two table blocks that remain
    assert (u4.files, u4.directories) == (1, 1)
    assert u4.store_free_blocks == fs.store.free_blocks
    assert fs.fsck().ok


def small_env() -> Env:
    """64 blocks of 512 bytes: 44 logical blocks, so a few KiB fill it."""
    env = Env(blocks=64)
    env.fs.write_file("/a", pattern(5 * BS))
    env.fs.mkdir("/d")
    env.fs.create("/d/sparse")
    env.fs.truncate("/d/sparse", 40 * BS)  # a hole: no blocks yet
    return env


def test_device_full_changes_nothing() -> None:
    env = small_env()
    fs = env.fs
    before_tree, before_usage = tree(fs), fs.usage()
    assert before_usage.free_blocks < 40

    # the new file needs more blocks than are free (found after its inode was made)
    with pytest.raises(DeviceFullError, match="blocks needed"):
        fs.write_file("/d/new", pattern(40 * BS))
    # an existing file cannot grow that far either (refused before any change)
    with pytest.raises(DeviceFullError, match="blocks needed"):
        fs.write("/a", 0, pattern(45 * BS))
    # filling the hole of a sparse file: more new block copies than the store can take
    with pytest.raises(DeviceFullError, match="for this commit"):
        fs.write("/d/sparse", 0, pattern(40 * BS))
    with pytest.raises(DeviceFullError, match="for this commit"):
        fs.write_file("/d/sparse", pattern(40 * BS))
    assert tree(fs) == before_tree
    assert fs.usage() == before_usage
    assert fs.fsck().ok
    # still usable: what fits, fits, up to the last block
    fs.write_file("/d/fits", pattern(10 * BS))
    assert fs.read_file("/d/fits") == pattern(10 * BS)
    assert env.reopen().read_file("/d/fits") == pattern(10 * BS)
    assert tree(env.fs) != before_tree
    env.fs.close()


def test_device_full_inside_a_transaction_rolls_it_back() -> None:
    env = small_env()
    fs = env.fs
    before_tree, before_usage = tree(fs), fs.usage()
    generation = fs.store.generation

    def swallowed() -> None:
        with fs.transaction():
            fs.write_file("/t1", b"first")
            fs.mkdir("/t2")
            with pytest.raises(DeviceFullError):
                fs.write_file("/d/new", pattern(40 * BS))
            # the transaction is gone: later operations are refused
            with pytest.raises(StateError):
                fs.mkdir("/t3")
            with pytest.raises(StateError):
                fs.write_file("/t4", b"")

    # the error was caught inside, so leaving the block says the transaction was lost
    with pytest.raises(StateError, match="rolled back"):
        swallowed()
    assert tree(fs) == before_tree
    assert fs.usage() == before_usage
    assert fs.store.generation == generation

    # the same when the error leaves the block
    def propagated() -> None:
        with fs.transaction():
            fs.write_file("/t1", b"first")
            fs.write("/d/sparse", 0, pattern(40 * BS))

    with pytest.raises(DeviceFullError):
        propagated()
    assert tree(fs) == before_tree
    assert fs.usage() == before_usage
    # and usable again afterwards
    with fs.transaction():
        fs.write_file("/after", b"ok")
    assert fs.read_file("/after") == b"ok"
    assert env.reopen().read_file("/after") == b"ok"
    assert not env.fs.exists("/t1")
    assert env.fs.fsck().ok
    env.fs.close()


def test_device_full_found_while_allocating_is_rolled_back() -> None:
    # On a larger device the store's spare covers the copies, so filling a hole bigger than
    # the free space gets past the up-front check and fails in the block allocator, after
    # the write has begun: everything it did is rolled back.
    env = Env(blocks=2048)
    fs = env.fs
    fs.write_file("/fill", bytes((fs.usage().free_blocks - 60) * BS))
    fs.create("/sparse")
    free = fs.usage().free_blocks
    fs.truncate("/sparse", (free + 10) * BS)
    before_tree, before_usage = tree(fs), fs.usage()
    with pytest.raises(DeviceFullError, match="but only"):
        fs.write("/sparse", 0, pattern((free + 10) * BS))
    assert tree(fs) == before_tree
    assert fs.usage() == before_usage

    def swallowed() -> None:
        with fs.transaction():
            fs.write_file("/t", b"in the transaction")
            with pytest.raises(DeviceFullError, match="but only"):
                fs.write("/sparse", 0, pattern((free + 10) * BS))
            with pytest.raises(StateError):
                fs.remove("/fill")

    with pytest.raises(StateError, match="rolled back"):
        swallowed()
    assert tree(fs) == before_tree
    assert fs.usage() == before_usage
    fs.write("/sparse", 0, pattern((free - 10) * BS))  # what fits still works
    assert fs.read("/sparse", 0, 100) == pattern(100)
    report = env.reopen().fsck()
    assert report.ok, report.problems
    assert not env.fs.exists("/t")
    env.fs.close()


def test_space_refused_before_any_change_keeps_the_transaction() -> None:
    # Growing an existing file past the free space is refused before it changes anything,
    # so, like a missing path, it leaves the transaction usable.
    env = small_env()
    fs = env.fs
    with fs.transaction():
        fs.write_file("/t1", b"kept")
        with pytest.raises(DeviceFullError):
            fs.write("/a", 0, pattern(45 * BS))
        fs.write_file("/t2", b"kept too")
    assert fs.read_file("/t1") == b"kept"
    assert fs.read_file("/t2") == b"kept too"
    assert fs.read_file("/a") == pattern(5 * BS)
    assert fs.fsck().ok
    fs.close()


def test_small_device_is_refused() -> None:
    from cvmstore.errors import DeviceError

    with pytest.raises(DeviceError):
        make_filesystem(MemoryDevice(9, BS), SECRET, MemoryAnchor())


# ---------------------------------------------------------------- transactions


class Boom(Exception):
    pass


def aborted(fs: Filesystem, body: Callable[[], object]) -> None:
    """Run `body` in a transaction, then raise `Boom` inside it."""
    with fs.transaction():
        body()
        raise Boom


def test_exception_in_transaction_keeps_nothing(env: Env) -> None:
    fs = env.fs
    fs.write_file("/keep", b"old")
    before = tree(fs)
    usage = fs.usage()
    generation = fs.store.generation

    def body() -> None:
        fs.write_file("/keep", b"new content")
        fs.mkdir("/d/e", parents=True)
        fs.write_file("/d/e/f", pattern(3000))
        fs.remove("/keep")
        assert not fs.exists("/keep")  # the transaction sees its own changes
        assert fs.read_file("/d/e/f") == pattern(3000)

    with pytest.raises(Boom):
        aborted(fs, body)
    assert tree(fs) == before
    assert fs.usage() == usage
    assert fs.store.generation == generation
    assert tree(env.reopen()) == before


def test_validation_error_in_transaction_keeps_earlier_ops(env: Env) -> None:
    fs = env.fs
    generation = fs.store.generation
    with fs.transaction() as same:
        assert same is fs
        fs.write_file("/a", b"A")
        with pytest.raises(PathNotFoundError):
            fs.remove("/missing")
        with pytest.raises(NameTooLongError):
            fs.create("/" + "n" * 256)
        with pytest.raises(PathExistsError):
            fs.create("/a")
        fs.mkdir("/d/e", parents=True)
        with pytest.raises(DirectoryNotEmptyError):
            fs.rmdir("/d")
        fs.write_file("/b", b"B")
    assert fs.store.generation == generation + 1
    assert fs.read_file("/a") == b"A"
    assert fs.read_file("/b") == b"B"
    assert fs.exists("/d/e")
    assert tree(env.reopen()) == tree(env.fs)
    assert env.fs.read_file("/b") == b"B"


def test_nested_transactions_join(env: Env) -> None:
    fs = env.fs
    generation = fs.store.generation
    with fs.transaction():
        fs.write_file("/outer", b"1")
        with fs.transaction():
            fs.write_file("/inner", b"2")
        assert fs.store.generation == generation  # the inner block did not commit
        fs.write_file("/outer2", b"3")
    assert fs.store.generation == generation + 1
    assert fs.listdir("/") == ["inner", "outer", "outer2"]

    before = tree(fs)

    def body() -> None:
        fs.write_file("/x", b"x")
        with fs.transaction():
            fs.write_file("/y", b"y")
            raise Boom  # from the inner block: the outer one is rolled back

    with pytest.raises(Boom), fs.transaction():
        body()
    assert tree(fs) == before


def test_transaction_rules(env: Env) -> None:
    fs = env.fs
    with fs.transaction():
        with pytest.raises(StateError):
            fs.close()
        with pytest.raises(StateError):
            fs.fsck()
        fs.write_file("/x", b"x")
    assert fs.exists("/x")
    # an empty transaction commits nothing
    generation = fs.store.generation
    with fs.transaction():
        pass
    assert fs.store.generation == generation


def test_each_operation_is_one_commit(env: Env) -> None:
    fs = env.fs
    g = fs.store.generation
    fs.write_file("/f", b"x")
    fs.mkdir("/d")
    fs.rename("/f", "/d/f")
    assert fs.store.generation == g + 3
    with pytest.raises(PathNotFoundError):
        fs.remove("/f")
    assert fs.store.generation == g + 3


def test_reopen_shows_exactly_the_committed_state(env: Env) -> None:
    fs = env.fs
    fs.write_file("/etc/passwd", b"root:x:0:0", parents=True)
    fs.write_file("/var/log/big", pattern((SINGLE_END + 3) * BS), parents=True)
    fs.mkdir("/empty")
    fs.create("/var/sparse")
    fs.write("/var/sparse", 20 * BS, b"end")
    fs.remove("/etc/passwd")
    fs.write_file("/etc/passwd", b"new")
    with pytest.raises(Boom):
        aborted(fs, lambda: fs.remove_tree("/var"))
    committed = tree(fs)
    usage = fs.usage()
    fs = env.reopen()
    assert tree(fs) == committed
    assert fs.usage() == usage
    fs.close()
    with pytest.raises(StateError):
        fs.stat("/")
    with pytest.raises(StateError):
        fs.write_file("/x", b"")
    with pytest.raises(StateError):
        fs.transaction().__enter__()
    fs.close()  # a second close is harmless
    fs = env.reopen()  # and reopening again still gives the same state
    assert tree(fs) == committed
    assert fs.fsck().ok


def test_open_on_a_store_without_a_filesystem() -> None:
    from cvmstore.errors import FsCorruptError
    from cvmstore.integrity import format_store

    device, anchor = MemoryDevice(64, BS), MemoryAnchor()
    format_store(device, SECRET, anchor).close()
    with pytest.raises(FsCorruptError, match="no cvmstore filesystem"):
        open_filesystem(device, SECRET, anchor)


# ---------------------------------------------------------------- file objects


def test_mode_rb(fs: Filesystem) -> None:
    fs.write_file("/f", b"0123456789")
    with buffered(fs, "/f", "rb") as f:
        assert isinstance(f, io.BufferedReader)
        assert f.read(3) == b"012"
        assert f.read() == b"3456789"
        assert f.read() == b""
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
    with pytest.raises(PathNotFoundError):
        fs.open("/missing", "rb")
    fs.mkdir("/d")
    with pytest.raises(IsADirectoryPathError):
        fs.open("/d", "rb")
    with raw(fs, "/f", "rb") as r:
        assert r.readable()
        assert not r.writable()
        assert r.seekable()
        assert r.name == "/f"
        assert r.mode == "rb"
        with pytest.raises(io.UnsupportedOperation):
            r.write(b"x")
        with pytest.raises(io.UnsupportedOperation):
            r.truncate(0)
    assert fs.read_file("/f") == b"0123456789"


def test_mode_r_plus_b(fs: Filesystem) -> None:
    fs.write_file("/f", b"0123456789")
    with buffered(fs, "/f", "r+b") as f:
        assert isinstance(f, io.BufferedRandom)
        assert f.read(2) == b"01"
        f.write(b"AB")
        f.seek(0)
        assert f.read() == b"01AB456789"
    assert fs.read_file("/f") == b"01AB456789"
    with pytest.raises(PathNotFoundError):
        fs.open("/missing", "r+b")


def test_mode_wb_and_w_plus_b(fs: Filesystem) -> None:
    fs.write_file("/f", b"old content")
    f = buffered(fs, "/f", "wb")
    assert isinstance(f, io.BufferedWriter)
    assert fs.read_file("/f") == b""  # truncated on open
    f.write(b"new")
    with pytest.raises(io.UnsupportedOperation):
        f.read()
    f.close()
    assert fs.read_file("/f") == b"new"
    with buffered(fs, "/created", "wb") as f:
        f.write(b"made")
    assert fs.read_file("/created") == b"made"
    with buffered(fs, "/f", "w+b") as f:
        assert f.read() == b""
        f.write(b"hello")
        f.seek(1)
        assert f.read(3) == b"ell"
    assert fs.read_file("/f") == b"hello"
    with pytest.raises(PathNotFoundError):
        fs.open("/no/such/dir", "wb")


def test_mode_ab_and_a_plus_b(fs: Filesystem) -> None:
    fs.write_file("/f", b"start")
    with raw(fs, "/f", "ab") as f:
        assert f.writable()
        assert not f.readable()
        f.write(b"-1")
        f.seek(0)
        f.write(b"-2")  # append mode writes at the end wherever the position is
        assert f.tell() == 9
    assert fs.read_file("/f") == b"start-1-2"
    with buffered(fs, "/f", "a+b") as f:
        f.seek(0)
        assert f.read(5) == b"start"
        f.write(b"-3")
        f.flush()
        f.seek(0)
        assert f.read() == b"start-1-2-3"
    with buffered(fs, "/new", "ab") as f:
        f.write(b"fresh")
    assert fs.read_file("/new") == b"fresh"


def test_mode_xb(fs: Filesystem) -> None:
    with buffered(fs, "/f", "xb") as f:
        f.write(b"exclusive")
    assert fs.read_file("/f") == b"exclusive"
    with pytest.raises(PathExistsError):
        fs.open("/f", "xb")
    with pytest.raises(PathExistsError):
        fs.open("/f", "x+b")
    assert fs.read_file("/f") == b"exclusive"
    fs.mkdir("/d")
    with pytest.raises(IsADirectoryPathError):
        fs.open("/d", "xb")
    with buffered(fs, "/g", "x+b") as f:
        f.write(b"rw")
        f.seek(0)
        assert f.read() == b"rw"


@pytest.mark.parametrize("mode", ["rt", "wt", "r+t", "at", "xt", "", "rw", "q", "r++", "wa"])
def test_bad_and_text_modes_are_refused(fs: Filesystem, mode: str) -> None:
    fs.write_file("/f", b"keep")
    with pytest.raises(ValueError, match="invalid mode"):
        fs.open("/f", mode)
    with pytest.raises(ValueError, match="invalid mode"):
        fs.open("/new", mode)
    assert fs.read_file("/f") == b"keep"
    assert not fs.exists("/new")


def test_seek_tell_truncate(fs: Filesystem) -> None:
    fs.write_file("/f", b"0123456789")
    with raw(fs, "/f", "r+b") as f:
        assert f.seek(0, io.SEEK_END) == 10
        assert f.seek(-3, io.SEEK_CUR) == 7
        assert f.read(10) == b"789"
        assert f.tell() == 10
        assert f.seek(2) == 2
        assert f.truncate() == 2  # at the position
        assert fs.read_file("/f") == b"01"
        assert f.truncate(6) == 6  # extending leaves zeros
        assert fs.read_file("/f") == b"01" + bytes(4)
        assert f.tell() == 2  # truncate does not move the position
        f.seek(20)
        f.write(b"!")
        assert fs.read_file("/f") == b"01" + bytes(18) + b"!"
        with pytest.raises(ValueError, match="negative"):
            f.seek(-1)
        with pytest.raises(ValueError, match="negative"):
            f.seek(-100, io.SEEK_END)
        with pytest.raises(ValueError, match="whence"):
            f.seek(0, 7)
        with pytest.raises(ValueError, match="negative"):
            f.truncate(-1)
        buf = bytearray(4)
        f.seek(0)
        assert f.readinto(buf) == 4
        assert buf == b"01\0\0"
        assert f.readall() == bytes(16) + b"!"
    with pytest.raises(ValueError, match="closed"):
        f.read()
    with pytest.raises(ValueError, match="closed"):
        f.tell()


def test_buffering_zero_commits_every_write(env: Env) -> None:
    fs = env.fs
    g = fs.store.generation
    with raw(fs, "/f", "wb") as f:
        assert f.write(b"a") == 1
        assert f.write(memoryview(b"bcd")) == 3
        assert fs.read_file("/f") == b"abcd"
    assert fs.store.generation == g + 3  # create, then one commit per write
    with buffered(fs, "/g", "wb") as f:
        f.write(b"x" * 100)
        f.write(b"y" * 100)
        assert fs.read_file("/g") == b""  # still in the buffer
        gen = fs.store.generation
        f.flush()
        assert fs.store.generation == gen + 1
        assert fs.read_file("/g") == b"x" * 100 + b"y" * 100
    with buffered(fs, "/h", "wb", buffering=8) as f:
        f.write(b"0123456789abcdef")  # larger than the buffer: written through
        assert fs.read_file("/h") == b"0123456789abcdef"


def test_file_object_writes_join_a_transaction(env: Env) -> None:
    fs = env.fs
    before = tree(fs)

    def body() -> None:
        with buffered(fs, "/f", "wb") as f:
            f.write(pattern(5000))
        assert fs.read_file("/f") == pattern(5000)

    with pytest.raises(Boom):
        aborted(fs, body)
    assert tree(fs) == before
    with fs.transaction(), buffered(fs, "/f", "wb") as f:
        f.write(pattern(5000))
    assert env.reopen().read_file("/f") == pattern(5000)


def test_reading_a_removed_file_raises(fs: Filesystem) -> None:
    fs.write_file("/f", pattern(3000))
    r = raw(fs, "/f", "r+b")
    b = buffered(fs, "/f", "rb", buffering=100)
    assert r.read(4) == pattern(4)
    fs.remove("/f")
    with pytest.raises(PathNotFoundError):
        r.read(4)
    with pytest.raises(PathNotFoundError):
        r.readall()
    with pytest.raises(PathNotFoundError):
        r.write(b"x")
    with pytest.raises(PathNotFoundError):
        r.truncate(1)
    with pytest.raises(PathNotFoundError):
        r.seek(0, io.SEEK_END)
    with pytest.raises(PathNotFoundError):
        b.read()
    r.close()
    b.close()
    assert fs.fsck().ok


def test_a_removed_files_handle_does_not_reach_its_successor(fs: Filesystem) -> None:
    # The freed inode number is reused by the next file made; the old handle must not
    # read, or worse write, that other file.
    fs.write_file("/old", b"old data")
    f = raw(fs, "/old", "r+b")
    ino = fs.stat("/old").ino
    fs.remove("/old")
    fs.write_file("/new", b"NEW DATA")
    assert fs.stat("/new").ino == ino
    with pytest.raises(PathNotFoundError):
        f.read()
    with pytest.raises(PathNotFoundError):
        f.write(b"clobber")
    with pytest.raises(PathNotFoundError):
        f.truncate(0)
    f.close()
    assert fs.read_file("/new") == b"NEW DATA"


def test_handle_survives_rename_and_rolled_back_removal(fs: Filesystem) -> None:
    fs.write_file("/f", b"content")
    f = raw(fs, "/f", "rb")
    fs.rename("/f", "/g")
    assert f.read() == b"content"  # the handle follows the inode, not the name

    def body() -> None:
        fs.remove("/g")
        fs.create("/reuse")  # takes the inode /g had, then everything is rolled back
        assert fs.stat("/reuse").ino == ino

    ino = fs.stat("/g").ino
    with pytest.raises(Boom):
        aborted(fs, body)
    f.seek(0)
    assert f.read() == b"content"
    f.close()


def test_copyfileobj_through_buffered_reader(fs: Filesystem) -> None:
    data = os.urandom(60_000)
    fs.write_file("/src", data)
    reader = io.BufferedReader(raw(fs, "/src", "rb"), buffer_size=1000)
    sink = io.BytesIO()
    shutil.copyfileobj(reader, sink, length=777)
    assert sink.getvalue() == data
    reader.seek(0)
    with buffered(fs, "/dst", "wb") as dst:
        shutil.copyfileobj(reader, dst)
    reader.close()
    assert fs.read_file("/dst") == data
    with buffered(fs, "/dst", "rb") as f:
        assert f.read() == data
    assert fs.fsck().ok
