"""CocoonFs journal log: encode a transaction's log, and decode one for replay.

Spec: `cocoonfs-format.md`, section "Journal" (0.1.5 text), as the `cocoonfs` tool implements
it (see docs/cocoonfs.md, "Journal"):

* The log is encrypted chained extents with inline HMACs (inode 5's keys; associated data:
  the encoded layout, 0, 1). The head extent sits at a fixed place after the mutable header:
  `CCFSJRNL`, the extent integrity section, the two aux metadata head pointers, then the tag,
  the IV and the ciphertext. The tag covers the header with the integrity section zeroed; the
  integrity protection is applied last. Tail extents are IO Block aligned, at most 64
  Allocation Blocks.
* The payload is TLV (ULEB128 tag and length) fields 1-5, in this order: the auth tree's and
  the allocation bitmap's extents lists, the digests of the bitmap blocks that replay needs
  (with an HMAC), the apply-writes script (IO Block units) and the auth tree update script
  (physical Authentication Tree Data Block units). Optional fields 6 (trim) and 7 (staging
  copy disguise) are understood when reading a log the tool wrote; this writer emits neither.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from cvmstore.cocoonfs.entities import chained_capacity, encrypt_chained
from cvmstore.cocoonfs.image import (
    JOURNAL_MAGIC,
    SpecialInode,
    _cbc_decrypt,
    _encode_sleb128,
    _encode_uleb128,
    _extent_bytes,
    _read_chained_extents,
    _sleb128,
    _uleb128,
    decode_extents_list,
    encode_extents_list,
)
from cvmstore.cocoonfs.keys import (
    InodeKeySubdomain,
    KeyPurpose,
    cipher_algorithm,
    derive_subkey,
    hmac_digest,
)
from cvmstore.cocoonfs.layout import (
    CIPHER_BLOCK_LEN,
    ImageLayout,
    apply_extent_integrity,
    remove_extent_integrity,
)
from cvmstore.cocoonfs.tree import AuthSubject, Extent
from cvmstore.errors import FormatError, IntegrityError, WrongKeyError

__all__ = [
    "JournalLog",
    "decode_journal",
    "encode_journal",
    "encode_payload",
    "tail_count",
    "undisguise",
]

_U64 = struct.Struct("<Q")
_IV_LEN = CIPHER_BLOCK_LEN
_MAX_EXTENT = 64


@dataclass
class JournalLog:
    """A journal log's content (section "Journal log payload contents")."""

    tree_extents: list[Extent]
    bitmap_extents: list[Extent]
    #: (physical ATDB index, digest) of the bitmap blocks replay reads.
    bitmap_digests: list[tuple[int, bytes]]
    #: (target IO Block, staging IO Block, IO Blocks).
    writes: list[tuple[int, int, int]]
    #: (first physical ATDB, count) whose digests change.
    tree_updates: list[tuple[int, int]]
    #: The aux metadata heads kept in the log head (the mutable header may be half-written).
    aux_heads: tuple[bytes, bytes] = (b"", b"")
    #: Staging copy disguise (field 7): (cipher id, key bits, key, IV key); None when absent.
    disguise: tuple[int, int, bytes, bytes] | None = field(default=None)


def _keys(root_key: bytes, layout: ImageLayout) -> tuple[bytes, bytes]:
    enc = derive_subkey(
        root_key, layout, KeyPurpose.ENCRYPTION, SpecialInode.JOURNAL_LOG, InodeKeySubdomain.DATA
    )
    mac = derive_subkey(
        root_key,
        layout,
        KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH,
        SpecialInode.JOURNAL_LOG,
        InodeKeySubdomain.DATA,
    )
    return enc, mac


def _bitmap_digests_mac(
    root_key: bytes, layout: ImageLayout, bitmap_list: bytes, records: bytes
) -> bytes:
    key = derive_subkey(
        root_key,
        layout,
        KeyPurpose.PREAUTH_CCA_PROTECTION_AUTH,
        SpecialInode.ALLOC_BITMAP,
        InodeKeySubdomain.DATA,
    )
    return hmac_digest(
        layout.preauth_cca_protection_hmac_hash_alg,
        key,
        layout.encode(),
        bitmap_list,
        records,
        bytes([0, 3, 0, AuthSubject.JOURNAL_LOG_FIELD]),
    )


def _tlv(tag: int, value: bytes) -> bytes:
    return _encode_uleb128(tag) + _encode_uleb128(len(value)) + value


def encode_payload(log: JournalLog, root_key: bytes, layout: ImageLayout) -> bytes:
    """The TLV payload of `log`."""
    bitmap_list = encode_extents_list(log.bitmap_extents)
    records = bytearray()
    prev_end = 0
    for atdb, digest in log.bitmap_digests:
        records += _encode_uleb128(atdb - prev_end) + digest
        prev_end = atdb + 1
    mac = _bitmap_digests_mac(root_key, layout, bitmap_list, bytes(records))
    writes = bytearray()
    prev_target = prev_staging = 0
    for target, staging, count in log.writes:
        delta = staging - prev_staging
        writes += _encode_uleb128(target - prev_target) + _encode_sleb128(delta)
        writes += _encode_uleb128(count)
        prev_target, prev_staging = target + count, staging + count
    writes += b"\x00\x00\x00"
    updates = bytearray()
    prev_end = 0
    for first, count in log.tree_updates:
        updates += _encode_uleb128(first - prev_end) + _encode_uleb128(count)
        prev_end = first + count
    updates += b"\x00\x00"
    return (
        _tlv(1, encode_extents_list(log.tree_extents))
        + _tlv(2, bitmap_list)
        + _tlv(3, bytes(records) + mac)
        + _tlv(4, bytes(writes))
        + _tlv(5, bytes(updates))
    )


def _head_header_len(layout: ImageLayout) -> int:
    return len(JOURNAL_MAGIC) + layout.integrity_section_len + 16


def tail_count(layout: ImageLayout, head: Extent, payload_len: int) -> int:
    """How many one-IO-Block tail extents a payload needs after the head extent."""
    tag = layout.preauth_cca_protection_hmac_hash_alg.digest_len
    head_bytes = head[1] << layout.allocation_block_size_log2
    left = (
        payload_len
        + 1
        - chained_capacity(
            layout, head_bytes, first=True, tag_len=tag, header_len=_head_header_len(layout)
        )
    )
    per = chained_capacity(layout, layout.io_block_size, first=False, tag_len=tag)
    return max(0, -(-left // per))


def encode_journal(
    payload: bytes,
    aux_heads: tuple[bytes, bytes],
    root_key: bytes,
    layout: ImageLayout,
    head: Extent,
    tails: list[Extent],
) -> tuple[bytes, list[bytes]]:
    """The protected head extent's bytes and each tail extent's bytes for `payload`."""
    enc_key, mac_key = _keys(root_key, layout)
    header = JOURNAL_MAGIC + bytes(layout.integrity_section_len) + aux_heads[0] + aux_heads[1]
    aad = layout.encode() + bytes([0, 1])
    raws = encrypt_chained(
        layout, enc_key, payload, [head, *tails], auth=(mac_key, aad), header=header
    )
    protected = apply_extent_integrity(raws[0], len(JOURNAL_MAGIC), 0, layout.io_block_128b_log2)
    return protected, raws[1:]


def decode_journal(
    data: bytes, layout: ImageLayout, root_key: bytes, head: Extent
) -> JournalLog | None:
    """The pending journal log at `head`, or None when the head is idle or torn.

    Raises:
        WrongKeyError: the head's inline HMAC fails (a wrong key, or a forged head).
        IntegrityError: a tail extent's HMAC or the bitmap digests' HMAC fails.
        FormatError: a malformed log.
    """
    raw = _extent_bytes(data, layout, head)
    if raw[: len(JOURNAL_MAGIC)] != JOURNAL_MAGIC:
        return None
    restored = remove_extent_integrity(raw, len(JOURNAL_MAGIC), 0, layout.io_block_128b_log2)
    if restored is None:
        return None  # a torn head write: the transaction never committed
    header_len = _head_header_len(layout)
    aux = (restored[header_len - 16 : header_len - 8], restored[header_len - 8 : header_len])
    enc_key, mac_key = _keys(root_key, layout)
    io_ab = 1 << layout.io_block_allocation_blocks_log2

    def aligned_tail(extent: Extent) -> None:
        if extent != head and (extent[0] % io_ab or (extent[0] + extent[1]) % io_ab):
            raise FormatError("CocoonFs journal log: tail extent not IO Block aligned")

    payload = _read_chained_extents(
        data,
        layout,
        head,
        enc_key,
        (mac_key, layout.encode() + bytes([0, 1])),
        None,
        aligned_tail,
        head=(restored, header_len),
        head_error=WrongKeyError,
    )
    return _decode_payload(payload, layout, root_key, aux)


def _decode_payload(
    payload: bytes, layout: ImageLayout, root_key: bytes, aux: tuple[bytes, bytes]
) -> JournalLog:
    fields: dict[int, bytes] = {}
    pos = 0
    order = [1, 2, 3, 4, 5]
    while pos < len(payload):
        tag, pos = _uleb128(payload, pos)
        length, pos = _uleb128(payload, pos)
        if pos + length > len(payload):
            raise FormatError("CocoonFs journal log: a field runs past the log")
        if order:
            if tag != order.pop(0):
                raise FormatError(f"CocoonFs journal log: unexpected field {tag}")
        elif tag not in (6, 7) or tag in fields:
            raise FormatError(f"CocoonFs journal log: unexpected field {tag}")
        fields[tag] = payload[pos : pos + length]
        pos += length
    if order:
        raise FormatError("CocoonFs journal log: mandatory fields missing")
    tree_extents = decode_extents_list(fields[1])
    bitmap_extents = decode_extents_list(fields[2])
    bitmap_digests = _decode_bitmap_digests(fields[3], fields[2], layout, root_key)
    writes = _decode_writes(fields[4])
    updates = _decode_updates(fields[5])
    disguise = None
    if 7 in fields:
        value = fields[7]
        if len(value) < 4:
            raise FormatError("CocoonFs journal log: short staging copy disguise")
        alg, bits = struct.unpack(">HH", value[:4])
        n = bits // 8
        if len(value) != 4 + 2 * n:
            raise FormatError("CocoonFs journal log: malformed staging copy disguise")
        disguise = (alg, bits, value[4 : 4 + n], value[4 + n :])
    return JournalLog(tree_extents, bitmap_extents, bitmap_digests, writes, updates, aux, disguise)


def _decode_bitmap_digests(
    value: bytes, bitmap_list: bytes, layout: ImageLayout, root_key: bytes
) -> list[tuple[int, bytes]]:
    mac_len = layout.preauth_cca_protection_hmac_hash_alg.digest_len
    if len(value) < mac_len:
        raise FormatError("CocoonFs journal log: bitmap digests field too short")
    records, mac = value[:-mac_len], value[-mac_len:]
    expect = _bitmap_digests_mac(root_key, layout, bitmap_list, records)
    if not constant_time.bytes_eq(mac, expect):
        raise IntegrityError("CocoonFs journal log: the bitmap digests do not authenticate")
    size = layout.auth_tree_data_hmac_hash_alg.digest_len
    out: list[tuple[int, bytes]] = []
    pos = 0
    prev_end = 0
    while pos < len(records):
        delta, pos = _uleb128(records, pos)
        if pos + size > len(records):
            raise FormatError("CocoonFs journal log: truncated bitmap digest")
        atdb = prev_end + delta
        out.append((atdb, records[pos : pos + size]))
        pos += size
        prev_end = atdb + 1
    return out


def _decode_writes(value: bytes) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    pos = 0
    prev_target = prev_staging = 0
    while True:
        target_delta, pos = _uleb128(value, pos)
        staging_delta, pos = _sleb128(value, pos)
        count, pos = _uleb128(value, pos)
        if count == 0:
            if target_delta or staging_delta:
                raise FormatError("CocoonFs journal log: empty write record")
            break
        target = prev_target + target_delta
        staging = prev_staging + staging_delta
        if staging < 0:
            raise FormatError("CocoonFs journal log: staging copy before the image")
        out.append((target, staging, count))
        prev_target, prev_staging = target + count, staging + count
    if pos != len(value):
        raise FormatError("CocoonFs journal log: bytes after the write script")
    return out


def _decode_updates(value: bytes) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    pos = 0
    prev_end = 0
    while True:
        delta, pos = _uleb128(value, pos)
        count, pos = _uleb128(value, pos)
        if count == 0:
            if delta:
                raise FormatError("CocoonFs journal log: empty tree update record")
            break
        out.append((prev_end + delta, count))
        prev_end += delta + count
    if pos != len(value):
        raise FormatError("CocoonFs journal log: bytes after the tree update script")
    return out


def undisguise(
    layout: ImageLayout,
    disguise: tuple[int, int, bytes, bytes],
    block: bytes,
    target_ab: int,
    staging_ab: int,
) -> bytes:
    """Undo the staging copy disguise of one Allocation Block.

    Section "Journal staging copy disguising": CBC under the one-time key, with the IV
    E(IV key, LE64 target ‖ LE64 staging).
    """
    from cvmstore.cocoonfs.layout import CipherAlg

    alg_id, _, key, iv_key = disguise
    alg = CipherAlg(alg_id)
    seed = _U64.pack(target_ab) + _U64.pack(staging_ab)
    iv_enc = Cipher(cipher_algorithm(alg, iv_key), modes.ECB()).encryptor()
    iv = iv_enc.update(seed[-CIPHER_BLOCK_LEN:]) + iv_enc.finalize()
    return _cbc_decrypt(alg, key, iv, block)
