"""Copy-on-write allocation of data-area blocks, with a bitmap kept under the tree.

A data write never overwrites a block the committed state references: it takes a free block
(next-fit from a cursor, so the writes of a commit land in runs, which turns random logical
writes into mostly sequential physical ones). The block it replaces is freed only when the
commit lands, so it cannot be reused by the same commit. A block allocated and then rewritten
within one commit is reused in place: the committed state never saw it.

The bitmap (one bit per data-area block) is itself stored as leaves of the tree, so it is
encrypted and authenticated like everything else, and loaded lazily, one block at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from cvmstore.errors import DeviceFullError
from cvmstore.integrity.geometry import Geometry

__all__ = ["Allocator"]

_NOT_FULL = re.compile(rb"[^\xff]")


class Allocator:
    """Free-space state of one open store: committed bitmap plus this commit's changes."""

    def __init__(
        self,
        geometry: Geometry,
        load: Callable[[int], bytes],
        cursor: int,
        used: int,
    ) -> None:
        self._geo = geometry
        self._load = load
        self._maps: dict[int, bytearray] = {}
        self._bits = geometry.block_size * 8
        self._data_start = geometry.data_start
        self.cursor = cursor % geometry.data_blocks
        self._committed_used = used
        self.pending_alloc: set[int] = set()
        self.pending_free: set[int] = set()
        self.dirty: set[int] = set()

    @property
    def used(self) -> int:
        """Data blocks in use, counting this commit's changes."""
        return self._committed_used + len(self.pending_alloc) - len(self.pending_free)

    @property
    def free_count(self) -> int:
        """Blocks this commit can still take (frees count only once the commit lands)."""
        return self._geo.data_blocks - self._committed_used - len(self.pending_alloc)

    def full_error(self) -> DeviceFullError:
        """The error for a request that needs more blocks than are free."""
        return DeviceFullError(
            f"no free block: {self.used} of {self._geo.data_blocks} data-area blocks are in "
            f"use or held by this commit (commit more often: one commit can add at most "
            f"{self._geo.spare} new blocks beyond the logical size)"
        )

    @property
    def changed(self) -> bool:
        """Whether this commit allocated or freed anything."""
        return bool(self.pending_alloc or self.pending_free)

    def bitmap(self, index: int) -> bytearray:
        """The working copy of one bitmap block (committed bits plus this commit's allocations)."""
        found = self._maps.get(index)
        if found is None:
            found = bytearray(self._load(index))
            self._maps[index] = found
        return found

    def _set(self, relative: int, value: bool) -> None:
        index, bit = divmod(relative, self._bits)
        buf = self.bitmap(index)
        mask = 1 << (bit % 8)
        if value:
            buf[bit // 8] |= mask
        else:
            buf[bit // 8] &= ~mask & 0xFF
        self.dirty.add(index)

    def allocate(self) -> int:
        """Take a free data-area block for this commit and return its physical number.

        Raises:
            DeviceFullError: no block is free (the caller's write is not applied).
        """
        total = self._geo.data_blocks
        position = self.cursor
        # Fast path: the block at the cursor is free (the common case while the device fills).
        index, bit = divmod(position, self._bits)
        buf = self._maps.get(index)
        if buf is not None and not buf[bit // 8] & (1 << (bit % 8)):
            buf[bit // 8] |= 1 << (bit % 8)
            self.dirty.add(index)
            self.pending_alloc.add(position)
            self.cursor = (position + 1) % total
            return self._data_start + position
        scanned = 0
        while scanned < total:
            index, bit = divmod(position, self._bits)
            buf = self.bitmap(index)
            limit = min(self._bits, total - index * self._bits)
            for match in _NOT_FULL.finditer(buf, bit // 8, -(-limit // 8)):
                byte = match.start()
                for b in range(max(bit, 8 * byte), min(8 * byte + 8, limit)):
                    if not buf[b // 8] & (1 << (b % 8)):
                        relative = index * self._bits + b
                        self._set(relative, True)
                        self.pending_alloc.add(relative)
                        self.cursor = (relative + 1) % total
                        return self._data_start + relative
            # nothing free in the rest of this bitmap block: go on at the next one
            step = limit - bit
            scanned += step
            position = (position + step) % total
        raise self.full_error()

    def is_pending(self, physical: int) -> bool:
        """Whether the block was allocated by this commit (so it may be rewritten in place)."""
        return physical - self._data_start in self.pending_alloc

    def release(self, physical: int) -> None:
        """Give back a block this commit allocated and no longer needs."""
        relative = physical - self._data_start
        self.pending_alloc.discard(relative)
        self._set(relative, False)

    def free(self, physical: int) -> None:
        """Free a committed block when this commit lands."""
        self.pending_free.add(physical - self._data_start)

    def prepare_commit(self) -> dict[int, bytes]:
        """Apply this commit's frees; return the bitmap blocks to write (index -> bytes)."""
        for relative in self.pending_free:
            self._set(relative, False)
        return {index: bytes(self._maps[index]) for index in sorted(self.dirty)}

    def committed(self) -> None:
        """The commit landed: its changes are now the committed state."""
        self._committed_used = self.used
        self.pending_alloc.clear()
        self.pending_free.clear()
        self.dirty.clear()
