"""CocoonFs auxiliary metadata, the writing direction.

Lay out the update groups at mkfs, and update the metadata offline (no key) within the room
the groups have.

Spec: "Storage in a formatted filesystem" and "Storage as part of the filesystem creation
info data". Every extent is written with the fail-safe extent write protocol (zero its first
device block, barrier, the rest, barrier, the first device block, barrier), so at most one
extent is ever torn and the list can always be followed.

Offline update, group 0 active and group 1 present:

1. group 1's head is written inactive if it was active (group 0 stays effective);
2. group 1 gets the current metadata, tail extents first, its head last, active (now both
   groups are active, holding the same metadata);
3. group 0's head is written inactive, holding its part of the new metadata (group 1, with
   the old metadata, is now effective);
4. group 0's tail extents get the rest of the new metadata, then its head is written active.

A crash anywhere leaves the old metadata or the new one effective. Without a group 1 (extra
reserve capacity disabled at mkfs) there is no safe offline update, and none is attempted.
"""

from __future__ import annotations

from collections.abc import Callable

from cvmstore._types import BlockIndex
from cvmstore.block.protocol import BlockDevice
from cvmstore.cocoonfs.auxmeta import AuxFsMetadata, AuxGroup, walk_aux_groups
from cvmstore.cocoonfs.layout import (
    CHECKSUM_LEN,
    ImageLayout,
    MutableHeader,
    StaticHeader,
    align_up,
    apply_extent_integrity,
    checksum,
    encode_extent_ptr,
)
from cvmstore.cocoonfs.tree import Extent
from cvmstore.errors import DeviceFullError, FormatError

__all__ = [
    "STATE_ACTIVE",
    "STATE_INACTIVE",
    "aux_group_sizes",
    "encode_aux_extent",
    "encode_mkfsinfo_aux_blob",
    "update_aux_offline",
]

STATE_INACTIVE = 0
STATE_ACTIVE = 1
#: Extents of an aux metadata list are at most 64 Allocation Blocks (an extent pointer).
_MAX_EXTENT = 64


def _header_len(layout: ImageLayout, is_head: bool) -> int:
    return 16 + (1 if is_head else 0) + layout.integrity_section_len


def extent_capacity(layout: ImageLayout, extent: Extent, is_head: bool) -> int:
    """Payload bytes one list extent holds."""
    return (extent[1] << layout.allocation_block_size_log2) - _header_len(layout, is_head)


def encode_aux_extent(
    layout: ImageLayout,
    extent: Extent,
    links: tuple[Extent, Extent],
    state: int | None,
    part: bytes,
) -> bytes:
    """One list extent as stored: links, state (heads only), integrity section, payload."""
    size = extent[1] << layout.allocation_block_size_log2
    is_head = state is not None
    original = bytearray(size)
    original[0:8] = encode_extent_ptr(*links[0])
    original[8:16] = encode_extent_ptr(*links[1])
    if state is not None:
        original[16] = state
    at = _header_len(layout, is_head)
    if len(part) > size - at:
        raise ValueError("payload part larger than the extent")
    original[at : at + len(part)] = part
    return apply_extent_integrity(
        bytes(original), 0, 17 if is_head else 16, layout.io_block_128b_log2
    )


def aux_group_sizes(layout: ImageLayout, payload_len: int, reserve: int) -> list[int]:
    """Allocation Block lengths of one group's extents for `payload_len` + `reserve` bytes.

    Each extent is aligned to the larger of the IO Block and the data block, and at most 64
    Allocation Blocks (the extent pointer's limit).
    """
    align = 1 << max(
        layout.io_block_allocation_blocks_log2,
        layout.auth_tree_data_block_allocation_blocks_log2,
    )
    most = max(align, _MAX_EXTENT // align * align)
    ab = layout.allocation_block_size
    left = payload_len + reserve
    sizes: list[int] = []
    while True:
        header = _header_len(layout, not sizes)
        need = align_up(-(-(left + header) // ab), align)
        size = min(need, most)
        sizes.append(size)
        left -= size * ab - header
        if left <= 0:
            return sizes


def circle_links(extents: list[Extent]) -> list[tuple[Extent, Extent]]:
    """Each extent's next and next-but-one on the circular list."""
    n = len(extents)
    return [(extents[(i + 1) % n], extents[(i + 2) % n]) for i in range(n)]


def split_payload(layout: ImageLayout, group: list[Extent], payload: bytes) -> list[bytes]:
    """The payload cut into each extent's part; `DeviceFullError` if it does not fit."""
    parts: list[bytes] = []
    at = 0
    for i, extent in enumerate(group):
        room = extent_capacity(layout, extent, i == 0)
        parts.append(payload[at : at + room])
        at += room
    if at < len(payload):
        raise DeviceFullError(
            f"CocoonFs aux metadata: {len(payload)} bytes do not fit the update group's "
            f"{at} bytes; growing the groups needs the key and is not implemented"
        )
    return parts


def encode_mkfsinfo_aux_blob(layout: ImageLayout, payload: bytes) -> bytes:
    """The blob stored after a `CCFSMKFS` header: checksum, payload, zeros to an IO Block."""
    total = align_up(CHECKSUM_LEN + len(payload), layout.io_block_size)
    padded = payload + bytes(total - CHECKSUM_LEN - len(payload))
    return checksum(padded) + padded


def fail_safe_write(device: BlockDevice, offset: int, raw: bytes) -> None:
    """The fail-safe extent write protocol, in device blocks.

    The first block zeroed, barrier, the rest, barrier, the first block, barrier.
    """
    bs = device.block_size
    if offset % bs or len(raw) % bs:
        raise ValueError("aux metadata extents must be whole device blocks")
    first = BlockIndex(offset // bs)
    device.write(first, bytes(bs))
    device.flush()
    if len(raw) > bs:
        device.write(BlockIndex(first + 1), raw[bs:])
        device.flush()
    device.write(first, raw[:bs])
    device.flush()


def update_aux_offline(
    device: BlockDevice, edit: Callable[[AuxFsMetadata], AuxFsMetadata]
) -> AuxFsMetadata:
    """Apply `edit` to the effective aux metadata of the image on `device`, without the key.

    Returns the new metadata.

    Raises:
        FormatError: no aux metadata area, a pending journal, or a malformed list.
        DeviceFullError: no update group 1 (offline updates disabled), or the new metadata
            does not fit the groups (the Rust tool can grow them, with the key).
    """
    data = device.read(BlockIndex(0), device.block_count)
    static = StaticHeader.decode(data)
    layout = static.layout
    from cvmstore.cocoonfs.image import header_end_of, journal_head_extent, journal_pending

    if journal_pending(data, layout, journal_head_extent(layout, header_end_of(static))):
        raise FormatError("CocoonFs image has a pending journal: open it with the key first")
    at = static.encoded_len
    mutable = MutableHeader.decode(data[at : at + MutableHeader.encoded_len(layout)], layout)
    groups = walk_aux_groups(data, layout, mutable.aux_fs_metadata_heads)
    if not groups:
        raise FormatError("CocoonFs image has no auxiliary metadata area")
    if len(groups) < 2:
        raise DeviceFullError(
            "CocoonFs aux metadata: offline updates are disabled (no update group 1; the "
            "extra reserve capacity was 'disabled' at mkfs)"
        )
    align = 1 << max(
        layout.io_block_allocation_blocks_log2,
        layout.auth_tree_data_block_allocation_blocks_log2,
    )
    size = len(data) >> layout.allocation_block_size_log2
    for group in groups:
        for start, length in group.extents:
            if start % align or length % align or start + length > size:
                raise FormatError("CocoonFs aux metadata extent not aligned or beyond the image")
    effective = next((g for g in groups if g.active), None)
    if effective is None:
        raise FormatError("CocoonFs aux metadata: no active update group")
    current = AuxFsMetadata.decode(b"".join(p for p in effective.parts if p is not None))
    updated = edit(current)
    old_payload, new_payload = current.encode(), updated.encode()
    group0, group1 = groups
    planned = {
        id(group1): split_payload(layout, group1.extents, old_payload),
        id(group0): split_payload(layout, group0.extents, new_payload),
    }
    ring = [*group0.extents, *group1.extents]
    links = dict(zip(ring, circle_links(ring), strict=True))
    shift = layout.allocation_block_size_log2

    def write(extent: Extent, state: int | None, part: bytes) -> None:
        raw = encode_aux_extent(layout, extent, links[extent], state, part)
        fail_safe_write(device, extent[0] << shift, raw)

    # 0: a torn extent (a crash during an earlier edit) is repaired before any other write
    # may tear a second one; it is never in the effective group.
    for group in groups:
        for k, (extent, part) in enumerate(zip(group.extents, group.parts, strict=True)):
            if part is not None:
                continue
            if k and group.state not in (None, STATE_INACTIVE):
                raise FormatError(
                    "CocoonFs aux metadata: a torn extent in a group marked active; repair "
                    "it with the key holder's tool"
                )
            write(extent, STATE_INACTIVE if k == 0 else None, planned[id(group)][k])
            if k == 0:
                group.state = STATE_INACTIVE
    if effective is group0:
        # 1-2: group 1 takes the current metadata (group 0 stays effective meanwhile).
        if group1.state not in (None, STATE_INACTIVE):
            write(group1.extents[0], STATE_INACTIVE, planned[id(group1)][0])
        _write_group(write, group1, planned[id(group1)])
    # 3-4: group 0 out of use, refilled, back in use.
    write(group0.extents[0], STATE_INACTIVE, planned[id(group0)][0])
    _write_group(write, group0, planned[id(group0)])
    return updated


def _write_group(
    write: Callable[[Extent, int | None, bytes], None], group: AuxGroup, parts: list[bytes]
) -> None:
    """Tail extents first, then the head, active."""
    for extent, part in zip(group.extents[1:], parts[1:], strict=True):
        write(extent, None, part)
    write(group.extents[0], STATE_ACTIVE, parts[0])
