"""Metadata blocks and logical-block allocation, cached and written back at commit.

Metadata (the superblock, bitmap, inode table, directory and indirect blocks) changes many
times inside one transaction; writing each change through to the store would encrypt and
write the same block again and again. `MetaCache` keeps decoded copies, marks the changed
ones, and hands them to the store once, just before the store commits. After an abort,
everything cached is dropped, since it may hold changes the store no longer has.

File data does not go through this cache: it is written to the store as it comes.
"""

from __future__ import annotations

import re

from cvmstore.errors import DeviceFullError
from cvmstore.integrity.store import SecureStore

__all__ = ["BlockBitmap", "MetaCache"]

_NOT_FULL = re.compile(rb"[^\xff]")
_CLEAN_LIMIT = 8192  # clean blocks kept before the cache is trimmed (32 MiB at 4 KiB)


class MetaCache:
    """Logical metadata blocks of one store: cached reads, write-back of changes."""

    def __init__(self, store: SecureStore) -> None:
        self._store = store
        self.block_size = store.block_size
        self._blocks: dict[int, bytearray] = {}
        self._dirty: set[int] = set()

    def get(self, index: int) -> bytearray:
        """The block's bytes; mutate them in place, then call `mark_dirty`."""
        block = self._blocks.get(index)
        if block is None:
            if len(self._blocks) >= _CLEAN_LIMIT + len(self._dirty):
                self._trim()
            block = bytearray(self._store.read(index))
            self._blocks[index] = block
        return block

    def fresh(self, index: int) -> bytearray:
        """A zeroed block for a newly allocated `index` (not read from the store)."""
        block = bytearray(self.block_size)
        self._blocks[index] = block
        self._dirty.add(index)
        return block

    def put(self, index: int, data: bytes) -> None:
        """Replace the whole block."""
        self._blocks[index] = bytearray(data)
        self._dirty.add(index)

    def mark_dirty(self, index: int) -> None:
        """Record that the cached copy of `index` changed."""
        self._dirty.add(index)

    def forget(self, index: int) -> None:
        """The block was freed: drop it, changed or not."""
        self._blocks.pop(index, None)
        self._dirty.discard(index)

    @property
    def dirty_count(self) -> int:
        """Changed blocks not yet handed to the store."""
        return len(self._dirty)

    def write_back(self) -> None:
        """Hand every changed block to the store (in runs of consecutive blocks)."""
        order = sorted(self._dirty)
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and order[end] == order[end - 1] + 1 and end - start < 256:
                end += 1
            data = b"".join(self._blocks[i] for i in order[start:end])
            self._store.write_blocks(order[start], data)
            start = end
        self._dirty.clear()

    def drop(self) -> None:
        """Forget everything (after an abort)."""
        self._blocks.clear()
        self._dirty.clear()

    def _trim(self) -> None:
        for index in [i for i in self._blocks if i not in self._dirty]:
            del self._blocks[index]


class BlockBitmap:
    """Which logical blocks the filesystem uses: bitmap blocks at `start`, next-fit cursor."""

    def __init__(
        self, meta: MetaCache, start: int, count: int, total: int, first_free: int
    ) -> None:
        self._meta = meta
        self._start = start
        self._bits = meta.block_size * 8
        self._count = count
        self._total = total
        self._cursor = first_free
        self._first_data = first_free

    def is_used(self, block: int) -> bool:
        """Whether `block` is marked in use."""
        bm = self._meta.get(self._start + block // self._bits)
        bit = block % self._bits
        return bool(bm[bit >> 3] >> (bit & 7) & 1)

    def set(self, block: int, used: bool) -> None:
        """Mark `block` used or free."""
        index = self._start + block // self._bits
        bm = self._meta.get(index)
        bit = block % self._bits
        if used:
            bm[bit >> 3] |= 1 << (bit & 7)
        else:
            bm[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF
        self._meta.mark_dirty(index)

    def allocate(self, count: int, free: int) -> list[int]:
        """Take `count` free blocks (next fit, so runs stay consecutive) and mark them used.

        `free` is how many blocks the caller's counters say are free.

        Raises:
            DeviceFullError: fewer than `count` blocks are free; nothing was taken.
        """
        if count > free:
            raise DeviceFullError(
                f"the filesystem needs {count} more blocks but only {free} are free"
            )
        taken: list[int] = []
        position = self._cursor
        wrapped = False
        while len(taken) < count:
            if position >= self._total:
                if wrapped:
                    raise DeviceFullError("the block bitmap has fewer free blocks than counted")
                position, wrapped = self._first_data, True
            j, bit = divmod(position, self._bits)
            bm = self._meta.get(self._start + j)
            limit = min(self._bits, self._total - j * self._bits)
            byte = bit >> 3
            while len(taken) < count and bit < limit:
                match = _NOT_FULL.search(bm, byte, (limit + 7) >> 3)
                if match is None:
                    break
                byte = match.start()
                value = bm[byte]
                for b in range(8):
                    candidate = (byte << 3) + b
                    if candidate < bit or candidate >= limit or value >> b & 1:
                        continue
                    value |= 1 << b
                    taken.append(j * self._bits + candidate)
                    if len(taken) == count:
                        break
                bm[byte] = value
                self._meta.mark_dirty(self._start + j)
                byte += 1
                bit = byte << 3
            position = (j + 1) * self._bits
        self._cursor = taken[-1] + 1 if taken else self._cursor
        return taken
