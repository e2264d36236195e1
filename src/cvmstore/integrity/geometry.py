"""Where everything lives on the device: the layout of docs/format.md ("Geometry").

```
block 0, 1        superblock slots A and B
bitmap slots      2 per bitmap block (A/B), one bit per data-area block
node slots        2 per tree node (A/B), level 0 (just above the leaves) first, root last
data area         data blocks, allocated copy-on-write
```

The tree's leaves are *virtual* indexes: `0..logical-1` are the logical data blocks, then one
per bitmap block. Level-0 nodes hold the leaf entries; each node holds `fanout` entries of
48 bytes (85 per 4 KiB block); the root is the single node of the top level. The data area is
larger than the logical size by a *spare* (1/32 of it, at least 4 blocks), so a commit can
write new copies while the old ones are still referenced; that bounds how many data blocks
one commit can dirty.

`plan(physical, block_size)` is deterministic: a reader recomputes the geometry from the
header's physical and logical counts and must find the recorded data-area size.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvmstore.errors import DeviceError

__all__ = ["ENTRY_SIZE", "SUPERBLOCKS", "Geometry", "plan"]

ENTRY_SIZE = 48
SUPERBLOCKS = 2
MIN_SPARE = 4


def _spare(logical: int) -> int:
    return max(MIN_SPARE, -(-logical // 32))


@dataclass(frozen=True, slots=True)
class Geometry:
    """The layout of one store, derived from (physical, logical, block size)."""

    block_size: int
    physical: int
    logical: int
    data_blocks: int
    bitmap_blocks: int
    level_counts: tuple[int, ...]  # nodes per level, level 0 first; the last is 1 (the root)

    @property
    def fanout(self) -> int:
        """Entries per tree node."""
        return self.block_size // ENTRY_SIZE

    @property
    def virtual(self) -> int:
        """Leaves of the tree: logical data blocks, then bitmap blocks."""
        return self.logical + self.bitmap_blocks

    @property
    def depth(self) -> int:
        """Number of node levels (1 when the root holds the leaf entries)."""
        return len(self.level_counts)

    @property
    def bitmap_start(self) -> int:
        """First bitmap slot."""
        return SUPERBLOCKS

    @property
    def node_start(self) -> int:
        """First node slot."""
        return SUPERBLOCKS + 2 * self.bitmap_blocks

    @property
    def level_offsets(self) -> tuple[int, ...]:
        """Index of each level's first node among all nodes."""
        offsets, total = [], 0
        for count in self.level_counts:
            offsets.append(total)
            total += count
        return tuple(offsets)

    @property
    def node_count(self) -> int:
        """All tree nodes."""
        return sum(self.level_counts)

    @property
    def data_start(self) -> int:
        """First block of the data area."""
        return self.node_start + 2 * self.node_count

    @property
    def spare(self) -> int:
        """Data-area blocks beyond the logical size: the most one commit can newly write."""
        return self.data_blocks - self.logical

    @property
    def metadata_blocks(self) -> int:
        """Superblocks, bitmap slots and node slots."""
        return self.data_start

    def node_slots(self, level: int, index: int) -> tuple[int, int]:
        """The two physical blocks (A, B) of a node."""
        base = self.node_start + 2 * (self.level_offsets[level] + index)
        return base, base + 1

    def bitmap_slots(self, index: int) -> tuple[int, int]:
        """The two physical blocks (A, B) of a bitmap block."""
        base = self.bitmap_start + 2 * index
        return base, base + 1


def _levels(virtual: int, fanout: int) -> tuple[int, ...]:
    counts = [-(-virtual // fanout)]
    while counts[-1] > 1:
        counts.append(-(-counts[-1] // fanout))
    return tuple(counts)


def layout(block_size: int, physical: int, logical: int) -> Geometry:
    """The geometry for a given logical size (it may not fit: check `total`)."""
    data = logical + _spare(logical)
    bitmap = -(-data // (block_size * 8))
    levels = _levels(logical + bitmap, block_size // ENTRY_SIZE)
    return Geometry(block_size, physical, logical, data, bitmap, levels)


def _total(geo: Geometry) -> int:
    return geo.data_start + geo.data_blocks


def plan(physical: int, block_size: int) -> Geometry:
    """The largest logical size that fits `physical` blocks, and its layout.

    Raises:
        DeviceError: the device is too small to hold even one logical block.
    """
    if block_size < 512 or block_size % 512:
        raise ValueError("block size must be a multiple of 512")
    low, high = 0, physical
    while low < high:  # largest logical size whose layout fits
        mid = (low + high + 1) // 2
        if _total(layout(block_size, physical, mid)) <= physical:
            low = mid
        else:
            high = mid - 1
    if low < 1:
        raise DeviceError(
            f"a device of {physical} blocks of {block_size} bytes is too small for a store"
        )
    return layout(block_size, physical, low)
