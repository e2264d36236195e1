"""fsck: clean on a busy tree, and every deliberate break of the metadata is reported, with where.

Each corruption case starts from the same busy tree, changes filesystem metadata on purpose
through the store (`fs.store.write_blocks(...)` then `fs.store.commit()`: authentic bytes
that say the wrong thing) or flips a ciphertext byte on the device, reopens the filesystem,
and checks that fsck reports exactly the expected problems, each naming the block, inode or
path it is about. Cases keep the rest consistent where they can (a cleared bitmap bit also
lowers the superblock's count, ...), so each shows up as its own problem and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from cvmstore.block.memory import MemoryDevice
from cvmstore.errors import IntegrityError
from cvmstore.fs import Filesystem, make_filesystem, open_filesystem
from cvmstore.fs.layout import (
    DIRECT,
    ROOT,
    Inode,
    Kind,
    Superblock,
    decode_dir_block,
    encode_dir_block,
)
from cvmstore.integrity import MemoryAnchor
from cvmstore.testing import flip_bit

SECRET = bytes(range(32))
BS = 512
PER_BLOCK = BS // 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000_000

    def __call__(self) -> int:
        self.now += 1000
        return self.now


def fill(size: int, seed: int) -> bytes:
    return bytes((i * 11 + seed) % 253 for i in range(size))


@dataclasses.dataclass
class Busy:
    device: MemoryDevice
    anchor: MemoryAnchor
    fs: Filesystem

    def reopen(self) -> Filesystem:
        self.fs.close()
        self.fs = open_filesystem(self.device, SECRET, self.anchor, clock=FakeClock())
        return self.fs


def build_busy() -> Busy:
    """Nested directories, files of every pointer kind, a sparse file, removals, renames."""
    device, anchor = MemoryDevice(512, BS), MemoryAnchor()
    fs = make_filesystem(device, SECRET, anchor, clock=FakeClock())
    fs.write_file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", parents=True)
    fs.write_file("/etc/hosts", fill(3 * BS + 10, 1))
    fs.write_file("/var/log/big", fill((DIRECT + PER_BLOCK + 5) * BS, 2), parents=True)
    fs.write_file("/var/log/mid", fill((DIRECT + 3) * BS, 3))
    fs.create("/var/sparse")
    fs.write("/var/sparse", 40 * BS, b"hole before me")
    fs.mkdir("/home/user/docs", parents=True)
    for i in range(40):  # more than one directory block
        fs.write_file(f"/home/user/docs/note{i:02d}", f"note {i}".encode())
    fs.mkdir("/tmp/empty", parents=True)
    fs.rename("/home/user/docs/note39", "/etc/note")
    fs.rename("/home/user", "/home/someone")
    with fs.transaction():
        fs.write_file("/a", b"A" * 500)
        fs.write_file("/b", b"B" * 500)
    fs.write_file("/tmp/gone1", b"x")
    fs.write_file("/tmp/gone2", fill(2 * BS, 4))
    fs.remove("/tmp/gone1")
    fs.remove("/tmp/gone2")  # two inodes on the free chain
    return Busy(device, anchor, fs)


@pytest.fixture
def busy() -> Iterator[Busy]:
    b = build_busy()
    yield b
    b.fs.close()


# ---------------------------------------------------------------- helpers that break things


def ino_of(fs: Filesystem, path: str) -> int:
    return fs.stat(path).ino


def data_block(fs: Filesystem, path: str, fb: int = 0) -> int:
    (block,) = fs._map.lookup(fs._inode(ino_of(fs, path)), fb, 1)
    assert block
    return block


def commit_raw(fs: Filesystem, block: int, data: bytes) -> None:
    """Write authentic but wrong bytes to a logical block, past the filesystem's caches."""
    assert len(data) == BS
    fs.store.write_blocks(block, data)
    fs.store.commit()


def edit_superblock(fs: Filesystem, change: Callable[[Superblock], None]) -> None:
    sb = Superblock.decode(fs.store.read(0))
    change(sb)
    commit_raw(fs, 0, sb.encode())


def edit_inode(fs: Filesystem, ino: int, change: Callable[[Inode], None]) -> None:
    block, offset = fs._inode_block(ino)
    buf = bytearray(fs.store.read(block))
    inode = Inode.decode(buf, offset, ino)
    change(inode)
    inode.encode_into(buf, offset)
    commit_raw(fs, block, bytes(buf))


def set_bit(fs: Filesystem, block: int, used: bool) -> None:
    bits = BS * 8
    where = fs._sb.bitmap_start + block // bits
    buf = bytearray(fs.store.read(where))
    bit = block % bits
    if used:
        buf[bit >> 3] |= 1 << (bit & 7)
    else:
        buf[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF
    commit_raw(fs, where, bytes(buf))


def edit_dir(
    fs: Filesystem, path: str, change: Callable[[dict[bytes, tuple[int, Kind]]], None]
) -> None:
    """Change the records of a directory's first block."""
    inode = fs._inode(ino_of(fs, path))
    (block,) = fs._map.lookup(inode, 0, 1)
    entries = decode_dir_block(fs.store.read(block), path)
    change(entries)
    commit_raw(fs, block, encode_dir_block(entries, BS))


def free_block(fs: Filesystem) -> int:
    """A block the bitmap marks free."""
    first = fs._sb.bitmap_start + fs._sb.bitmap_blocks
    for block in range(fs._sb.total_blocks - 1, first, -1):
        if not fs._bitmap.is_used(block):
            return block
    raise AssertionError("no free block")


def free_inode(fs: Filesystem) -> int:
    assert fs._sb.free_inode_head
    return fs._sb.free_inode_head


# ---------------------------------------------------------------- the cases


@dataclasses.dataclass(frozen=True)
class Expect:
    """What fsck must report: one distinct problem containing each of `required`; any other
    problem must contain one of `tolerated` (the follow-on damage of a break)."""

    required: list[str]
    tolerated: tuple[str, ...] = ()


# Each case breaks the busy filesystem and says what fsck must report.
Case = Callable[[Busy], list[str] | Expect]
CASES: dict[str, Case] = {}


def case(func: Case) -> Case:
    CASES[func.__name__] = func
    return func


@case
def bitmap_bit_cleared_for_a_used_block(b: Busy) -> list[str]:
    fs = b.fs
    block = data_block(fs, "/etc/hosts", 2)
    ino = ino_of(fs, "/etc/hosts")
    set_bit(fs, block, False)
    edit_superblock(fs, lambda sb: setattr(sb, "used_blocks", sb.used_blocks - 1))
    return [f"block {block}: used by inode {ino} (/etc/hosts) block 2 but marked free"]


@case
def bitmap_bit_cleared_for_an_indirect_block(b: Busy) -> list[str]:
    fs = b.fs
    ino = ino_of(fs, "/var/log/big")
    single = fs._inode(ino).pointers[DIRECT]
    set_bit(fs, single, False)
    edit_superblock(fs, lambda sb: setattr(sb, "used_blocks", sb.used_blocks - 1))
    return [f"block {single}: used by inode {ino} (/var/log/big) indirect but marked free"]


@case
def leaked_block(b: Busy) -> list[str]:
    fs = b.fs
    block = free_block(fs)
    set_bit(fs, block, True)
    edit_superblock(fs, lambda sb: setattr(sb, "used_blocks", sb.used_blocks + 1))
    return [f"block {block}: marked used but nothing refers to it"]


@case
def directory_entry_points_at_a_free_inode(b: Busy) -> list[str]:
    fs = b.fs
    ino = free_inode(fs)
    live = fs._sb.live_inodes
    edit_dir(fs, "/tmp", lambda entries: entries.update({b"ghost": (ino, Kind.FILE)}))
    return [
        f"inode {ino} (/tmp/ghost): a directory entry says file, it is free",
        f"superblock: counts {live} live inodes, the tree has {live + 1}",
    ]


@case
def wrong_superblock_used_count(b: Busy) -> list[str]:
    fs = b.fs
    used = fs._sb.used_blocks
    edit_superblock(fs, lambda sb: setattr(sb, "used_blocks", used + 5))
    return [f"superblock: counts {used + 5} used blocks, the bitmap {used}"]


@case
def wrong_superblock_live_inode_count(b: Busy) -> list[str]:
    fs = b.fs
    live = fs._sb.live_inodes
    edit_superblock(fs, lambda sb: setattr(sb, "live_inodes", live - 1))
    return [f"superblock: counts {live - 1} live inodes, the tree has {live}"]


@case
def inode_block_count_wrong(b: Busy) -> list[str]:
    fs = b.fs
    ino = ino_of(fs, "/var/log/big")
    blocks = fs._inode(ino).blocks
    edit_inode(fs, ino, lambda inode: setattr(inode, "blocks", blocks + 3))
    return [f"inode {ino} (/var/log/big): records {blocks + 3} blocks but holds {blocks}"]


@case
def block_referenced_twice(b: Busy) -> list[str]:
    fs = b.fs
    shared = data_block(fs, "/a")
    own = data_block(fs, "/b")
    ino_b = ino_of(fs, "/b")
    # /b's block 0 now points at /a's; its own block is freed so nothing else is off
    edit_inode(fs, ino_b, lambda inode: inode.pointers.__setitem__(0, shared))
    set_bit(fs, own, False)
    edit_superblock(fs, lambda sb: setattr(sb, "used_blocks", sb.used_blocks - 1))
    # whichever of the two is walked second is the one reported, naming the first
    return [f"block {shared} is also used by inode"]


@case
def pointer_outside_the_data_blocks(b: Busy) -> list[str]:
    fs = b.fs
    ino = ino_of(fs, "/etc/passwd")
    own = data_block(fs, "/etc/passwd")
    edit_inode(fs, ino, lambda inode: inode.pointers.__setitem__(0, 1))  # the bitmap block
    set_bit(fs, own, False)
    edit_superblock(fs, lambda sb: setattr(sb, "used_blocks", sb.used_blocks - 1))
    return [f"inode {ino} (/etc/passwd) block 0: points at block 1, outside the data blocks"]


@case
def block_mapped_past_the_size(b: Busy) -> list[str]:
    fs = b.fs
    ino = ino_of(fs, "/etc/hosts")  # 4 blocks
    edit_inode(fs, ino, lambda inode: setattr(inode, "size", BS + 1))
    return [f"inode {ino} (/etc/hosts): block 3 lies past the size {BS + 1}"]


@case
def entry_kind_disagrees_with_the_inode(b: Busy) -> list[str]:
    fs = b.fs
    ino = ino_of(fs, "/etc/passwd")
    block = data_block(fs, "/etc/passwd")
    edit_dir(fs, "/etc", lambda entries: entries.update({b"passwd": (ino, Kind.DIR)}))
    # not being a directory, its blocks are not walked: they look leaked
    return [
        f"inode {ino} (/etc/passwd): a directory entry says directory",
        f"block {block}: marked used but nothing refers to it",
    ]


@case
def wrong_parent_link(b: Busy) -> list[str]:
    fs = b.fs
    ino = ino_of(fs, "/var/log")
    parent = ino_of(fs, "/var")
    edit_inode(fs, ino, lambda inode: setattr(inode, "parent", ROOT))
    return [f"inode {ino} (/var/log): parent is {ROOT}, not {parent}"]


@case
def inode_linked_twice(b: Busy) -> list[str]:
    fs = b.fs
    ino = ino_of(fs, "/etc/hosts")
    edit_dir(fs, "/tmp", lambda entries: entries.update({b"alias": (ino, Kind.FILE)}))
    return [f"inode {ino} is linked more than once"]


@case
def forbidden_name_in_a_directory(b: Busy) -> list[str]:
    fs = b.fs

    def rename_entry(entries: dict[bytes, tuple[int, Kind]]) -> None:
        entries[b".."] = entries.pop(b"hosts")

    edit_dir(fs, "/etc", rename_entry)
    return ["/etc: the name b'..' is not allowed"]


@case
def orphaned_inode(b: Busy) -> list[str]:
    fs = b.fs
    ino = ino_of(fs, "/a")
    block = data_block(fs, "/a")
    live = fs._sb.live_inodes
    edit_dir(fs, "/", lambda entries: entries.__delitem__(b"a"))
    return [
        f"inode {ino}: in use but neither linked nor on the free chain",
        f"superblock: counts {live} live inodes, the tree has {live - 1}",
        f"block {block}: marked used but nothing refers to it",
    ]


@case
def free_chain_loops(b: Busy) -> list[str]:
    fs = b.fs
    ino = free_inode(fs)
    second = fs._inode(ino).next_free
    assert second
    edit_inode(fs, ino, lambda inode: setattr(inode, "next_free", ino))
    # the inode that was second on the chain is now on it no more
    return [
        f"free-inode chain: loops or leaves the table at inode {ino}",
        f"inode {second}: free but neither linked nor on the free chain",
    ]


@case
def free_inode_still_records_blocks(b: Busy) -> list[str]:
    fs = b.fs
    ino = free_inode(fs)
    edit_inode(fs, ino, lambda inode: setattr(inode, "size", 5))
    return [f"inode {ino} (free): still records blocks"]


@case
def directory_with_a_hole(b: Busy) -> Expect:
    fs = b.fs
    ino = ino_of(fs, "/home/someone/docs")
    inode = fs._inode(ino)
    assert inode.size == 2 * BS
    first = inode.pointers[0]
    edit_inode(fs, ino, lambda i: i.pointers.__setitem__(0, 0))
    set_bit(fs, first, False)
    edit_superblock(fs, lambda sb: setattr(sb, "used_blocks", sb.used_blocks - 1))
    # the directory cannot be read, so every inode in it is unreachable and its blocks look
    # leaked (test_directory_hole_reports_the_lost_entries checks them one by one)
    return Expect(
        [
            f"directory /home/someone/docs: directory inode {ino} has a hole",
            f"inode {ino} (/home/someone/docs): records 2 blocks but holds 1",
        ],
        ("in use but neither linked", "live inodes", "marked used but nothing refers"),
    )


@case
def data_block_tampered_on_the_device(b: Busy) -> list[str]:
    fs = b.fs
    block = data_block(fs, "/var/log/mid", 5)
    physical = fs.store._nodes.leaf(block).physical
    b.fs.close()
    flip_bit(b.device, physical, 8 * 100 + 3)  # a byte inside the ciphertext
    return [f"store: data block fails authentication [logical block {block} at block {physical}]"]


@case
def directory_block_tampered_on_the_device(b: Busy) -> Expect:
    fs = b.fs
    inode = fs._inode(ino_of(fs, "/etc"))
    (block,) = fs._map.lookup(inode, 0, 1)
    physical = fs.store._nodes.leaf(block).physical
    b.fs.close()
    flip_bit(b.device, physical, 8 * 20)
    where = f"[logical block {block} at block {physical}]"
    # the store fails at the first bad read: the check stops there and says so, rather than
    # report the follow-on effects (orphaned-looking inodes, an unreadable bitmap)
    return Expect(
        [
            f"store: data block fails authentication {where}",
            f"directory /etc: data block fails authentication {where}",
            "the filesystem check stopped: the store refuses further reads",
        ],
        (),
    )


EXPECTED_CASES = 20


def test_fsck_is_clean_on_a_busy_tree(busy: Busy) -> None:
    report = busy.fs.fsck()
    assert report.ok, report.problems
    assert report.problems == []
    assert (report.directories, report.files) == (9, 47)
    store = report.store
    assert store is not None
    assert store.ok
    # every filesystem block is a store data block: the superblock, the bitmap block, and
    # what fsck counted as data and metadata
    assert 2 + report.data_blocks + report.metadata_blocks == busy.fs.usage().used_blocks
    assert store.data_blocks == busy.fs.usage().used_blocks
    summary = report.to_dict()
    assert summary["ok"] is True
    assert summary["files"] == 47
    report = busy.reopen().fsck()
    assert report.ok, report.problems


def test_every_case_is_counted() -> None:
    assert len(CASES) == EXPECTED_CASES


@pytest.mark.parametrize("name", sorted(CASES))
def test_fsck_reports_the_break(name: str) -> None:
    b = build_busy()
    assert b.fs.fsck().ok
    expected = CASES[name](b)
    if isinstance(expected, list):
        expected = Expect(expected)
    if b.fs._closed:
        b.fs = open_filesystem(b.device, SECRET, b.anchor)
    else:
        b.reopen()
    report = b.fs.fsck()
    assert not report.ok
    unmatched = list(report.problems)
    for want in expected.required:
        hits = [problem for problem in unmatched if want in problem]
        assert hits, f"{name}: {want!r} not among {report.problems}"
        unmatched.remove(hits[0])
    unexpected = [p for p in unmatched if not any(t in p for t in expected.tolerated)]
    assert unexpected == [], f"{name}: unexpected problems {unexpected}"
    assert not report.to_dict()["ok"]
    b.fs.close()


def test_all_cases_detected_together() -> None:
    """Run every case in turn and count them, so a case that stops being detected shows."""
    detected = 0
    for _name, func in CASES.items():
        b = build_busy()
        func(b)
        fs = open_filesystem(b.device, SECRET, b.anchor) if b.fs._closed else b.reopen()
        if not fs.fsck().ok:
            detected += 1
        fs.close()
    assert detected == len(CASES) == EXPECTED_CASES


def test_directory_hole_reports_the_lost_entries() -> None:
    b = build_busy()
    fs = b.fs
    lost = {ino_of(fs, f"/home/someone/docs/note{i:02d}") for i in range(39)}
    lost_blocks = {data_block(fs, f"/home/someone/docs/note{i:02d}") for i in range(39)}
    live = fs._sb.live_inodes
    CASES["directory_with_a_hole"](b)
    report = b.reopen().fsck()
    orphans = {
        int(p.split()[1].rstrip(":"))
        for p in report.problems
        if p.endswith("in use but neither linked nor on the free chain")
    }
    leaked = {int(p.split()[1].rstrip(":")) for p in report.problems if "nothing refers" in p}
    assert orphans == lost
    assert leaked == lost_blocks  # the directory's own second block is still claimed
    assert f"superblock: counts {live} live inodes, the tree has {live - 39}" in report.problems
    b.fs.close()


def test_tampered_data_block_is_an_integrity_error_on_read(busy: Busy) -> None:
    fs = busy.fs
    block = data_block(fs, "/var/log/mid", 5)
    physical = fs.store._nodes.leaf(block).physical
    fs.close()
    flip_bit(busy.device, physical, 8 * 100 + 3)
    fs = busy.fs = open_filesystem(busy.device, SECRET, busy.anchor)
    assert fs.read("/var/log/mid", 0, 5 * BS) == fill(5 * BS, 3)  # blocks before it are fine
    with pytest.raises(IntegrityError) as info:
        fs.read_file("/var/log/mid")
    assert info.value.location == f"logical block {block} at block {physical}"
