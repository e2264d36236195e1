"""Where a file's blocks are: 12 direct pointers, then single, double and triple indirect.

An indirect block is `block_size / 8` little-endian u64 block numbers. A zero pointer is a
hole (it reads as zeros; the subtree below it does not exist). With 4 KiB blocks a file can
hold 12 + 512 + 512² + 512³ blocks, about 513 GiB.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cvmstore.errors import FsError
from cvmstore.fs.layout import DIRECT, Inode
from cvmstore.fs.meta import MetaCache

__all__ = ["BlockMap"]

Allocate = Callable[[int], list[int]]
Free = Callable[[list[int]], None]


class BlockMap:
    """Reads and changes the pointer trees of inodes, with metadata through `meta`."""

    def __init__(self, meta: MetaCache, allocate: Allocate, free: Free) -> None:
        self._meta = meta
        self._allocate = allocate
        self._free = free
        self.per_block = meta.block_size // 8
        p = self.per_block
        # (first file block, depth) of the single, double and triple indirect trees
        self._trees = ((DIRECT, 1), (DIRECT + p, 2), (DIRECT + p + p * p, 3))
        self.max_blocks = DIRECT + p + p * p + p * p * p

    def _locate(self, fb: int) -> tuple[int, int, int]:
        """(pointer slot in the inode, depth, index within that tree) of file block `fb`."""
        if fb < 0 or fb >= self.max_blocks:
            raise FsError(f"file block {fb} is beyond the largest file this block size allows")
        for k, (base, depth) in enumerate(self._trees):
            if fb < base + self.per_block**depth:
                return DIRECT + k, depth, fb - base
        raise AssertionError("unreachable")

    def lookup(self, inode: Inode, first: int, count: int) -> list[int]:
        """Logical block numbers of file blocks `first .. first+count-1` (0 for holes)."""
        out: list[int] = []
        fb = first
        end = first + count
        while fb < end:
            if fb < DIRECT:
                take = min(end, DIRECT) - fb
                out.extend(inode.pointers[fb : fb + take])
                fb += take
                continue
            slot, depth, rel = self._locate(fb)
            leaf = self._leaf(inode.pointers[slot], depth, rel)
            index = rel % self.per_block
            take = min(end - fb, self.per_block - index)
            if leaf == 0:
                out.extend([0] * take)
            else:
                out.extend(struct.unpack_from(f"<{take}Q", self._meta.get(leaf), index * 8))
            fb += take
        return out

    def _leaf(self, pointer: int, depth: int, rel: int) -> int:
        """The indirect block that holds the pointer for `rel`, or 0 if the path is a hole."""
        for level in range(depth - 1, 0, -1):
            if pointer == 0:
                return 0
            index = rel // self.per_block**level % self.per_block
            (pointer,) = struct.unpack_from("<Q", self._meta.get(pointer), index * 8)
        return pointer

    def assign(self, inode: Inode, first: int, blocks: list[int]) -> None:
        """Point file blocks `first ..` at `blocks`, making indirect blocks on the way."""
        k = 0
        while k < len(blocks):
            fb = first + k
            if fb < DIRECT:
                inode.pointers[fb] = blocks[k]
                k += 1
                continue
            slot, depth, rel = self._locate(fb)
            if inode.pointers[slot] == 0:
                inode.pointers[slot] = self._new_indirect(inode)
            leaf = inode.pointers[slot]
            for level in range(depth - 1, 0, -1):
                index = rel // self.per_block**level % self.per_block
                node = self._meta.get(leaf)
                (child,) = struct.unpack_from("<Q", node, index * 8)
                if child == 0:
                    child = self._new_indirect(inode)
                    node = self._meta.get(leaf)
                    struct.pack_into("<Q", node, index * 8, child)
                    self._meta.mark_dirty(leaf)
                leaf = child
            index = rel % self.per_block
            take = min(len(blocks) - k, self.per_block - index)
            node = self._meta.get(leaf)
            struct.pack_into(f"<{take}Q", node, index * 8, *blocks[k : k + take])
            self._meta.mark_dirty(leaf)
            k += take

    def _new_indirect(self, inode: Inode) -> int:
        (block,) = self._allocate(1)
        self._meta.fresh(block)
        inode.blocks += 1
        return block

    def cut(self, inode: Inode, keep: int) -> None:
        """Free every file block from `keep` on, and indirect blocks left with nothing."""
        doomed: list[int] = []
        for fb in range(keep, DIRECT):
            if inode.pointers[fb]:
                doomed.append(inode.pointers[fb])
                inode.pointers[fb] = 0
        for k, (base, depth) in enumerate(self._trees):
            slot = DIRECT + k
            if inode.pointers[slot] and self._cut_tree(
                inode.pointers[slot], depth, base, keep, doomed
            ):
                doomed.append(inode.pointers[slot])
                inode.pointers[slot] = 0
        inode.blocks -= len(doomed)
        self._free(doomed)

    def _cut_tree(self, node: int, depth: int, base: int, keep: int, doomed: list[int]) -> bool:
        """Cut the subtree at `node` covering file blocks from `base`; True if it is now empty."""
        span = self.per_block ** (depth - 1)  # file blocks under one pointer of this node
        if keep >= base + span * self.per_block:
            return False
        block = self._meta.get(node)
        pointers = list(struct.unpack_from(f"<{self.per_block}Q", block))
        changed = False
        for index, child in enumerate(pointers):
            start = base + index * span
            if child == 0 or start + span <= keep:
                continue
            if depth == 1:
                doomed.append(child)
            elif not self._cut_tree(child, depth - 1, start, keep, doomed):
                continue
            else:
                doomed.append(child)
            pointers[index] = 0
            changed = True
        if not any(pointers):
            return True
        if changed:
            struct.pack_into(f"<{self.per_block}Q", block, 0, *pointers)
            self._meta.mark_dirty(node)
        return False

    def indirect_blocks(self, inode: Inode) -> list[tuple[int, int]]:
        """Every (indirect block, depth) of `inode`, for checking and accounting."""
        found: list[tuple[int, int]] = []
        for k, (_, depth) in enumerate(self._trees):
            if inode.pointers[DIRECT + k]:
                self._collect(inode.pointers[DIRECT + k], depth, found)
        return found

    def _collect(self, node: int, depth: int, found: list[tuple[int, int]]) -> None:
        found.append((node, depth))
        if depth > 1:
            for child in struct.unpack_from(f"<{self.per_block}Q", self._meta.get(node)):
                if child:
                    self._collect(child, depth - 1, found)

    def indirect_needed(self, first: int, count: int) -> int:
        """An upper bound on indirect blocks a write of `count` blocks at `first` may add."""
        if first + count <= DIRECT:
            return 0
        return 2 * (count // self.per_block) + 6
