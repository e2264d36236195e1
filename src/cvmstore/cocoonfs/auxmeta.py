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

__all__ = ["AuxFsMetadata", "read_formatted_aux_metadata", "read_mkfsinfo_aux_metadata"]

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

    Needs no key. A pending journal's own pointer pair is not consulted (journal replay is
    not implemented), so this reads the metadata of the last applied transaction.

    Raises:
        NotAnImageError, UnsupportedVersionError, FormatError: as for the headers, or no
            active update group, or a malformed list or payload.
    """
    static = StaticHeader.decode(image)
    layout = static.layout
    at = static.encoded_len
    mutable = MutableHeader.decode(image[at : at + MutableHeader.encoded_len(layout)], layout)
    heads = [decode_extent_ptr(p) for p in mutable.aux_fs_metadata_heads]
    if heads[0] is None:
        if heads[1] is not None:
            raise FormatError("CocoonFs aux metadata: group 1 without group 0")
        return None
    head_starts = [h[0] for h in heads if h is not None]
    # Walk the circle once from head 0, splitting it into the update groups.
    groups: list[list[bytes | None]] = [[] for _ in head_starts]
    states: list[int | None] = [None] * len(head_starts)
    current = heads[0][:2]
    next_but_one: tuple[int, int] | None = None
    group = 0
    for _ in range(_MAX_EXTENTS):
        is_head = current[0] in head_starts
        if is_head:
            group = head_starts.index(current[0])
        read = _read_extent(image, layout, current, is_head)
        if read is None:
            groups[group].append(None)
            if next_but_one is None:
                raise FormatError("CocoonFs aux metadata: the list cannot be followed")
            current, next_but_one = next_but_one, None
        else:
            nxt, next_but_one, state, payload = read
            if is_head:
                states[group] = state
            groups[group].append(payload)
            current = nxt
        if current[0] == head_starts[0]:
            break
    else:
        raise FormatError("CocoonFs aux metadata: the list does not close")
    for number, parts in enumerate(groups):
        if states[number] in _ACTIVE_STATES:
            if any(part is None for part in parts):
                raise FormatError(f"CocoonFs aux metadata: active group {number} is torn")
            return AuxFsMetadata.decode(b"".join(p for p in parts if p is not None))
        if states[number] not in (None, _STATE_INACTIVE):
            raise FormatError(f"CocoonFs aux metadata: group {number} in unknown state")
    raise FormatError("CocoonFs aux metadata: no active update group")
