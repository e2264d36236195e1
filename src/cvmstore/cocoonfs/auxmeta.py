"""CocoonFs format v1: the auxiliary filesystem metadata, read without the key.

Spec (text of cocoon-tpm-storage 0.1.5): "Auxiliary filesystem metadata", with "Payload
encoding", "Storage as part of the filesystem creation info data" and "Storage in a
formatted filesystem". The metadata is plaintext and **not authenticated**: it is meant for
things such as a KBS-wrapped filesystem key, which the reader must verify by other means.

Payload: records of (16-byte UUID, LE32 length, data), in non-decreasing UUID order, ending
with an all-zero UUID whose data is empty or an LE64 "extra reserve capacity".

Next to a `CCFSMKFS` header (at the volume's start): right after the header's IO-Block
aligned extent, an 8-byte checksum, the payload (its length is in the header) and zero
padding to an IO Block; the checksum covers payload and padding.

In a formatted image: a circular list of extents, each with LE64 links to the next and the
next but one extent, a state byte in the two update groups' heads (0 inactive, 1 active, 2
active and due for reallocation), the common integrity section, then its part of the
payload. Update group 0 runs from the first head pointer of the mutable header up to the
second head; group 1 from the second back to the first. The active group with the lowest
number holds the effective metadata.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from cvmstore.cocoonfs.layout import (
    CHECKSUM_LEN,
    ImageLayout,
    MkfsInfoHeader,
    MutableHeader,
    StaticHeader,
    align_up,
    checksum,
    decode_extent_ptr,
    remove_extent_integrity,
)
from cvmstore.errors import FormatError

__all__ = [
    "AuxFsMetadata",
    "AuxGroup",
    "read_formatted_aux_metadata",
    "read_mkfsinfo_aux_metadata",
    "walk_aux_groups",
]

_RECORD_HEAD = struct.Struct("<16sI")
_STATE_INACTIVE = 0
_ACTIVE_STATES = (1, 2)
#: Bound on the extents walked, against a list that never closes.
_MAX_EXTENTS = 4096


@dataclass(frozen=True, slots=True)
class AuxFsMetadata:
    """The decoded payload: entries in stored order, and the extra reserve capacity."""

    entries: tuple[tuple[uuid.UUID, bytes], ...]
    extra_reserve_capacity: int | None

    @classmethod
    def decode(cls, payload: bytes) -> AuxFsMetadata:
        """Decode records up to the termination record; bytes after it are ignored.

        Raises:
            FormatError: truncated, unsorted, or a bad termination record.
        """
        entries: list[tuple[uuid.UUID, bytes]] = []
        pos = 0
        while True:
            if pos + _RECORD_HEAD.size > len(payload):
                raise FormatError("CocoonFs aux metadata: no termination record")
            tag, length = _RECORD_HEAD.unpack_from(payload, pos)
            pos += _RECORD_HEAD.size
            if pos + length > len(payload):
                raise FormatError("CocoonFs aux metadata: record beyond the payload")
            data = payload[pos : pos + length]
            pos += length
            if tag == bytes(16):
                if length == 0:
                    return cls(tuple(entries), None)
                if length == 8:
                    return cls(tuple(entries), int.from_bytes(data, "little"))
                raise FormatError("CocoonFs aux metadata: termination record of bad length")
            if entries and tag < entries[-1][0].bytes:
                raise FormatError("CocoonFs aux metadata: entries out of UUID order")
            entries.append((uuid.UUID(bytes=tag), data))

    def encode(self) -> bytes:
        """The payload: records in UUID order (stable for equal UUIDs), then termination."""
        out = bytearray()
        for tag, data in sorted(self.entries, key=lambda entry: entry[0].bytes):
            out += _RECORD_HEAD.pack(tag.bytes, len(data)) + data
        if self.extra_reserve_capacity is None:
            return bytes(out + _RECORD_HEAD.pack(bytes(16), 0))
        return bytes(
            out
            + _RECORD_HEAD.pack(bytes(16), 8)
            + self.extra_reserve_capacity.to_bytes(8, "little")
        )

    def get(self, tag: uuid.UUID, index: int = 0) -> bytes | None:
        """The `index`-th entry with UUID `tag`, or None."""
        found = [data for t, data in self.entries if t == tag]
        return found[index] if index < len(found) else None


def read_mkfsinfo_aux_metadata(volume: bytes) -> AuxFsMetadata | None:
    """The metadata stored after a `CCFSMKFS` header at the start of `volume`.

    Returns None if the header records none.

    Raises:
        NotAnImageError: no creation info header at the start.
        UnsupportedVersionError: a version other than 1.
        FormatError: a damaged header or metadata blob.
    """
    header = MkfsInfoHeader.decode(volume)
    if header.aux_fs_metadata_len == 0:
        return None
    io_block = header.layout.io_block_size
    header_len = MkfsInfoHeader.FIXED_LEN + header.layout.integrity_section_len + len(header.salt)
    start = align_up(header_len, io_block)
    end = start + align_up(CHECKSUM_LEN + header.aux_fs_metadata_len, io_block)
    if end > len(volume):
        raise FormatError("CocoonFs mkfs info: aux metadata beyond the volume")
    blob = volume[start:end]
    payload_end = CHECKSUM_LEN + header.aux_fs_metadata_len
    if any(blob[payload_end:]):
        raise FormatError("CocoonFs mkfs info: aux metadata padding is not zero")
    if checksum(blob[CHECKSUM_LEN:]) != blob[:CHECKSUM_LEN]:
        raise FormatError("CocoonFs mkfs info: aux metadata checksum mismatch")
    return AuxFsMetadata.decode(blob[CHECKSUM_LEN:payload_end])


Extent = tuple[int, int]


@dataclass
class AuxGroup:
    """One update group: its extents from the head on, the head's state, and each part.

    A part is an extent's share of the payload, None for a torn extent.
    """

    extents: list[Extent]
    state: int | None
    parts: list[bytes | None]

    @property
    def active(self) -> bool:
        """Whether the group holds coherent metadata (state 1 or 2, nothing torn)."""
        return self.state in _ACTIVE_STATES and None not in self.parts


def _links(raw: bytes, offset: int) -> tuple[Extent, Extent] | None:
    """The next and next-but-one pointers, readable whenever tier 0 is intact."""
    if len(raw) < 128 or 0 in raw[:128]:
        return None
    mask = raw[offset + CHECKSUM_LEN]
    links = [decode_extent_ptr(bytes(b ^ mask for b in raw[i : i + 8])) for i in (0, 8)]
    if links[0] is None or links[1] is None or links[0][2] or links[1][2]:
        return None
    return links[0][:2], links[1][:2]


def walk_aux_groups(data: bytes, layout: ImageLayout, heads: tuple[bytes, bytes]) -> list[AuxGroup]:
    """The update groups of the circular extents list, group 0 first ([] when there is none).

    Section "Storage in a formatted filesystem". At most one extent may be torn; the walk
    steps over it with the previous extent's next-but-one pointer, and starts at group 1's
    head when group 0's own head is the torn one.

    Raises:
        FormatError: group 1 without group 0, a list that cannot be followed or never closes.
    """
    pointers = [decode_extent_ptr(p) for p in heads]
    if pointers[0] is None:
        if pointers[1] is not None:
            raise FormatError("CocoonFs aux metadata: group 1 without group 0")
        return []
    head_extents = [ptr[:2] for ptr in pointers if ptr is not None]
    head_starts = [h[0] for h in head_extents]
    shift = layout.allocation_block_size_log2

    def raw_of(extent: Extent) -> bytes:
        begin, end = extent[0] << shift, (extent[0] + extent[1]) << shift
        if end > len(data) or end - begin < layout.io_block_size:
            raise FormatError("CocoonFs aux metadata extent out of range or too short")
        return data[begin:end]

    start = head_extents[0]
    if _links(raw_of(start), 17) is None and len(head_extents) > 1:
        start = head_extents[1]
    found: list[Extent] = []
    current: Extent = start
    next_but_one: Extent | None = None
    while True:
        if len(found) > _MAX_EXTENTS:
            raise FormatError("CocoonFs aux metadata: the list does not close")
        found.append(current)
        links = _links(raw_of(current), 17 if current[0] in head_starts else 16)
        if links is None:
            if next_but_one is None:
                raise FormatError("CocoonFs aux metadata: the list cannot be followed")
            current, next_but_one = next_but_one, None
        else:
            current, next_but_one = links
        if current[0] == start[0]:
            break
        if any(current[0] == f[0] for f in found):
            raise FormatError("CocoonFs aux metadata: the list loops outside its heads")
    # Rotate so group 0's head comes first, then cut at each head.
    at = (
        [f[0] for f in found].index(head_starts[0])
        if head_starts[0] in [f[0] for f in found]
        else -1
    )
    if at < 0:
        raise FormatError("CocoonFs aux metadata: group 0's head is not on the list")
    found = found[at:] + found[:at]
    groups: list[AuxGroup] = []
    for extent in found:
        is_head = extent[0] in head_starts
        if is_head:
            groups.append(AuxGroup([], None, []))
        group = groups[-1]
        group.extents.append(extent)
        read = _read_extent(data, layout, extent, is_head)
        if read is None:
            group.parts.append(None)
            continue
        _, _, state, payload = read
        if is_head:
            group.state = state
        group.parts.append(payload)
    if len(groups) != len(head_starts):
        raise FormatError("CocoonFs aux metadata: a group head is not on the list")
    return groups


def _read_extent(
    image: bytes, layout: ImageLayout, extent: tuple[int, int], is_head: bool
) -> tuple[tuple[int, int], tuple[int, int], int | None, bytes] | None:
    """One list extent: (next, next but one, head state, payload part), None if torn."""
    shift = layout.allocation_block_size_log2
    begin, end = extent[0] << shift, (extent[0] + extent[1]) << shift
    if end > len(image) or end - begin < layout.io_block_size:
        raise FormatError("CocoonFs aux metadata extent out of range or too short")
    offset = 17 if is_head else 16
    restored = remove_extent_integrity(image[begin:end], 0, offset, layout.io_block_128b_log2)
    if restored is None:
        return None
    links = [decode_extent_ptr(restored[i : i + 8]) for i in (0, 8)]
    if links[0] is None or links[1] is None or links[0][2] or links[1][2]:
        raise FormatError("CocoonFs aux metadata: bad links")
    state = restored[16] if is_head else None
    payload = restored[offset + layout.integrity_section_len :]
    return links[0][:2], links[1][:2], state, payload


def read_formatted_aux_metadata(image: bytes) -> AuxFsMetadata | None:
    """The effective metadata of a formatted image; None if it has none.

    Needs no key. Read it after a pending journal was replayed (`CocoonFsVolume.open`); a
    pending journal's own pointer pair is not consulted.

    Raises:
        NotAnImageError, UnsupportedVersionError, FormatError: as for the headers, or no
            active update group, or a malformed list or payload.
    """
    static = StaticHeader.decode(image)
    layout = static.layout
    at = static.encoded_len
    mutable = MutableHeader.decode(image[at : at + MutableHeader.encoded_len(layout)], layout)
    groups = walk_aux_groups(image, layout, mutable.aux_fs_metadata_heads)
    if not groups:
        return None
    for number, group in enumerate(groups):
        if group.active:
            return AuxFsMetadata.decode(b"".join(p for p in group.parts if p is not None))
        if group.state in _ACTIVE_STATES:
            raise FormatError(f"CocoonFs aux metadata: active group {number} is torn")
        if group.state not in (None, _STATE_INACTIVE):
            raise FormatError(f"CocoonFs aux metadata: group {number} in unknown state")
    raise FormatError("CocoonFs aux metadata: no active update group")
