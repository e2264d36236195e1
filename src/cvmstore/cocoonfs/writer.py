"""CocoonFs transactions: compute an image's next state in memory, then write it crash-safely.

Spec: `cocoonfs-format.md`, sections "Inode index", "Allocation bitmap", "Authentication
tree", "Mutable image header", "Filesystem update counter" and "Journal".

A transaction (any number of file writes and removals) is built completely in memory first:

1. New file data, extents lists and a freshly built inode index go to Allocation Blocks that
   are free in the current state, in whole IO Blocks, so nothing the current state references
   is touched and a torn write there harms nothing.
2. The allocation bitmap blocks that change are re-encrypted with fresh IVs; the mutable
   header gets the next update counter, the new entry leaf and the new root HMAC; the paths of
   the authentication tree above every changed data block are recomputed.
3. Every IO Block that changes is classified: free in the current state (written directly),
   inside the authentication tree (rebuilt by journal replay, so written after the journal),
   or holding live data (header, bitmap): those go through the journal as staging copies.

`plan` returns that as a `Plan`; `volume.py` writes it in the journal's order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from cvmstore.cocoonfs.auxmeta import AuxFsMetadata
from cvmstore.cocoonfs.auxwrite import (
    STATE_ACTIVE,
    aux_group_sizes,
    circle_links,
    encode_aux_extent,
    split_payload,
)
from cvmstore.cocoonfs.entities import (
    chained_capacity,
    encrypt_block,
    encrypt_chained,
    encrypt_extents,
)
from cvmstore.cocoonfs.image import (
    FIRST_USER_INODE,
    CocoonFsImage,
    InodeEntry,
    SpecialInode,
    _AuthTree,
    _inode_extents,
    _Opener,
    counted_blocks,
    encode_extents_list,
    encrypt_counter,
    image_context_digest,
    root_hmac_digest,
)
from cvmstore.cocoonfs.keys import InodeKeySubdomain, KeyPurpose
from cvmstore.cocoonfs.layout import (
    CIPHER_BLOCK_LEN,
    NIL_PTR,
    ImageLayout,
    MutableHeader,
    align_up,
    encode_block_ptr,
    encode_extent_ptr,
)
from cvmstore.cocoonfs.tree import Extent, TreeGeometry
from cvmstore.errors import DeviceFullError

__all__ = ["Plan", "plan"]

_T = TypeVar("_T")

_U64 = struct.Struct("<Q")
_IV_LEN = CIPHER_BLOCK_LEN
_MAX_DIRECT = 64
#: Free IO Blocks a write leaves for a later removal, beyond the index: the mutable header's
#: and a few bitmap blocks' staging copies and the journal log's tail.
_REMOVAL_RESERVE_IO_BLOCKS = 10
#: Largest inode number (inode numbers are 64-bit, 0 means "no inode").
MAX_INODE = (1 << 64) - 1


@dataclass
class Plan:
    """A transaction's writes, classified for the journal."""

    #: The image after the transaction, as it will read back.
    new: bytearray
    #: IO Block indices written before the journal (free in the current state).
    direct: list[int]
    #: IO Block indices updated in place through journal staging copies.
    staged: list[int]
    #: IO Block indices of authentication tree nodes (rebuilt by replay).
    tree: list[int]
    #: Physical Authentication Tree Data Block indices whose digests change.
    changed_data_blocks: list[int]
    #: Physical ATDB indices of allocation bitmap blocks replay needs, with their digests.
    bitmap_digests: list[tuple[int, bytes]]
    #: The state to continue from once written.
    image: CocoonFsImage
    #: IO Blocks free in both states and not written: room for staging copies and the log.
    spare: Iterator[int] = field(repr=False, default_factory=lambda: iter(()))


class _Allocator:
    """Hands out whole IO Blocks that are free in the current state, each at most once."""

    def __init__(self, alloc_map: bytearray, io_ab: int, image_size: int) -> None:
        self.work = bytearray(alloc_map)  # 1 = allocated or already handed out
        self.io_ab = io_ab
        self.image_size = image_size

    def _find(self, blocks: int, start: int = 0, align: int = 0) -> int:
        """First run of `blocks` free Allocation Blocks at or after `start`.

        Aligned to `align` Allocation Blocks (default: the IO Block).
        """
        need = bytes(blocks)
        align = align or self.io_ab
        pos = start
        while True:
            pos = self.work.find(need, pos)
            if pos < 0:
                return -1
            aligned = align_up(pos, align)
            if aligned == pos:
                return pos
            pos = aligned

    def take(self, blocks: int, align: int = 0) -> list[Extent]:
        """Extents holding `blocks` Allocation Blocks, each starting on an IO Block.

        The first starts on a multiple of `align` when given.

        Raises:
            DeviceFullError: not enough free IO Blocks.
        """
        whole = align_up(blocks, self.io_ab)
        at = self._find(whole, 0, max(align, self.io_ab))
        if at >= 0:
            self.work[at : at + whole] = b"\x01" * whole
            return [(at, blocks)]
        extents: list[Extent] = []
        left = blocks
        pos = 0
        while left > 0:
            at = self._find(self.io_ab, pos)
            if at < 0:
                raise DeviceFullError(f"CocoonFs image full: {blocks} Allocation Blocks do not fit")
            self.work[at : at + self.io_ab] = b"\x01" * self.io_ab
            use = min(left, self.io_ab)
            if (
                extents
                and extents[-1][0] + extents[-1][1] == at
                and extents[-1][1] % self.io_ab == 0
            ):
                extents[-1] = (extents[-1][0], extents[-1][1] + use)
            else:
                extents.append((at, use))
            left -= use
            pos = at + self.io_ab
        return extents

    def spare_io_blocks(self) -> Iterator[int]:
        """IO Block indices still free (for staging copies and the journal log tail)."""
        pos = 0
        while True:
            at = self._find(self.io_ab, pos)
            if at < 0:
                return
            self.work[at : at + self.io_ab] = b"\x01" * self.io_ab
            yield at // self.io_ab
            pos = at + self.io_ab


class _Txn:
    """One transaction's in-memory construction."""

    def __init__(self, image: CocoonFsImage) -> None:
        opened = image._opened
        self.image = image
        self.opened = opened
        self.layout: ImageLayout = opened.layout
        layout = self.layout
        self.shift = layout.allocation_block_size_log2
        self.io_ab = 1 << layout.io_block_allocation_blocks_log2
        self.new = bytearray(opened.data)
        self.old_map = opened.alloc_map
        self.new_map = bytearray(self.old_map)
        self.allocator = _Allocator(self.old_map, self.io_ab, opened.image_size)
        self.entries = dict(opened.entries)
        #: Allocation Blocks whose content or allocation changes.
        self.touched: set[int] = set()
        #: Extents allocated or freed, in order (the bitmap follows `new_map` over them).
        self.bit_changes: list[Extent] = []
        #: The aux metadata list after the transaction: heads and extents (unchanged unless
        #: `set_aux` reallocates it).
        self.aux_heads: tuple[bytes, bytes] = opened.mutable.aux_fs_metadata_heads
        self.aux_extents: list[Extent] = list(opened.aux_extents)

    def subkey(self, purpose: KeyPurpose, domain: int, subdomain: int) -> bytes:
        return self.opened.subkey(purpose, domain, subdomain)

    def put(self, start: int, payload: bytes) -> None:
        """Place bytes at Allocation Block `start` of the new image."""
        at = start << self.shift
        self.new[at : at + len(payload)] = payload
        end = -(-(at + len(payload)) >> self.shift)
        self.touched.update(range(start, end))

    def allocate(self, blocks: int, align: int = 0) -> list[Extent]:
        extents = self.allocator.take(blocks, align)
        self.bit_changes += extents
        for start, length in extents:
            self.new_map[start : start + length] = b"\x01" * length
            self.touched.update(range(start, start + length))
        return extents

    def free(self, extents: list[Extent]) -> None:
        self.bit_changes += extents
        for start, length in extents:
            self.new_map[start : start + length] = bytes(length)
            self.touched.update(range(start, start + length))

    # -- files ------------------------------------------------------------------------------

    def release_inode(self, entry: InodeEntry) -> None:
        chain: list[Extent] = []
        # Its extents list is authenticated before it is decrypted, as any read.
        extents = _inode_extents(
            self.opened.data,
            self.layout,
            self.opened.root_key,
            entry,
            None,
            chain,
            self.opened.tree.check_extent,
        )
        self.free(extents)
        self.free(chain)

    def write_file(self, inode: int, data: bytes, flags: int) -> None:
        old = self.entries.get(inode)
        if old is not None:
            self.release_inode(old)
        # Even an empty file owns an extent (IV and one padding block): the tool refuses NIL
        # pointers in occupied index slots.
        ab = self.layout.allocation_block_size
        need = -(-(_IV_LEN + align_up(len(data) + 1, CIPHER_BLOCK_LEN)) // ab)
        extents = self.allocate(need)
        key = self.subkey(KeyPurpose.ENCRYPTION, inode, InodeKeySubdomain.DATA)
        blob = encrypt_extents(self.layout, key, data, need * ab)
        at = 0
        for start, length in extents:
            self.put(start, blob[at : at + length * ab])
            at += length * ab
        if len(extents) == 1 and extents[0][1] <= _MAX_DIRECT:
            ptr = encode_extent_ptr(*extents[0])
        else:
            ptr = self.write_extents_list(inode, extents, inline_auth=False)
        self.entries[inode] = InodeEntry(inode, flags, ptr)

    def write_extents_list(self, inode: int, extents: list[Extent], *, inline_auth: bool) -> bytes:
        """Store `extents` as the inode's chained extents list; returns the indirect pointer."""
        payload = encode_extents_list(extents)
        tag_len = self.layout.preauth_cca_protection_hmac_hash_alg.digest_len if inline_auth else 0
        io = self.layout.io_block_size
        chain: list[Extent] = []
        room = 0
        while room < len(payload) + CIPHER_BLOCK_LEN:
            # One IO Block per chain link, at most 64 Allocation Blocks each.
            blocks = min(self.io_ab, _MAX_DIRECT)
            chain += self.allocate(blocks)
            room = sum(
                chained_capacity(self.layout, length << self.shift, first=i == 0, tag_len=tag_len)
                for i, (_, length) in enumerate(chain)
            )
        del io
        enc_key = self.subkey(KeyPurpose.ENCRYPTION, inode, InodeKeySubdomain.EXTENTS_LIST)
        auth = None
        if inline_auth:
            hmac_key = self.subkey(
                KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH, inode, InodeKeySubdomain.EXTENTS_LIST
            )
            auth = (hmac_key, _U64.pack(inode) + bytes([0, 2]))
        for (start, _), raw in zip(
            chain, encrypt_chained(self.layout, enc_key, payload, chain, auth=auth), strict=True
        ):
            self.put(start, raw)
        return encode_extent_ptr(chain[0][0], chain[0][1], indirect=True)

    def remove_file(self, inode: int) -> None:
        old = self.entries.pop(inode, None)
        if old is not None:
            self.release_inode(old)

    # -- auxiliary metadata -----------------------------------------------------------------

    def set_aux(self, meta: AuxFsMetadata) -> None:
        """Store `meta` in freshly allocated update groups sized for it and its reserve.

        The old groups are freed. Both lists are authenticated as if free, so only the
        bitmap changes for the tree; the new heads reach the mutable header and the journal.
        """
        layout = self.layout
        payload = meta.encode()
        reserve = meta.extra_reserve_capacity
        align = 1 << max(
            layout.io_block_allocation_blocks_log2,
            layout.auth_tree_data_block_allocation_blocks_log2,
        )
        groups: list[list[Extent]] = []
        for _ in range(1 if reserve is None else 2):
            group: list[Extent] = []
            for size in aux_group_sizes(layout, len(payload), reserve or 0):
                extents = self.allocate(size, align)
                if len(extents) != 1 or extents[0][0] % align:
                    raise DeviceFullError("CocoonFs image full: no room for the aux metadata")
                group += extents
            groups.append(group)
        self.free(self.aux_extents)
        ring = [extent for group in groups for extent in group]
        links = dict(zip(ring, circle_links(ring), strict=True))
        for group in groups:
            parts = split_payload(layout, group, payload)
            for i, (extent, part) in enumerate(zip(group, parts, strict=True)):
                state = STATE_ACTIVE if i == 0 else None
                self.put(extent[0], encode_aux_extent(layout, extent, links[extent], state, part))
        self.aux_extents = ring
        self.aux_heads = (
            encode_extent_ptr(*groups[0][0]),
            encode_extent_ptr(*groups[1][0]) if len(groups) > 1 else NIL_PTR,
        )

    # -- inode index ------------------------------------------------------------------------

    def rebuild_index(self) -> int:
        """Write a fresh B+-tree of all entries; returns the entry leaf's block."""
        layout = self.layout
        self.free(self.opened.index_nodes)
        leaf_size, internal_size = layout.index_leaf_node_size, layout.index_internal_node_size
        leaf_slots = (leaf_size - _IV_LEN - 12) // 20
        internal_slots = (internal_size - _IV_LEN - 12) // 16
        ordered = [self.entries[n] for n in sorted(self.entries)]
        leaves = _split(ordered, leaf_slots)
        levels: list[list[list[int]]] = []  # per internal level: groups of child positions
        count = len(leaves)
        while count > 1:
            groups = _split(list(range(count)), internal_slots + 1)
            levels.append(groups)
            count = len(groups)
        leaf_ab = leaf_size >> self.shift
        internal_ab = internal_size >> self.shift
        total = len(leaves) * leaf_ab + sum(len(g) for g in levels) * internal_ab
        # Nodes sit on multiples of their own size; one contiguous region keeps that.
        region = self.allocate(total, max(leaf_ab, internal_ab))
        if len(region) != 1:
            raise DeviceFullError("CocoonFs image full: no contiguous room for the inode index")
        places = _carve(
            region, [leaf_ab] * len(leaves) + [internal_ab] * sum(len(g) for g in levels)
        )
        leaf_at = places[: len(leaves)]
        internal_at: list[list[int]] = []
        pos = len(leaves)
        for groups in levels:
            internal_at.append(places[pos : pos + len(groups)])
            pos += len(groups)
        root = internal_at[-1][0] if levels else leaf_at[0]
        root_ab = internal_ab if levels else leaf_ab
        # Inode 3 names the root; it lives in the first leaf, so patch it before encoding.
        root_ptr = encode_extent_ptr(root, root_ab)
        for group in leaves:
            for i, entry in enumerate(group):
                if entry.inode == SpecialInode.INDEX_ROOT:
                    group[i] = InodeEntry(entry.inode, entry.flags, root_ptr)
        self.entries[SpecialInode.INDEX_ROOT] = InodeEntry(
            SpecialInode.INDEX_ROOT, self.entries[SpecialInode.INDEX_ROOT].flags, root_ptr
        )
        key = self.subkey(KeyPurpose.ENCRYPTION, SpecialInode.INDEX_ROOT, InodeKeySubdomain.DATA)
        first_keys = [group[0].inode for group in leaves]
        for i, group in enumerate(leaves):
            nxt = leaf_at[i + 1] if i + 1 < len(leaves) else None
            payload = _leaf_payload(group, leaf_slots, nxt)
            self.put(leaf_at[i], encrypt_block(layout, key, payload, leaf_size))
        below_at, below_keys = leaf_at, first_keys
        for depth, groups in enumerate(levels):
            level = depth + 2
            keys: list[int] = []
            for g, children in enumerate(groups):
                payload = _internal_payload(
                    [below_at[c] for c in children],
                    [below_keys[c] for c in children[1:]],
                    internal_slots,
                    level,
                )
                self.put(internal_at[depth][g], encrypt_block(layout, key, payload, internal_size))
                keys.append(below_keys[children[0]])
            below_at, below_keys = internal_at[depth], keys
        self.index_nodes = [(at, leaf_ab) for at in leaf_at] + [
            (at, internal_ab) for row in internal_at for at in row
        ]
        return leaf_at[0]

    # -- bitmap, tree, header ---------------------------------------------------------------

    def write_bitmap(self) -> bytearray:
        """Re-encrypt the changed bitmap file blocks; returns the new bitmap bytes."""
        layout = self.layout
        old_bits = self.opened.bitmap
        new_bits = bytearray(old_bits)
        for start, length in self.bit_changes:
            for block in range(start, start + length):
                if self.new_map[block]:
                    new_bits[block >> 3] |= 1 << (block & 7)
                else:
                    new_bits[block >> 3] &= ~(1 << (block & 7)) & 0xFF
        block = layout.allocation_bitmap_file_block_size
        words = (block - _IV_LEN) // 8 * 8
        key = self.subkey(KeyPurpose.ENCRYPTION, SpecialInode.ALLOC_BITMAP, InodeKeySubdomain.DATA)
        offset = 0
        for start, length in self.opened.bitmap_extents:
            for at in range(start << self.shift, (start + length) << self.shift, block):
                part = new_bits[offset : offset + words]
                if part != old_bits[offset : offset + words]:
                    raw = encrypt_block(layout, key, bytes(part), block)
                    self.put(at >> self.shift, raw)
                offset += words
        return new_bits

    def finish(self) -> Plan:
        opened = self.opened
        layout = self.layout
        entry_leaf = self.rebuild_index()
        new_bits = self.write_bitmap()
        geometry = opened.tree.geometry
        skipped = [opened.journal_head, *self.aux_extents]
        counted = counted_blocks(opened, new_bits, skipped)
        changed = sorted({i for b in self.touched if (i := geometry.data_index(b)) is not None})
        tree = opened.tree
        # A changed data block's new digest covers its untouched Allocation Blocks too: they
        # must be authentic before they are sealed into the new root (a lazy open has not
        # read them), so each changed block is checked against the current tree first.
        tree.check_blocks(geometry.data_block_start(index) for index in changed)
        digests = _Overlay(tree.leaf_digest)
        data_key = self.subkey(KeyPurpose.AUTH_DATA, SpecialInode.AUTH_TREE, 0)
        per_block = 1 << geometry.a
        for index in changed:
            phys = geometry.data_block_start(index)
            digests[index] = geometry.data_digest(
                data_key, self.new, index, counted(phys, per_block)
            )
        # The incremental update reads untouched siblings: each is verified against its
        # parent's stored digest on first use (or was, at a full open).
        nodes = _Overlay(tree.entries)
        rewritten = geometry.update(nodes, digests.written)
        tree_io: set[int] = set()
        for node in rewritten:
            at = geometry.node_byte_offset(node)
            entries = nodes[node]
            self.new[at : at + len(entries)] = entries
            first = at // layout.io_block_size
            tree_io.update(
                range(first, -(-(at + layout.auth_tree_node_size) // layout.io_block_size))
            )

        counter = (opened.counter + 1) % (1 << 128)
        counter_key = self.subkey(
            KeyPurpose.ENCRYPTION, SpecialInode.UPDATE_COUNTER, InodeKeySubdomain.DATA
        )
        encrypted_counter = encrypt_counter(layout, counter_key, counter)
        leaf_ptr = encode_block_ptr(entry_leaf)
        leaf_at = entry_leaf << self.shift
        leaf_raw = bytes(self.new[leaf_at : leaf_at + layout.index_leaf_node_size])
        preauth = opened.entry_leaf_hmac(leaf_raw)
        root_key = opened.tree.root_hmac_key
        context = image_context_digest(
            layout,
            root_key,
            leaf_ptr,
            opened.image_size,
            opened.tree_extents,
            opened.bitmap_extents,
        )
        root = root_hmac_digest(
            layout,
            root_key,
            nodes[0],
            geometry.root_position(),
            encrypted_counter,
            context,
        )
        old_mutable = opened.mutable
        mutable = MutableHeader(
            self.aux_heads,
            root,
            encrypted_counter,
            preauth,
            leaf_ptr,
            entry_leaf,
            old_mutable.image_size_allocation_blocks,
        )
        mutable_at = opened.static.encoded_len
        encoded = mutable.encode()
        self.new[mutable_at : mutable_at + len(encoded)] = encoded

        # Classify every changed IO Block.
        io_ab = self.io_ab
        candidates = {b // io_ab for b in self.touched}
        candidates.update(
            range(
                mutable_at // layout.io_block_size,
                -(-(mutable_at + len(encoded)) // layout.io_block_size),
            )
        )
        candidates.update(tree_io)
        old = opened.data
        io = layout.io_block_size
        direct: list[int] = []
        staged: list[int] = []
        tree_blocks: list[int] = []
        tree_ranges = [(s // io_ab, (s + n) // io_ab) for s, n in opened.tree_extents]
        for k in sorted(candidates):
            if self.new[k * io : (k + 1) * io] == old[k * io : (k + 1) * io]:
                continue
            if any(lo <= k < hi for lo, hi in tree_ranges):
                tree_blocks.append(k)
            elif (
                not any(self.old_map[k * io_ab : (k + 1) * io_ab])
                and k * io_ab >= opened.header_end
            ):
                direct.append(k)
            else:
                staged.append(k)

        # Replay rebuilds whole leaves, so it needs the bitmap blocks behind each one.
        bitmap_digests = self._bitmap_fragment_digests(geometry, changed, digests)
        new_image = self._next_image(mutable, new_bits, nodes, rewritten, changed, counter)
        changed_phys = sorted({geometry.data_block_start(i) >> geometry.a for i in changed})
        return Plan(
            self.new,
            direct,
            staged,
            tree_blocks,
            changed_phys,
            bitmap_digests,
            new_image,
            self.allocator.spare_io_blocks(),
        )

    def _bitmap_fragment_digests(
        self, geometry: TreeGeometry, changed: list[int], digests: _Overlay
    ) -> list[tuple[int, bytes]]:
        """The digests of every bitmap data block replay reads (journal field 3).

        Replay rebuilds each touched leaf whole, so it needs the bitmap blocks tracking all
        of each touched leaf's data range, not only the blocks that changed.
        """
        layout = self.layout
        leaf_span = geometry.span(0)
        leaves = sorted({i // leaf_span for i in changed})
        block = layout.allocation_bitmap_file_block_size
        covers = (block - _IV_LEN) // 8 * 64  # Allocation Blocks tracked per bitmap block
        needed_blocks: set[int] = set()
        for leaf in leaves:
            first = geometry.data_block_start(leaf * leaf_span)
            last_index = min((leaf + 1) * leaf_span, geometry.data_block_count) - 1
            last = geometry.data_block_start(last_index) + (1 << geometry.a) - 1
            needed_blocks.update(range(first // covers, last // covers + 1))
        # Bitmap file block n lies at byte n*block of the bitmap file's extents.
        atdb = layout.auth_tree_data_block_size
        records: set[int] = set()
        for n in needed_blocks:
            at = n * block
            for start, length in self.opened.bitmap_extents:
                size = length << self.shift
                if at < size:
                    phys = (start << self.shift) + at
                    first = phys // atdb
                    last = (phys + block - 1) // atdb
                    records.update(range(first, last + 1))
                    break
                at -= size
        out: list[tuple[int, bytes]] = []
        for phys_atdb in sorted(records):
            index = geometry.data_index(phys_atdb << geometry.a)
            assert index is not None
            out.append((phys_atdb, digests[index]))
        return out

    def _next_image(
        self,
        mutable: MutableHeader,
        new_bits: bytearray,
        nodes: _Overlay,
        rewritten: set[int],
        changed: list[int],
        counter: int,
    ) -> CocoonFsImage:
        """The state after the transaction, without re-reading the image."""
        opened = self.opened
        nxt = _Opener.__new__(_Opener)
        nxt.__dict__.update(opened.__dict__)
        # The volume replaces this with what the device holds once the writes are done.
        nxt.data = self.new  # type: ignore[assignment]
        nxt.mutable = mutable
        nxt.bitmap = bytes(new_bits)
        nxt.alloc_map = self.new_map
        nxt.entries = dict(sorted(self.entries.items()))
        nxt.index_nodes = self.index_nodes
        nxt.counter = counter
        nxt.aux_extents = self.aux_extents
        nxt.skipped = [opened.journal_head, *self.aux_extents]
        tree = _clone_tree(opened.tree, nxt)
        # Authentic in the new image: every node verified before and left alone, every node
        # rewritten here; every data block checked before and not changed.
        tree.verified = {**opened.tree.verified, **{n: nodes[n] for n in rewritten}}
        tree.checked_blocks = opened.tree.checked_blocks | set(changed)
        nxt.tree = tree
        return CocoonFsImage(nxt)


class _Overlay:
    """Reads through to a verified source; writes stay here (the new state's values)."""

    def __init__(self, source: Callable[[int], bytes]) -> None:
        self.source = source
        self.written: dict[int, bytes] = {}

    def __getitem__(self, key: int) -> bytes:
        found = self.written.get(key)
        return self.source(key) if found is None else found

    def __setitem__(self, key: int, value: bytes) -> None:
        self.written[key] = value


def _clone_tree(tree: _AuthTree, opener: _Opener) -> _AuthTree:
    clone = tree.__class__.__new__(tree.__class__)
    clone.__dict__.update(tree.__dict__)
    clone.opener = opener
    return clone


def _split(items: list[_T], most: int) -> list[list[_T]]:
    """Split into the fewest groups of at most `most`, as evenly as possible."""
    groups = max(1, -(-len(items) // most))
    size, extra = divmod(len(items), groups)
    out: list[list[_T]] = []
    at = 0
    for g in range(groups):
        n = size + (1 if g < extra else 0)
        out.append(items[at : at + n])
        at += n
    return out


def _carve(region: list[Extent], sizes: list[int]) -> list[int]:
    """Cut consecutive blocks of `sizes` out of the allocated `region` extents."""
    out: list[int] = []
    extents = [list(e) for e in region]
    i = 0
    for size in sizes:
        while extents[i][1] < size:
            i += 1
        out.append(extents[i][0])
        extents[i][0] += size
        extents[i][1] -= size
    return out


def _leaf_payload(entries: list[InodeEntry], slots: int, nxt: int | None) -> bytes:
    out = bytearray(encode_block_ptr(nxt))
    ptrs = [e.extent_ptr for e in entries] + [NIL_PTR] * (slots - len(entries))
    out += b"".join(ptrs)
    out += b"".join(_U64.pack(e.inode) for e in entries) + bytes(8 * (slots - len(entries)))
    out += b"".join(struct.pack("<I", e.flags) for e in entries) + bytes(4 * (slots - len(entries)))
    out += struct.pack("<I", 1)
    return bytes(out)


def _internal_payload(children: list[int], keys: list[int], slots: int, level: int) -> bytes:
    ptrs = [encode_block_ptr(c) for c in children] + [NIL_PTR] * (slots + 1 - len(children))
    out = bytearray(b"".join(ptrs))
    out += b"".join(_U64.pack(k) for k in keys) + bytes(8 * (slots - len(keys)))
    out += struct.pack("<I", level)
    return bytes(out)


def plan(
    image: CocoonFsImage,
    changes: Mapping[int, tuple[bytes, int] | None],
    *,
    aux: AuxFsMetadata | None = None,
) -> Plan:
    """Build the transaction that applies `changes` (inode -> (data, flags), or None to remove).

    `aux` replaces the auxiliary metadata, in update groups allocated anew for it.

    Raises:
        ValueError: a reserved inode (0-15), an inode beyond 64 bits, or flags beyond the 8
            application bits.
        DeviceFullError: the image has no room.
    """
    txn = _Txn(image)
    for inode, change in sorted(changes.items()):
        if not FIRST_USER_INODE <= inode <= MAX_INODE:
            raise ValueError(f"inode {inode} is reserved or out of range (16..2^64-1)")
        if change is None:
            txn.remove_file(inode)
            continue
        data, flags = change
        if not 0 <= flags <= 0xFF:
            raise ValueError(f"inode flags {flags:#x}: only the low 8 bits are the application's")
        txn.write_file(inode, data, flags)
    if aux is not None:
        txn.set_aux(aux)
    result = txn.finish()
    if any(change is not None for change in changes.values()):
        # A removal needs room too (a new index, staging copies, the journal): a write may
        # not take the last of it, or the image could never shrink again.
        index_blocks = sum(n for _, n in txn.index_nodes)
        reserve = -(-index_blocks // txn.io_ab) + _REMOVAL_RESERVE_IO_BLOCKS
        free = _free_io_blocks(txn.allocator.work, txn.io_ab)
        if free < reserve:
            raise DeviceFullError(
                f"CocoonFs image full: the write would leave {free} free IO Blocks; "
                f"{reserve} stay free so that files can still be removed"
            )
    return result


def _free_io_blocks(alloc_map: bytearray, io_ab: int) -> int:
    """IO Blocks whose Allocation Blocks are all free in a one-byte-per-block map."""
    whole = memoryview(alloc_map)[: len(alloc_map) // io_ab * io_ab]
    # One machine word per IO Block where one fits: counting zero words is counting free
    # IO Blocks, at C speed.
    if io_ab == 1:
        return len(alloc_map) - sum(alloc_map)
    if io_ab == 2:
        return whole.cast("H").tolist().count(0)
    if io_ab == 4:
        return whole.cast("I").tolist().count(0)
    if io_ab == 8:
        return whole.cast("Q").tolist().count(0)
    return sum(
        1 for k in range(len(alloc_map) // io_ab) if not any(alloc_map[k * io_ab : (k + 1) * io_ab])
    )
