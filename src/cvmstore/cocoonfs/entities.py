"""CocoonFs encryption entities, the writing direction (section "Encryption entity formats").

Every write draws a fresh random IV; nothing is ever encrypted twice under one IV. The reading
direction lives in `image.py`, which authenticates before it decrypts.
"""

from __future__ import annotations

import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, modes

from cvmstore.cocoonfs.keys import cipher_algorithm, hmac_digest
from cvmstore.cocoonfs.layout import (
    CIPHER_BLOCK_LEN,
    NIL_PTR,
    ImageLayout,
    align_up,
    encode_extent_ptr,
)
from cvmstore.cocoonfs.tree import AuthSubject, Extent

__all__ = [
    "chained_capacity",
    "chained_tag",
    "encrypt_block",
    "encrypt_chained",
    "encrypt_extents",
]

_U64 = struct.Struct("<Q")
_IV_LEN = CIPHER_BLOCK_LEN


def _cbc_encrypt(layout: ImageLayout, key: bytes, iv: bytes, plain: bytes) -> bytes:
    encryptor = Cipher(cipher_algorithm(layout.block_cipher_alg, key), modes.CBC(iv)).encryptor()
    return encryptor.update(plain) + encryptor.finalize()


def _pkcs7(payload: bytes) -> bytes:
    pad = CIPHER_BLOCK_LEN - len(payload) % CIPHER_BLOCK_LEN
    return payload + bytes([pad]) * pad


def encrypt_block(layout: ImageLayout, key: bytes, payload: bytes, size: int) -> bytes:
    """An encrypted block of `size` bytes (section "Encrypted block").

    The payload's length is implicit to the reader; it is zero-padded to whole cipher blocks
    and the block's remainder is random.
    """
    iv = os.urandom(_IV_LEN)
    body = _cbc_encrypt(layout, key, iv, payload + bytes(-len(payload) % CIPHER_BLOCK_LEN))
    out = iv + body
    if len(out) > size:
        raise ValueError("payload does not fit the encrypted block")
    return out + os.urandom(size - len(out))


def encrypt_extents(layout: ImageLayout, key: bytes, payload: bytes, total: int) -> bytes:
    """`payload` as encrypted extents filling `total` bytes (section "Encrypted extents").

    The IV, then the CBC ciphertext of payload, PKCS#7 padding and zero blocks.
    """
    plain = _pkcs7(payload)
    room = (total - _IV_LEN) // CIPHER_BLOCK_LEN * CIPHER_BLOCK_LEN
    if len(plain) > room:
        raise ValueError("payload does not fit the extents")
    iv = os.urandom(_IV_LEN)
    out = iv + _cbc_encrypt(layout, key, iv, plain + bytes(room - len(plain)))
    return out + bytes(total - len(out))


def _chained_offsets(layout: ImageLayout, tag_len: int, header_len: int, first: bool) -> int:
    """Where an extent's ciphertext starts."""
    pos = header_len + tag_len + (_IV_LEN if first else 0)
    return align_up(pos, CIPHER_BLOCK_LEN)


def chained_capacity(
    layout: ImageLayout, length_bytes: int, *, first: bool, tag_len: int, header_len: int = 0
) -> int:
    """Payload bytes one chained extent carries (after its 8-byte next pointer)."""
    return length_bytes - _chained_offsets(layout, tag_len, header_len, first) - 8


def chained_tag(
    layout: ImageLayout, key: bytes, body: bytes, iv: bytes, aad: bytes, *, first: bool
) -> bytes:
    """An inline HMAC of "Encrypted chained extents".

    `body` is the extent as stored with its tag replaced (zeros for the first extent, the
    previous tag for a continuation); `iv` is the extent's CBC IV (only continuations bind
    it, the first extent's is in `body`).
    """
    return hmac_digest(
        layout.preauth_cca_protection_hmac_hash_alg,
        key,
        body,
        b"" if first else iv,
        aad,
        _U64.pack(len(aad)),
        struct.pack(">HH", layout.block_cipher_alg, layout.block_cipher_key_bits),
        bytes([0 if first else 1, 0, AuthSubject.ENCRYPTION_ENTITY_CHAINED_EXTENTS]),
    )


def encrypt_chained(
    layout: ImageLayout,
    enc_key: bytes,
    payload: bytes,
    extents: list[Extent],
    *,
    auth: tuple[bytes, bytes] | None = None,
    header: bytes = b"",
) -> list[bytes]:
    """Encrypted chained extents over `extents` (section "Encrypted chained extents").

    `auth` is (HMAC key, associated data) for the inline authenticated variant; `header` is
    the first extent's plaintext header (kept in place, covered by the first tag). Returns
    each extent's stored bytes.

    Raises:
        ValueError: the payload does not fit (the caller allocates enough).
    """
    shift = layout.allocation_block_size_log2
    tag_len = layout.preauth_cca_protection_hmac_hash_alg.digest_len if auth else 0
    iv = os.urandom(_IV_LEN)
    remaining = payload
    out: list[bytes] = []
    prev_tag = bytes(tag_len)
    for i, (start, length) in enumerate(extents):
        del start
        first = i == 0
        size = length << shift
        ct_at = _chained_offsets(layout, tag_len, len(header) if first else 0, first)
        room = size - ct_at
        last = i == len(extents) - 1
        nxt = NIL_PTR if last else encode_extent_ptr(*extents[i + 1])
        if last:
            plain = _pkcs7(nxt + remaining)
            if len(plain) > room:
                raise ValueError("chained extents too short for the payload")
            plain += bytes(room - len(plain))
        else:
            plain = nxt + remaining[: room - 8]
            remaining = remaining[room - 8 :]
        ciphertext = _cbc_encrypt(layout, enc_key, iv, plain)
        body = bytearray(size)
        if first:
            body[: len(header)] = header
            body[len(header) + tag_len : len(header) + tag_len + _IV_LEN] = iv
        body[ct_at:] = ciphertext
        if auth:
            hmac_key, aad = auth
            at = len(header) if first else 0
            body[at : at + tag_len] = prev_tag
            tag = chained_tag(layout, hmac_key, bytes(body), iv, aad, first=first)
            body[at : at + tag_len] = tag
            prev_tag = tag
        iv = ciphertext[-CIPHER_BLOCK_LEN:]
        out.append(bytes(body))
    if len(out) != len(extents) or not extents:
        raise ValueError("no extents for the chained payload")
    return out
