"""CocoonFs mkfs: choose a layout, lay out a fresh image, or write a keyless mkfs info header.

Spec: `cocoonfs-format.md`, sections "Image header", "Authentication tree", "Allocation
bitmap", "Inode index", "Filesystem creation info header". The algorithm choice follows the
`cocoonfs` tool's `-H/-C/-t` (docs/cocoonfs.md): node and data hashes and the cipher key follow
the strength; the root HMAC, pre-authentication HMAC and KDF use the family's 256-bit member;
SM3 and SM4 exist only at 128 bits.

Placement (all free space randomised unless asked not to): static header, mutable header,
journal log head, the authentication tree (sized to cover the rest of the image), the
allocation bitmap, the extents lists of inodes 1 and 2 (inline authenticated), and a single
inode index leaf. No auxiliary metadata area is made.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass

from cvmstore._types import BlockIndex
from cvmstore.block.protocol import BlockDevice
from cvmstore.cocoonfs.auxmeta import AuxFsMetadata
from cvmstore.cocoonfs.auxwrite import (
    STATE_ACTIVE,
    aux_group_sizes,
    circle_links,
    encode_aux_extent,
    encode_mkfsinfo_aux_blob,
    split_payload,
)
from cvmstore.cocoonfs.entities import chained_capacity, encrypt_block, encrypt_chained
from cvmstore.cocoonfs.image import (
    InodeEntry,
    SpecialInode,
    _Opener,
    data_block_digests,
    encode_extents_list,
    encrypt_counter,
    header_end_of,
    image_context_digest,
    journal_head_extent,
    root_hmac_digest,
)
from cvmstore.cocoonfs.keys import (
    InodeKeySubdomain,
    KeyPurpose,
    derive_root_key,
    derive_subkey,
    hmac_digest,
)
from cvmstore.cocoonfs.layout import (
    NIL_PTR,
    CipherAlg,
    HashAlg,
    ImageLayout,
    MkfsInfoHeader,
    MutableHeader,
    StaticHeader,
    align_up,
    encode_block_ptr,
    encode_extent_ptr,
)
from cvmstore.cocoonfs.tree import AuthSubject, Extent, TreeGeometry, levels_for, nodes_needed
from cvmstore.cocoonfs.writer import _leaf_payload
from cvmstore.errors import DeviceFullError

__all__ = [
    "MkfsOptions",
    "format_layout",
    "layout_for",
    "mkfs_image",
    "mkfs_info_header",
    "mkfsinfo_backup_offset",
]

_HASHES = {
    ("sha2", 128): HashAlg.SHA256,
    ("sha2", 192): HashAlg.SHA384,
    ("sha2", 256): HashAlg.SHA512,
    ("sha3", 128): HashAlg.SHA3_256,
    ("sha3", 192): HashAlg.SHA3_384,
    ("sha3", 256): HashAlg.SHA3_512,
    ("sm3", 128): HashAlg.SM3_256,
}
_CIPHERS = {"aes": CipherAlg.AES, "camellia": CipherAlg.CAMELLIA, "sm4": CipherAlg.SM4}
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class MkfsOptions:
    """What `cocoonfs mkfs` takes, with the tool's defaults (sizes in bytes)."""

    salt: bytes
    hash_family: str = "sha2"
    cipher: str = "aes"
    strength: int = 128
    allocation_block_size: int = 128
    io_block_size: int | None = None
    auth_tree_data_block_size: int | None = None
    auth_tree_node_size: int | None = None
    index_leaf_node_size: int | None = None
    index_internal_node_size: int | None = None
    bitmap_block_size: int | None = None
    randomize: bool = True
    #: Extra payload room in each aux metadata update group, for keyless updates; None
    #: disables them (no update group 1), as the tool's `disabled`.
    aux_extra_reserve: int | None = 1024
    #: Initial auxiliary metadata entries (UUID, data), e.g. a KBS-wrapped key.
    aux_entries: tuple[tuple[uuid.UUID, bytes], ...] = ()


def _log2(value: int, what: str) -> int:
    if value <= 0 or value & (value - 1):
        raise ValueError(f"{what} must be a power of two, not {value}")
    return value.bit_length() - 1


def layout_for(options: MkfsOptions) -> ImageLayout:
    """The image layout `cocoonfs mkfs` would choose for these options.

    Raises:
        ValueError: an unknown family or cipher, SM3/SM4 above 128 bits, or a size that is
            not a power of two or breaks the tool's bounds.
    """
    family, cipher_name, strength = options.hash_family, options.cipher, options.strength
    if (family, strength) not in _HASHES:
        raise ValueError(f"hash family {family!r} at {strength} bits is not offered")
    if cipher_name not in _CIPHERS or (cipher_name == "sm4" and strength != 128):
        raise ValueError(f"cipher {cipher_name!r} at {strength} bits is not offered")
    strong = _HASHES[family, strength]
    base = _HASHES[family, 128]
    ab = options.allocation_block_size
    io = options.io_block_size or max(512, ab)
    atdb = options.auth_tree_data_block_size or io
    node = options.auth_tree_node_size or max(1024, io)
    leaf = options.index_leaf_node_size or ab
    internal = options.index_internal_node_size or ab
    bitmap = options.bitmap_block_size or max(512, atdb)
    ab_log2 = _log2(ab, "the Allocation Block size")
    if ab_log2 < 7:
        raise ValueError("the Allocation Block size is at least 128 B")

    def in_ab(size: int, what: str, most: int = 6) -> int:
        value = _log2(size, what) - ab_log2
        if not 0 <= value <= most:
            raise ValueError(f"{what} must be 1 to {1 << most} Allocation Blocks")
        return value

    io_log2 = in_ab(io, "the IO Block size")
    node_log2 = _log2(node, "the auth tree node size") - ab_log2 - io_log2
    if node_log2 < 0:
        raise ValueError("the auth tree node size is at least the IO Block size")
    layout = ImageLayout(
        ab_log2 - 7,
        io_log2,
        node_log2,
        in_ab(atdb, "the Authentication Tree Data Block size"),
        in_ab(bitmap, "the allocation bitmap block size", 33),
        in_ab(leaf, "the index leaf node size"),
        in_ab(internal, "the index internal node size"),
        strong,
        strong,
        base,
        base,
        base,
        _CIPHERS[cipher_name],
        strength,
    )
    return ImageLayout.decode(layout.encode())  # the decoder's checks, once


def mkfs_info_header(options: MkfsOptions, image_size: int) -> bytes:
    """The keyless `CCFSMKFS` header for a volume of `image_size` bytes.

    With aux metadata (entries, or an extra reserve capacity) the checksummed blob follows
    the header, as the first keyed open will place it in the formatted image.
    """
    layout = layout_for(options)
    blocks = image_size >> layout.allocation_block_size_log2
    blocks -= blocks % (1 << layout.io_block_allocation_blocks_log2)
    if blocks <= 0:
        raise ValueError("the image is smaller than one IO Block")
    payload = b""
    if options.aux_entries or options.aux_extra_reserve is not None:
        payload = AuxFsMetadata(options.aux_entries, options.aux_extra_reserve).encode()
    header = MkfsInfoHeader(layout, len(payload), blocks, options.salt).encode()
    return header + (encode_mkfsinfo_aux_blob(layout, payload) if payload else b"")


def mkfsinfo_backup_offset(volume_size: int) -> int | None:
    """Where the backup `CCFSMKFS` header goes (section "Filesystem creation info header").

    At the start of the last of at least 16 units of the largest power of two that allows
    it (at least 512 B); None for a volume under 8 KiB, which cannot have one.
    """
    unit = 512
    if volume_size < 16 * unit:
        return None
    while 16 * unit * 2 <= volume_size:
        unit *= 2
    return (volume_size // unit - 1) * unit


def _tree_extent(layout: ImageLayout, start: int, image_size: int) -> Extent:
    """The smallest aligned tree extent at `start` that covers the rest of the image."""
    align = 1 << max(
        layout.io_block_allocation_blocks_log2,
        layout.auth_tree_data_block_allocation_blocks_log2,
    )
    node_ab = layout.auth_tree_node_size >> layout.allocation_block_size_log2
    node_log2 = layout.auth_tree_node_size_log2
    c = node_log2 - (layout.auth_tree_node_hash_alg.digest_len - 1).bit_length()
    d = node_log2 - (layout.auth_tree_data_hmac_hash_alg.digest_len - 1).bit_length()
    a = layout.auth_tree_data_block_allocation_blocks_log2
    length = align_up(node_ab, align)
    while length < image_size - start:
        data_blocks = -(-(image_size - length) >> a)
        levels = 1
        while data_blocks > 1 << (d + c * (levels - 1)):
            levels += 1
        need = nodes_needed(levels, data_blocks, c, d)
        stored = (length << layout.allocation_block_size_log2) // layout.auth_tree_node_size
        # The reader deduces the height from the node count: it must come out the same.
        if stored >= need and levels_for(stored, c, d, a) == levels:
            return start, length
        length = max(length + align, align_up(need * node_ab, align))
    raise DeviceFullError("CocoonFs mkfs: no authentication tree fits the image")


def mkfs_image(
    device: BlockDevice, key: bytes, options: MkfsOptions, *, image_size: int | None = None
) -> bytes:
    """Format `device` (or its first `image_size` bytes); returns the image written.

    Raises:
        ValueError: bad options.
        DeviceFullError: the device is too small for the metadata.
    """
    return format_layout(
        device,
        key,
        layout_for(options),
        options.salt,
        randomize=options.randomize,
        image_size=image_size,
        aux=AuxFsMetadata(options.aux_entries, options.aux_extra_reserve),
    )


def format_layout(
    device: BlockDevice,
    key: bytes,
    layout: ImageLayout,
    salt: bytes,
    *,
    randomize: bool = True,
    image_size: int | None = None,
    aux: AuxFsMetadata | None = None,
    keep: tuple[int, bytes] | None = None,
) -> bytes:
    """Format `device` with an explicit layout (as a `CCFSMKFS` header gives it).

    `aux` is the initial auxiliary metadata: its extra reserve capacity decides whether an
    update group 1 exists; none (or no entries and no reserve) makes no aux area. `keep` is
    (byte offset, bytes) left as they are, in free space (the `CCFSMKFS` backup copy).
    """
    shift = layout.allocation_block_size_log2
    io_ab = 1 << layout.io_block_allocation_blocks_log2
    total = image_size if image_size is not None else device.block_count * device.block_size
    blocks = (total >> shift) // io_ab * io_ab
    static = StaticHeader(layout, salt)
    header_end = header_end_of(static)
    head = journal_head_extent(layout, header_end)
    cursor = head[0] + head[1]
    if blocks <= cursor:
        raise DeviceFullError("CocoonFs mkfs: the device is smaller than the headers")
    tree = _tree_extent(layout, cursor, blocks)
    cursor = tree[0] + tree[1]
    align = 1 << max(
        layout.io_block_allocation_blocks_log2,
        layout.auth_tree_data_block_allocation_blocks_log2,
    )
    # Auxiliary metadata update groups: group 0, and group 1 when keyless updates may
    # happen (an extra reserve capacity is set).
    aux_groups: list[list[Extent]] = []
    aux_payload = b""
    if aux is not None and (aux.entries or aux.extra_reserve_capacity is not None):
        aux_payload = aux.encode()
        reserve = aux.extra_reserve_capacity or 0
        for _ in range(1 if aux.extra_reserve_capacity is None else 2):
            group: list[Extent] = []
            for size in aux_group_sizes(layout, len(aux_payload), reserve):
                group.append((cursor, size))
                cursor += size
            aux_groups.append(group)
    aux_extents = [extent for group in aux_groups for extent in group]
    bitmap_block = layout.allocation_bitmap_file_block_size
    words_per_block = (bitmap_block - 16) // 8
    words = -(-blocks // 64)
    bitmap_blocks = -(-words // words_per_block)
    bitmap = (align_up(cursor, align), bitmap_blocks * (bitmap_block >> shift))
    cursor = align_up(bitmap[0] + bitmap[1], io_ab)
    # Extents lists of inodes 1 and 2 (inline authenticated), one IO Block each.
    tree_chain = (cursor, io_ab)
    bitmap_chain = (cursor + io_ab, io_ab)
    leaf_ab = max(1, layout.index_leaf_node_size >> shift)
    leaf_at = align_up(cursor + 2 * io_ab, max(io_ab, leaf_ab))
    used_end = leaf_at + leaf_ab
    if used_end > blocks:
        raise DeviceFullError("CocoonFs mkfs: the device is too small")

    root_key = derive_root_key(key, layout, salt)

    def subkey(purpose: KeyPurpose, domain: int, sub: int) -> bytes:
        return derive_subkey(root_key, layout, purpose, domain, sub)

    size_bytes = blocks << shift
    data = bytearray(os.urandom(size_bytes) if randomize else bytes(size_bytes))
    data[: header_end << shift] = bytes(header_end << shift)
    data[head[0] << shift : (head[0] + head[1]) << shift] = bytes(head[1] << shift)
    alloc = bytearray(blocks)
    for start, length in [
        (0, header_end),
        head,
        tree,
        bitmap,
        tree_chain,
        bitmap_chain,
        (leaf_at, leaf_ab),
        *aux_extents,
    ]:
        alloc[start : start + length] = b"\x01" * length

    aux_heads = (NIL_PTR, NIL_PTR)
    if aux_groups:
        ring = [extent for group in aux_groups for extent in group]
        links = dict(zip(ring, circle_links(ring), strict=True))
        for group in aux_groups:
            parts = split_payload(layout, group, aux_payload)
            for i, (extent, part) in enumerate(zip(group, parts, strict=True)):
                raw = encode_aux_extent(
                    layout, extent, links[extent], STATE_ACTIVE if i == 0 else None, part
                )
                data[extent[0] << shift : (extent[0] << shift) + len(raw)] = raw
        aux_heads = (
            encode_extent_ptr(*aux_groups[0][0]),
            encode_extent_ptr(*aux_groups[1][0]) if len(aux_groups) > 1 else NIL_PTR,
        )

    def chain_ptr(inode: int, extents: list[Extent], chain: Extent) -> bytes:
        if len(extents) == 1 and extents[0][1] <= 64:
            alloc[chain[0] : chain[0] + chain[1]] = bytes(chain[1])
            return encode_extent_ptr(*extents[0])
        payload = encode_extents_list(extents)
        tag = layout.preauth_cca_protection_hmac_hash_alg.digest_len
        if chained_capacity(layout, chain[1] << shift, first=True, tag_len=tag) < len(payload) + 1:
            raise DeviceFullError("CocoonFs mkfs: extents list does not fit one IO Block")
        enc = subkey(KeyPurpose.ENCRYPTION, inode, InodeKeySubdomain.EXTENTS_LIST)
        mac = subkey(KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH, inode, InodeKeySubdomain.EXTENTS_LIST)
        aad = _U64.pack(inode) + bytes([0, 2])
        (raw,) = encrypt_chained(layout, enc, payload, [chain], auth=(mac, aad))
        data[chain[0] << shift : (chain[0] + chain[1]) << shift] = raw
        return encode_extent_ptr(chain[0], chain[1], indirect=True)

    tree_ptr = chain_ptr(SpecialInode.AUTH_TREE, [tree], tree_chain)
    bitmap_ptr = chain_ptr(SpecialInode.ALLOC_BITMAP, [bitmap], bitmap_chain)
    entries = [
        InodeEntry(SpecialInode.AUTH_TREE, 0, tree_ptr),
        InodeEntry(SpecialInode.ALLOC_BITMAP, 0, bitmap_ptr),
        InodeEntry(SpecialInode.INDEX_ROOT, 0, encode_extent_ptr(leaf_at, leaf_ab)),
    ]
    leaf_size = layout.index_leaf_node_size
    slots = (leaf_size - 16 - 12) // 20
    index_key = subkey(KeyPurpose.ENCRYPTION, SpecialInode.INDEX_ROOT, InodeKeySubdomain.DATA)
    leaf_raw = encrypt_block(layout, index_key, _leaf_payload(entries, slots, None), leaf_size)
    data[leaf_at << shift : (leaf_at << shift) + leaf_size] = leaf_raw

    # The bitmap, now that every allocation is known.
    bits = bytearray(words_per_block * 8 * bitmap_blocks)
    for block in range(blocks):
        if alloc[block]:
            bits[block >> 3] |= 1 << (block & 7)
    bitmap_key = subkey(KeyPurpose.ENCRYPTION, SpecialInode.ALLOC_BITMAP, InodeKeySubdomain.DATA)
    step = words_per_block * 8
    for n in range(bitmap_blocks):
        at = (bitmap[0] << shift) + n * bitmap_block
        data[at : at + bitmap_block] = encrypt_block(
            layout, bitmap_key, bytes(bits[n * step : (n + 1) * step]), bitmap_block
        )

    # The tree over everything, then the mutable header that seals it.
    geometry = TreeGeometry(layout, [tree], blocks)
    shim = _Opener.__new__(_Opener)
    shim.data = bytes(data)
    shim.layout = layout
    shim.root_key = root_key
    shim.header_end = header_end
    shim.image_size = blocks
    nodes = geometry.build(data_block_digests(shim, geometry, bits, [head, *aux_extents]))
    for node in range(geometry.node_count):
        at = geometry.node_byte_offset(node)
        data[at : at + layout.auth_tree_node_size] = bytes(layout.auth_tree_node_size)
    for node, entries_raw in nodes.items():
        at = geometry.node_byte_offset(node)
        data[at : at + len(entries_raw)] = entries_raw
    counter = int.from_bytes(os.urandom(16), "little")
    encrypted_counter = encrypt_counter(
        layout,
        subkey(KeyPurpose.ENCRYPTION, SpecialInode.UPDATE_COUNTER, InodeKeySubdomain.DATA),
        counter,
    )
    leaf_ptr = encode_block_ptr(leaf_at)
    preauth = hmac_digest(
        layout.preauth_cca_protection_hmac_hash_alg,
        subkey(
            KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH, SpecialInode.INDEX_ROOT, InodeKeySubdomain.DATA
        ),
        leaf_raw,
        struct.pack(">HH", layout.block_cipher_alg, layout.block_cipher_key_bits),
        bytes([0, AuthSubject.INODE_INDEX_NODE]),
    )
    root_key_mac = subkey(KeyPurpose.AUTH_ROOT, SpecialInode.AUTH_TREE, 0)
    context = image_context_digest(layout, root_key_mac, leaf_ptr, blocks, [tree], [bitmap])
    root = root_hmac_digest(
        layout, root_key_mac, nodes[0], geometry.root_position(), encrypted_counter, context
    )
    mutable = MutableHeader(aux_heads, root, encrypted_counter, preauth, leaf_ptr, leaf_at, blocks)
    header = static.encode() + mutable.encode()
    data[: len(header)] = header

    if keep is not None:
        at, kept = keep
        first, last = at >> shift, (at + len(kept) - 1) >> shift
        if last >= blocks or any(alloc[first : last + 1]):
            raise DeviceFullError("CocoonFs mkfs: the metadata would overwrite the header backup")
        data[at : at + len(kept)] = kept

    # Everything but the static header first, then the static header alone: until it is
    # complete no valid image exists (and an online mkfs restarts from its backup).
    bs = device.block_size
    first_blocks = -(-static.encoded_len // bs)
    if len(data) % bs:
        raise ValueError(f"the image size is not a multiple of the device block size {bs}")
    device.write(BlockIndex(first_blocks), bytes(data[first_blocks * bs :]))
    device.flush()
    device.write(BlockIndex(0), bytes(data[: first_blocks * bs]))
    device.flush()
    return bytes(data)
