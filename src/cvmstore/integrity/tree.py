"""The authenticated tree: nodes of entries, verified on the way down, cached within a bound.

Low-level: use `cvmstore.integrity.open_store` unless you implement a compatible reader.

A node is one block: `fanout` entries of 48 bytes, zero-padded, encrypted with AES-256-GCM
under the key of the generation that wrote it. Its entry in the parent (or, for the root, in
the superblock) holds its physical slot, generation, nonce and tag, so verifying a node is
decrypting it: the tag is the Merkle link (tag-as-leaf, as in SGX PFS and OP-TEE). A read
verifies only its path, and only the part of it not already cached. Open reads nothing but
the superblocks: its cost does not grow with the device.

Each node has two fixed slots (A/B). A commit writes a changed node to the slot its committed
entry does not point at, so the committed tree is never overwritten before the new
superblock is durable.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from enum import IntEnum

from cvmstore._types import BlockIndex
from cvmstore.block.protocol import BlockDevice
from cvmstore.crypto.keys import VolumeKeys
from cvmstore.errors import IntegrityError
from cvmstore.integrity.entry import Entry
from cvmstore.integrity.geometry import ENTRY_SIZE, Geometry

__all__ = ["Kind", "NodeCache", "aad"]

_AAD = struct.Struct("<16sBBQQ")


class Kind(IntEnum):
    """What a block is; bound into its authentication so no block can pose as another."""

    DATA = 1
    BITMAP = 2
    NODE = 3


def aad(volume_id: bytes, kind: Kind, level: int, index: int, generation: int) -> bytes:
    """Associated data: volume, kind, level, index (logical or node) and generation."""
    return _AAD.pack(volume_id, kind, level, index, generation)


NodeKey = tuple[int, int]  # (level, index)


class NodeCache:
    """Decrypted, verified nodes; dirty ones are pinned until the commit writes them.

    Args:
        device: the untrusted device.
        geometry: the store's layout.
        keys: the volume's keys.
        volume_id: bound into every AAD.
        root: a callable returning the current root entry.
        max_nodes: how many clean nodes to keep (the memory bound is this times the block
            size, plus the dirty nodes of the open commit).
    """

    def __init__(
        self,
        device: BlockDevice,
        geometry: Geometry,
        keys: VolumeKeys,
        volume_id: bytes,
        root: Callable[[], Entry],
        max_nodes: int,
    ) -> None:
        self._device = device
        self._geo = geometry
        self._keys = keys
        self._id = volume_id
        self._root = root
        self._max = max(max_nodes, geometry.depth + 1)
        self._clean: OrderedDict[NodeKey, bytearray] = OrderedDict()
        self._dirty: dict[NodeKey, bytearray] = {}

    @property
    def top(self) -> int:
        """Level of the root."""
        return self._geo.depth - 1

    def node(self, level: int, index: int) -> bytearray:
        """The verified plaintext of a node (loading its path as needed)."""
        key = (level, index)
        buf = self._dirty.get(key)
        if buf is not None:
            return buf
        buf = self._clean.get(key)
        if buf is not None:
            self._clean.move_to_end(key)
            return buf
        buf = self._load(level, index, self.child_entry(level, index))
        self._clean[key] = buf
        if len(self._clean) > self._max:
            self._clean.popitem(last=False)
        return buf

    def child_entry(self, level: int, index: int) -> Entry:
        """The entry (in the parent, or the root entry) that points at node (level, index)."""
        if level == self.top:
            return self._root()
        fanout = self._geo.fanout
        parent = self.node(level + 1, index // fanout)
        return Entry.decode(parent, (index % fanout) * ENTRY_SIZE)

    def _load(self, level: int, index: int, entry: Entry) -> bytearray:
        if entry.empty:
            return bytearray(self._geo.block_size)
        where = f"tree node level {level} #{index} at block {entry.physical}"
        if entry.physical not in self._geo.node_slots(level, index):
            raise IntegrityError("tree entry points outside the node's slots", location=where)
        cipher = self._keys.cipher(entry.generation)
        data = self._device.read(BlockIndex(entry.physical))
        plain = cipher.decrypt(
            entry.nonce, data, entry.tag, aad(self._id, Kind.NODE, level, index, entry.generation)
        )
        if plain is None:
            raise IntegrityError("tree node fails authentication", location=where)
        return bytearray(plain)

    def leaf(self, virtual: int) -> Entry:
        """The entry of leaf `virtual` (a logical block or a bitmap block)."""
        fanout = self._geo.fanout
        return Entry.decode(self.node(0, virtual // fanout), (virtual % fanout) * ENTRY_SIZE)

    def set_leaf(self, virtual: int, entry: Entry) -> None:
        """Replace a leaf entry (its level-0 node becomes dirty)."""
        self.set_child(0, virtual, entry)

    def set_child(self, level: int, child: int, entry: Entry) -> None:
        """Replace the entry of child `child` held by a node of `level` (which becomes dirty).

        At level 0 the children are the leaves; above, the nodes of the level below.
        """
        fanout = self._geo.fanout
        offset = (child % fanout) * ENTRY_SIZE
        self.dirty_node(level, child // fanout)[offset : offset + ENTRY_SIZE] = entry.encode()

    def set_leaf_run(self, first: int, entries: bytes) -> None:
        """Replace the entries of consecutive leaves from `first` (packed, 48 bytes each)."""
        fanout = self._geo.fanout
        count = len(entries) // ENTRY_SIZE
        done = 0
        while done < count:
            index, slot = divmod(first + done, fanout)
            take = min(count - done, fanout - slot)
            self.dirty_node(0, index)[slot * ENTRY_SIZE : (slot + take) * ENTRY_SIZE] = entries[
                done * ENTRY_SIZE : (done + take) * ENTRY_SIZE
            ]
            done += take

    def dirty_node(self, level: int, index: int) -> bytearray:
        """The node's buffer, pinned as dirty until `take_dirty` hands it to the commit."""
        key = (level, index)
        buf = self._dirty.get(key)
        if buf is None:
            buf = self.node(level, index)
            self._clean.pop(key, None)
            self._dirty[key] = buf
        return buf

    def dirty_at(self, level: int) -> list[int]:
        """Indexes of the dirty nodes of one level, in order."""
        return sorted(index for (lvl, index) in self._dirty if lvl == level)

    @property
    def dirty_count(self) -> int:
        """Dirty nodes of the open commit."""
        return len(self._dirty)

    def mark_clean(self) -> None:
        """After a commit: the dirty nodes are now the committed ones."""
        for key, buf in self._dirty.items():
            self._clean[key] = buf
        self._dirty.clear()
        while len(self._clean) > self._max:
            self._clean.popitem(last=False)

    def forget(self) -> None:
        """Drop every cached node (after an abort, or to measure cold reads)."""
        self._clean.clear()
        self._dirty.clear()

    def walk(self) -> Iterator[tuple[int, int, Entry]]:
        """Every non-empty node entry, top down: (level, index, entry). Verifies each node."""
        pending = [(self.top, 0, self._root())]
        fanout = self._geo.fanout
        while pending:
            level, index, entry = pending.pop()
            yield level, index, entry
            if level == 0 or entry.empty:
                continue
            buf = self._load(level, index, entry)
            first = index * fanout
            for slot in range(fanout):
                child = first + slot
                if child >= self._geo.level_counts[level - 1]:
                    break
                child_entry = Entry.decode(buf, slot * ENTRY_SIZE)
                if not child_entry.empty:
                    pending.append((level - 1, child, child_entry))

    def load_verified(self, level: int, index: int, entry: Entry) -> bytearray:
        """Read and verify one node from the device, bypassing the cache (for fsck)."""
        return self._load(level, index, entry)
