"""CocoonFs authentication tree: geometry, digests, and building or updating its nodes.

Spec: `cocoonfs-format.md`, section "Authentication tree" and its subsections. One Merkle tree
covers the whole image except its own extents. Leaves hold HMACs of Authentication Tree Data
Blocks (ATDBs); internal nodes hold hashes of their children; nodes are stored in DFS
pre-order, back to back, in the tree's extents. The reader verifies every stored node against
digests computed here; the writer recomputes only the paths above changed data blocks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from cryptography.hazmat.primitives import hashes

from cvmstore.cocoonfs.keys import hash_algorithm, hmac_digest
from cvmstore.cocoonfs.layout import ImageLayout
from cvmstore.errors import FormatError

__all__ = ["AuthSubject", "DigestMap", "Extent", "NodeMap", "TreeGeometry"]

Extent = tuple[int, int]
"""(start, length) in Allocation Blocks."""

_U64 = struct.Struct("<Q")


class AuthSubject(IntEnum):
    """Authentication subject ids (section "Authentication contexts")."""

    IMAGE_CONTEXT = 1
    AUTH_TREE_ROOT_NODE = 2
    AUTH_TREE_DESCENDANT_NODE = 3
    AUTH_TREE_DATA_BLOCK = 4
    ENCRYPTION_ENTITY_CHAINED_EXTENTS = 5
    INODE_INDEX_NODE = 6
    JOURNAL_LOG_FIELD = 7


@dataclass
class TreeGeometry:
    """Where the tree's nodes are and which data each covers, for one image size."""

    layout: ImageLayout
    extents: list[Extent]
    image_size: int
    _subtree_sizes: list[int] = field(init=False, repr=False)
    _leaf_paths: dict[int, list[tuple[int, int, int]]] = field(init=False, repr=False)
    c: int = field(init=False)
    d: int = field(init=False)
    a: int = field(init=False)
    levels: int = field(init=False)
    data_block_count: int = field(init=False)
    node_count: int = field(init=False)

    def __post_init__(self) -> None:
        layout = self.layout
        self.extents = sorted(self.extents)
        align = max(
            layout.io_block_allocation_blocks_log2,
            layout.auth_tree_data_block_allocation_blocks_log2,
        )
        for start, length in self.extents:
            if start % (1 << align) or (start + length) % (1 << align):
                raise FormatError("CocoonFs auth tree extents are not aligned")
        node_size = layout.auth_tree_node_size
        stored = sum(length for _, length in self.extents) << layout.allocation_block_size_log2
        self.node_count = stored // node_size
        if self.node_count == 0:
            raise FormatError("CocoonFs auth tree holds no node")
        node_log2 = layout.auth_tree_node_size_log2
        self.c = node_log2 - (layout.auth_tree_node_hash_alg.digest_len - 1).bit_length()
        self.d = node_log2 - (layout.auth_tree_data_hmac_hash_alg.digest_len - 1).bit_length()
        self.a = layout.auth_tree_data_block_allocation_blocks_log2
        self.levels = levels_for(self.node_count, self.c, self.d, self.a)
        self._subtree_sizes = [
            sum(1 << (self.c * i) for i in range(level + 1)) for level in range(self.levels)
        ]
        self._leaf_paths: dict[int, list[tuple[int, int, int]]] = {}
        tree_blocks = sum(length for _, length in self.extents)
        data_blocks = self.image_size - tree_blocks
        if data_blocks < 0:
            raise FormatError("CocoonFs auth tree larger than the image")
        self.data_block_count = -(-data_blocks >> self.a)
        if self.data_block_count > 1 << (self.d + self.c * (self.levels - 1)):
            raise FormatError("CocoonFs auth tree too small for the image")

    # -- positions --------------------------------------------------------------------------

    def span(self, level: int) -> int:
        """Data blocks covered by one node at `level` (0 = leaf)."""
        return 1 << (self.d + self.c * level)

    def subtree_nodes(self, level: int) -> int:
        """Nodes in a complete subtree whose root is at `level`."""
        return self._subtree_sizes[level]

    def last_entry_begin(self, level: int, begin: int) -> int:
        """Data block index where the node's last entry's range begins (its position)."""
        if level == 0:
            return begin + (1 << self.d) - 1
        return begin + ((1 << self.c) - 1) * self.span(level - 1)

    def path(self, data_index: int) -> list[tuple[int, int, int]]:
        """(node index, level, begin) from the root down to the leaf over `data_index`."""
        leaf = data_index >> self.d
        found = self._leaf_paths.get(leaf)
        if found is None:
            found = self._leaf_paths[leaf] = self._path(leaf << self.d)
        return found

    def _path(self, data_index: int) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        node, level, begin = 0, self.levels - 1, 0
        while True:
            out.append((node, level, begin))
            if level == 0:
                return out
            child_span = self.span(level - 1)
            j = (data_index - begin) // child_span
            node += 1 + j * self.subtree_nodes(level - 1)
            begin += j * child_span
            level -= 1

    def locate(self, node: int) -> tuple[int, int, int, int]:
        """(level, begin, parent, index in parent) of a non-root node."""
        if node <= 0 or node >= self.node_count:
            raise FormatError(f"CocoonFs auth tree node {node} does not exist")
        current, level, begin = 0, self.levels - 1, 0
        while level > 0:
            child_nodes = self.subtree_nodes(level - 1)
            j = (node - current - 1) // child_nodes
            child = current + 1 + j * child_nodes
            child_begin = begin + j * self.span(level - 1)
            if child == node:
                return level - 1, child_begin, current, j
            current, level, begin = child, level - 1, child_begin
        raise FormatError(f"CocoonFs auth tree node {node} does not exist")

    def child_digest(self, level: int, begin: int, entries: bytes) -> bytes:
        """What a parent holds for the child at (`level`, `begin`) with these entries."""
        h = hashes.Hash(hash_algorithm(self.layout.auth_tree_node_hash_alg))
        h.update(entries)
        h.update(_U64.pack(self.last_entry_begin(level, begin)))
        h.update(bytes([0, AuthSubject.AUTH_TREE_DESCENDANT_NODE]))
        return h.finalize()

    def node_byte_offset(self, node: int) -> int:
        """Byte offset in the image where node `node` is stored."""
        shift = self.layout.allocation_block_size_log2
        at = node * self.layout.auth_tree_node_size
        for start, length in self.extents:
            size = length << shift
            if at < size:
                return (start << shift) + at
            at -= size
        raise FormatError("CocoonFs auth tree node missing from its extents")

    def data_block_starts(self) -> Iterator[int]:
        """Physical Allocation Block starts of the data blocks, in index domain order.

        The index domain is the image with the auth tree's extents cut out.
        """
        step = 1 << self.a
        pos = 0
        for start, length in [*self.extents, (self.image_size, 0)]:
            while pos < start:
                yield pos
                pos += step
            pos = max(pos, start + length)

    def data_index(self, block: int) -> int | None:
        """The index domain ATDB holding Allocation Block `block`; None inside the tree."""
        before = 0
        for start, length in self.extents:
            if block < start:
                break
            if block < start + length:
                return None
            before += length
        return (block - before) >> self.a

    def data_block_start(self, index: int) -> int:
        """Physical start of index domain ATDB `index`."""
        pos = index << self.a
        for start, length in self.extents:
            if pos >= start:
                pos += length
            else:
                break
        return pos

    # -- digests ----------------------------------------------------------------------------

    def data_digest(
        self,
        key: bytes,
        data: bytes | bytearray,
        index: int,
        allocated: Iterable[bool],
    ) -> bytes:
        """HMAC of data block `index` (section "Authentication Tree Data Block digests").

        `allocated` gives, per Allocation Block of the data block, whether it counts (allocated
        and not one of the blocks authenticated as if free).
        """
        shift = self.layout.allocation_block_size_log2
        phys = self.data_block_start(index)
        parts: list[bytes] = []
        word = 0
        for j, counted in enumerate(allocated):
            if counted:
                block = phys + j
                parts.append(bytes(data[block << shift : (block + 1) << shift]))
                word |= 1 << j
        return hmac_digest(
            self.layout.auth_tree_data_hmac_hash_alg,
            key,
            *parts,
            _U64.pack(word),
            _U64.pack(index),
            bytes([0, AuthSubject.AUTH_TREE_DATA_BLOCK]),
        )

    def node_entries(self, level: int, begin: int, child: dict[int, bytes]) -> bytes:
        """The digests a node at (`level`, `begin`) must hold.

        `child` maps a child's begin (or, for a leaf, a data block index) to that child's
        entries (or that data block's digest).
        """
        if level == 0:
            size = self.layout.auth_tree_data_hmac_hash_alg.digest_len
            return b"".join(
                child[begin + j] if begin + j < self.data_block_count else bytes(size)
                for j in range(1 << self.d)
            )
        size = self.layout.auth_tree_node_hash_alg.digest_len
        out = bytearray()
        for j in range(1 << self.c):
            child_begin = begin + j * self.span(level - 1)
            if child_begin >= self.data_block_count:
                out += bytes(size)
                continue
            out += self.child_digest(level - 1, child_begin, child[child_begin])
        return bytes(out)

    def entries_len(self, level: int) -> int:
        """Bytes of digests at the start of a node at `level`."""
        if level == 0:
            return (1 << self.d) * self.layout.auth_tree_data_hmac_hash_alg.digest_len
        return (1 << self.c) * self.layout.auth_tree_node_hash_alg.digest_len

    def build(self, digests: list[bytes]) -> dict[int, bytes]:
        """Every node's entries, by node index, from all data block digests."""
        nodes: dict[int, bytes] = {}

        def visit(node: int, level: int, begin: int) -> bytes:
            if level == 0:
                entries = self.node_entries(0, begin, _ListView(digests))
            else:
                children: dict[int, bytes] = {}
                child_nodes = self.subtree_nodes(level - 1)
                for j in range(1 << self.c):
                    child_begin = begin + j * self.span(level - 1)
                    if child_begin >= self.data_block_count:
                        break
                    children[child_begin] = visit(
                        node + 1 + j * child_nodes, level - 1, child_begin
                    )
                entries = self.node_entries(level, begin, children)
            nodes[node] = entries
            return entries

        visit(0, self.levels - 1, 0)
        return nodes

    def update(self, nodes: NodeMap, new_digests: Mapping[int, bytes]) -> set[int]:
        """Splice new data block digests into the tree; returns the nodes rewritten.

        `nodes` yields each node's current, authentic entries and takes the new ones. Only
        the changed entries are recomputed: an untouched sibling's digest is already in its
        parent, which is authentic.
        """
        data_size = self.layout.auth_tree_data_hmac_hash_alg.digest_len
        node_size = self.layout.auth_tree_node_hash_alg.digest_len
        # Per node: its (level, begin), and which of its entries change.
        touched: dict[int, tuple[int, int, set[int]]] = {}
        for index in new_digests:
            path = self.path(index)
            for depth, (node, level, begin) in enumerate(path):
                slot = (
                    index - begin
                    if level == 0
                    else (path[depth + 1][2] - begin) // self.span(level - 1)
                )
                touched.setdefault(node, (level, begin, set()))[2].add(slot)
        rewritten: set[int] = set()
        for level in range(self.levels):
            for node, (node_level, begin, slots) in sorted(touched.items()):
                if node_level != level:
                    continue
                entries = bytearray(nodes[node])
                for j in slots:
                    if level == 0:
                        entries[j * data_size : (j + 1) * data_size] = new_digests[begin + j]
                    else:
                        child = node + 1 + j * self.subtree_nodes(level - 1)
                        child_begin = begin + j * self.span(level - 1)
                        digest = self.child_digest(level - 1, child_begin, nodes[child])
                        entries[j * node_size : (j + 1) * node_size] = digest
                nodes[node] = bytes(entries)
                rewritten.add(node)
        return rewritten

    def root_position(self) -> int:
        """The root's position input: its last entry's data block index, modulo 2^64."""
        return self.last_entry_begin(self.levels - 1, 0) % (1 << 64)


class NodeMap(Protocol):
    """Node entries by node index, read and written (a dict, or a lazily verified view)."""

    def __getitem__(self, node: int, /) -> bytes: ...

    def __setitem__(self, node: int, entries: bytes, /) -> None: ...


class DigestMap(Protocol):
    """Data block digests by index domain index (a list, or a lazily verified view)."""

    def __getitem__(self, index: int, /) -> bytes: ...


class _ListView(dict[int, bytes]):
    """Data block digests seen as the `child` mapping of `node_entries`."""

    def __init__(self, digests: DigestMap) -> None:
        super().__init__()
        self._digests = digests

    def __getitem__(self, index: int) -> bytes:
        return self._digests[index]


def levels_for(node_count: int, c: int, d: int, a: int) -> int:
    """The tree height deduced from the node count, capped as the spec requires.

    Section "Organization of the authentication tree storage".
    """
    # Of N nodes in DFS pre-order, about N/2^c are internal; what remains is the leaf
    # count, and each level above the leaves divides it by 2^c.
    leaves = node_count - ((node_count - 1) >> c)
    levels = -(-max(leaves - 1, 0).bit_length() // c) + 1
    cap = -(-min(64, 64 - d - a + c) // c)
    return min(levels, cap)


def nodes_needed(levels: int, data_blocks: int, c: int, d: int) -> int:
    """Nodes stored for a tree of `levels` over `data_blocks` data blocks.

    In DFS pre-order, up to the last node that covers any data.
    """
    if levels == 1:
        return 1
    count = 1
    span = 1 << (d + c * (levels - 2))
    children = -(-data_blocks // span)
    full = children - 1
    count += full * sum(1 << (c * i) for i in range(levels - 1))
    count += nodes_needed(levels - 1, data_blocks - full * span, c, d)
    return count
