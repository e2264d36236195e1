"""`fsck`: verify the store, then every piece of filesystem metadata, and report it all.

The store check reads every reachable block again from the device and authenticates it.
The filesystem check then walks the tree from the root and cross-checks what it finds:
every inode reached exactly once with the kind its entry says, parent links, names, block
pointers in range and used once, no blocks past a file's size, block counts, the free-inode
chain, the bitmap against the blocks actually referenced, and the superblock's counters.
It reports every problem with where it is, instead of stopping at the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cvmstore.errors import CvmstoreError
from cvmstore.fs.layout import DIRECT, INODE_TABLE, ROOT, Inode, Kind
from cvmstore.fs.paths import MAX_NAME
from cvmstore.integrity.store import CheckReport, StoreState

if TYPE_CHECKING:
    from cvmstore.fs.filesystem import Filesystem

__all__ = ["FsckReport", "check_filesystem"]


@dataclass(slots=True)
class FsckReport:
    """Every problem found, and counts of what was verified."""

    problems: list[str] = field(default_factory=list)
    store: CheckReport | None = None
    directories: int = 0
    files: int = 0
    data_blocks: int = 0
    metadata_blocks: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary."""
        store = self.store
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "directories": self.directories,
            "files": self.files,
            "data_blocks": self.data_blocks,
            "metadata_blocks": self.metadata_blocks,
            "store_nodes": store.nodes if store else 0,
            "store_data_blocks": store.data_blocks if store else 0,
            "store_bitmap_blocks": store.bitmap_blocks if store else 0,
        }


class _StoreFailed(Exception):
    """The store failed during the check: stop, every later read would fail too."""


class _Checker:
    def __init__(self, fs: Filesystem, report: FsckReport) -> None:
        self.fs = fs
        self.sb = fs._sb
        self.report = report
        self.owner: dict[int, str] = {}  # logical block -> what uses it
        self.first_data = self.sb.bitmap_start + self.sb.bitmap_blocks

    def problem(self, text: str) -> None:
        self.report.problems.append(text)
        if self.fs.store.state is StoreState.FAILED:
            raise _StoreFailed  # what follows would only echo this failure

    def load(self, ino: int, where: str) -> Inode | None:
        """Inode `ino`, or None after reporting why it cannot be read."""
        try:
            return self.fs._inode(ino)
        except CvmstoreError as exc:
            self.problem(f"inode {ino} ({where}): {exc}")
            return None

    def claim(self, block: int, owner: str, *, metadata: bool) -> bool:
        if not self.first_data <= block < self.sb.total_blocks:
            self.problem(f"{owner}: points at block {block}, outside the data blocks")
            return False
        if block in self.owner:
            self.problem(f"{owner}: block {block} is also used by {self.owner[block]}")
            return False
        self.owner[block] = owner
        if metadata:
            self.report.metadata_blocks += 1
        else:
            self.report.data_blocks += 1
        return True

    def inode_blocks(self, ino: int, inode: Inode, where: str, *, data_is_meta: bool) -> None:
        """Claim the blocks of one inode and check them against its size and block count."""
        fs = self.fs
        bs = self.sb.block_size
        owner = f"inode {ino} ({where})"
        indirect = fs._map.indirect_blocks(inode)
        for block, _ in indirect:
            self.claim(block, f"{owner} indirect", metadata=True)
        highest = _highest_mapped(fs, inode)
        mapped = 0
        if highest is not None:
            for fb, block in enumerate(fs._map.lookup(inode, 0, highest + 1)):
                if block:
                    mapped += 1
                    self.claim(block, f"{owner} block {fb}", metadata=data_is_meta)
            if highest * bs >= inode.size:
                self.problem(f"{owner}: block {highest} lies past the size {inode.size}")
        if inode.blocks != mapped + len(indirect):
            self.problem(
                f"{owner}: records {inode.blocks} blocks but holds {mapped + len(indirect)}"
            )

    def run(self) -> None:
        sb = self.sb
        for block in range(self.first_data):
            self.owner[block] = "superblock" if block == 0 else "block bitmap"
        self.inode_blocks(INODE_TABLE, sb.table, "inode table", data_is_meta=True)
        if sb.table.size != -(-sb.inode_slots * 256 // sb.block_size) * sb.block_size:
            self.problem(
                f"inode table: size {sb.table.size} does not fit {sb.inode_slots} inode slots"
            )
        reached = self.walk_tree()
        free = self.free_chain()
        for ino in range(1, sb.inode_slots):
            if ino in reached or ino in free:
                continue
            inode = self.load(ino, "unreached")
            if inode is None:
                continue
            state = "in use" if inode.kind is not Kind.FREE else "free"
            self.problem(f"inode {ino}: {state} but neither linked nor on the free chain")
        if sb.live_inodes != len(reached):
            self.problem(
                f"superblock: counts {sb.live_inodes} live inodes, the tree has {len(reached)}"
            )
        self.bitmap()

    def walk_tree(self) -> set[int]:
        fs = self.fs
        reached = {ROOT}
        stack: list[tuple[int, str, int]] = [(ROOT, "/", ROOT)]
        while stack:
            ino, path, parent = stack.pop()
            inode = self.load(ino, path)
            if inode is None:
                continue
            if inode.kind is not Kind.DIR:
                self.problem(f"inode {ino} ({path}): a directory entry says directory")
                continue
            self.report.directories += 1
            if inode.parent != parent:
                self.problem(f"inode {ino} ({path}): parent is {inode.parent}, not {parent}")
            self.inode_blocks(ino, inode, path, data_is_meta=True)
            if inode.size % self.sb.block_size:
                self.problem(f"inode {ino} ({path}): directory size {inode.size} is partial")
            try:
                items = fs._dir(ino).items()
            except CvmstoreError as exc:
                self.problem(f"directory {path}: {exc}")
                continue
            for name, child, kind in items:
                child_path = self.name_path(path, name)
                if not 0 < child < self.sb.inode_slots:
                    self.problem(f"{child_path}: inode {child} is outside the inode table")
                    continue
                if child in reached:
                    self.problem(f"{child_path}: inode {child} is linked more than once")
                    continue
                reached.add(child)
                if kind is Kind.DIR:
                    stack.append((child, child_path, ino))
                else:
                    self.file(child, child_path)
        return reached

    def name_path(self, path: str, name: bytes) -> str:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            text = name.decode("utf-8", errors="replace")
            self.problem(f"{path}: the name {name!r} is not UTF-8")
        if b"/" in name or b"\0" in name or name in (b".", b"..") or len(name) > MAX_NAME:
            self.problem(f"{path}: the name {name!r} is not allowed")
        return f"{path.rstrip('/')}/{text}"

    def file(self, ino: int, path: str) -> None:
        inode = self.load(ino, path)
        if inode is None:
            return
        if inode.kind is not Kind.FILE:
            kind = inode.kind.name.lower()
            self.problem(f"inode {ino} ({path}): a directory entry says file, it is {kind}")
            return
        self.report.files += 1
        self.inode_blocks(ino, inode, path, data_is_meta=False)

    def free_chain(self) -> set[int]:
        seen: set[int] = set()
        ino = self.sb.free_inode_head
        while ino:
            if ino in seen or not 0 < ino < self.sb.inode_slots:
                self.problem(f"free-inode chain: loops or leaves the table at inode {ino}")
                break
            seen.add(ino)
            inode = self.load(ino, "free chain")
            if inode is None:
                break
            if inode.kind is not Kind.FREE:
                self.problem(f"free-inode chain: inode {ino} is in use")
                break
            if inode.size or inode.blocks or any(inode.pointers):
                self.problem(f"inode {ino} (free): still records blocks")
            ino = inode.next_free
        return seen

    def bitmap(self) -> None:
        fs = self.fs
        sb = self.sb
        bits = sb.block_size * 8
        used = 0
        for j in range(sb.bitmap_blocks):
            bm = bytes(fs._meta.get(sb.bitmap_start + j))
            for byte_index, value in enumerate(bm):
                if not value:
                    continue
                for b in range(8):
                    if value >> b & 1:
                        block = j * bits + byte_index * 8 + b
                        if block >= sb.total_blocks:
                            self.problem(f"block bitmap: bit {block} set past the last block")
                            continue
                        used += 1
                        if block not in self.owner:
                            self.problem(f"block {block}: marked used but nothing refers to it")
        for block, owner in sorted(self.owner.items()):
            if not fs._bitmap.is_used(block):
                self.problem(f"block {block}: used by {owner} but marked free")
        if used != sb.used_blocks:
            self.problem(f"superblock: counts {sb.used_blocks} used blocks, the bitmap {used}")


def _highest_mapped(fs: Filesystem, inode: Inode) -> int | None:
    """The highest file block that has a block, or None."""
    candidates = [fb for fb in range(DIRECT) if inode.pointers[fb]]
    if any(inode.pointers[DIRECT:]):
        span = fs._map.max_blocks
        blocks = fs._map.lookup(inode, DIRECT, min(span - DIRECT, _scan_limit(fs, inode)))
        candidates += [DIRECT + k for k, block in enumerate(blocks) if block]
    return max(candidates) if candidates else None


def _scan_limit(fs: Filesystem, inode: Inode) -> int:
    """How many file blocks past the direct ones to scan.

    Up to the size, plus one indirect block's worth, so blocks mapped past the size are seen.
    """
    bs = fs._sb.block_size
    return max(0, -(-inode.size // bs) - DIRECT) + fs._map.per_block


def check_filesystem(
    fs: Filesystem, progress: Callable[[int, int], None] | None = None
) -> FsckReport:
    """Run the store check, then the filesystem check (see the module docstring).

    `progress` gets (done, total) in leaf nodes of the store's tree.
    """
    report = FsckReport()
    store_report = fs.store.check(progress)
    report.store = store_report
    report.problems += [f"store: {problem}" for problem in store_report.problems]
    try:
        _Checker(fs, report).run()
    except _StoreFailed:
        pass
    except CvmstoreError as exc:
        report.problems.append(f"filesystem check stopped: {exc}")
    if fs.store.state is StoreState.FAILED:
        report.problems.append(
            "the filesystem check stopped: the store refuses further reads after an "
            "integrity failure"
        )
    return report
