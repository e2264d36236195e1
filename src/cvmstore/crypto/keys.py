"""Key hierarchy and nonce scheme of the secure store (docs/format.md, "Keys and nonces").

Low-level: use `cvmstore.integrity.open_store` unless you implement a compatible reader.

```
root secret (32 B, from the KBS or a key file)
 └─ HKDF-SHA256(salt = header salt, info = "cvmstore/v1/unlock" ‖ volume id) → 64 B
     ├─ KEK (32 B): AES key wrap (RFC 3394) of the volume key
     └─ KCV key (32 B): key check value = HMAC-SHA256(KCV key, "cvmstore/v1/kcv")
volume key (32 B, random at format; changed only by a full re-encryption)
 └─ HKDF-SHA256(salt = header salt, info = "cvmstore/v1/<purpose>" ‖ volume id ‖ extra)
     ├─ "header": HMAC-SHA256 key of the superblock slots
     └─ "gen" ‖ u64 generation: the AES-256-GCM key of everything written in that commit
```

Nonces: each store session draws a random 64-bit session prefix when it opens and again
whenever its 32-bit counter would wrap; the nonce is prefix ‖ counter. Within one session a
nonce never repeats. A crash, a retry, or a rollback forced by the host can make two sessions
encrypt under one generation key; they share a nonce only if their random prefixes collide,
with probability at most s²/2⁶⁵ for s sessions of that generation. Each generation key
encrypts only the blocks of one commit (plus retries), far below GCM's 2³² limit.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "GenerationCipher",
    "UnlockKeys",
    "VolumeKeys",
    "derive_unlock_keys",
    "key_from_text",
    "new_volume_key",
]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
WRAPPED_KEY_SIZE = 40
_LABEL = b"cvmstore/v1/"

Rng = Callable[[int], bytes]


def _hkdf(secret: bytes, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


@dataclass(frozen=True, slots=True)
class UnlockKeys:
    """Keys derived from the root secret: they wrap and check the volume key, nothing else."""

    kek: bytes
    kcv: bytes  # key check value stored in the header

    def wrap(self, volume_key: bytes) -> bytes:
        """Wrap the volume key for the header (RFC 3394)."""
        return aes_key_wrap(self.kek, volume_key)

    def unwrap(self, wrapped: bytes) -> bytes | None:
        """Unwrap the volume key, or None if it does not unwrap under this root secret."""
        try:
            return aes_key_unwrap(self.kek, wrapped)
        except InvalidUnwrap:
            return None


def key_from_text(raw: bytes) -> bytes | None:
    """A 32-byte key written as 32 raw bytes or as 64 hex digits, else None.

    Whitespace around the hex digits is ignored. Key files and key variables use this form.
    """
    if len(raw) == KEY_SIZE:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    return None


def derive_unlock_keys(root_secret: bytes, salt: bytes, volume_id: bytes) -> UnlockKeys:
    """Derive the key-encryption and key-check keys from the caller's root secret."""
    if len(root_secret) != KEY_SIZE:
        raise ValueError(f"the root secret must be {KEY_SIZE} bytes, got {len(root_secret)}")
    okm = _hkdf(root_secret, salt, _LABEL + b"unlock" + volume_id, 2 * KEY_SIZE)
    kcv = hmac.new(okm[KEY_SIZE:], _LABEL + b"kcv", hashlib.sha256).digest()
    return UnlockKeys(kek=okm[:KEY_SIZE], kcv=kcv)


def new_volume_key(rng: Rng = os.urandom) -> bytes:
    """A fresh random volume key."""
    return rng(KEY_SIZE)


class GenerationCipher:
    """AES-256-GCM under one generation's key, with the session nonce scheme."""

    __slots__ = ("_aead", "generation")

    def __init__(self, key: bytes, generation: int) -> None:
        self._aead = AESGCM(key)
        self.generation = generation

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """Return (ciphertext, tag) for a block; the tag is stored by the parent."""
        sealed = self._aead.encrypt(nonce, plaintext, aad)
        return sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]

    def decrypt(self, nonce: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes | None:
        """Return the plaintext, or None when authentication fails."""
        try:
            return self._aead.decrypt(nonce, ciphertext + tag, aad)
        except InvalidTag:
            return None


class VolumeKeys:
    """Everything derived from the volume key: header MAC key, per-generation ciphers, nonces.

    Args:
        volume_key: the unwrapped 32-byte volume key.
        salt: the header salt.
        volume_id: the 16-byte volume id.
        rng: randomness for session prefixes (tests inject a fixed one).
        cache: how many generation ciphers to keep (reads of old blocks need old keys).
    """

    def __init__(
        self,
        volume_key: bytes,
        salt: bytes,
        volume_id: bytes,
        rng: Rng = os.urandom,
        cache: int = 64,
    ) -> None:
        self._key = volume_key
        self._salt = salt
        self._id = volume_id
        self._rng = rng
        self._ciphers: OrderedDict[int, GenerationCipher] = OrderedDict()
        self._cache = cache
        self.header_key = _hkdf(volume_key, salt, _LABEL + b"header" + volume_id)
        self._prefix = b""
        self._counter = 0
        self.new_session()

    @property
    def volume_key(self) -> bytes:
        """The volume key itself (for rewrapping at rekey; never log it)."""
        return self._key

    def new_session(self) -> None:
        """Draw a fresh random session prefix (done at open and when the counter wraps)."""
        self._prefix = self._rng(8)
        self._counter = 0

    def next_nonce(self) -> bytes:
        """The next nonce of this session: prefix ‖ big-endian counter."""
        if self._counter == 0xFFFFFFFF:
            self.new_session()
        self._counter += 1
        return self._prefix + struct.pack(">I", self._counter)

    def cipher(self, generation: int) -> GenerationCipher:
        """The AEAD of one generation (cached)."""
        found = self._ciphers.get(generation)
        if found is not None:
            self._ciphers.move_to_end(generation)
            return found
        info = _LABEL + b"gen" + self._id + struct.pack(">Q", generation)
        made = GenerationCipher(_hkdf(self._key, self._salt, info), generation)
        self._ciphers[generation] = made
        if len(self._ciphers) > self._cache:
            self._ciphers.popitem(last=False)
        return made

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of a superblock slot under the header key."""
        return hmac.new(self.header_key, data, hashlib.sha256).digest()
