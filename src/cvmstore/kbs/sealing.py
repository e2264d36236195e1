"""Secrets at rest: every secret the KBS stores is sealed under its master key.

The master key (32 bytes) comes from a file, or the environment, never from the database:
a copy of the database alone reveals no resource and no signing key. Sealing is AES-256-GCM
with a random nonce, and the secret's name as associated data, so a sealed value moved to
another name (or another resource path) does not unseal.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cvmstore.crypto.keys import key_from_text
from cvmstore.errors import FormatError, WrongKeyError

__all__ = ["MASTER_KEY_ENV", "MASTER_KEY_FILE_ENV", "Sealer", "load_master_key"]

MASTER_KEY_FILE_ENV = "CVMSTORE_KBS_MASTER_KEY_FILE"
MASTER_KEY_ENV = "CVMSTORE_KBS_MASTER_KEY"
_VERSION = b"\x01"
_NONCE = 12


class Sealer:
    """Seal and unseal named secrets under one master key."""

    __slots__ = ("_aead",)

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key is 32 bytes")
        self._aead = AESGCM(master_key)

    def __repr__(self) -> str:
        return "Sealer(<master key hidden>)"

    def seal(self, name: str, plaintext: bytes) -> bytes:
        """Version byte, nonce, then ciphertext and tag; `name` is bound as associated data."""
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, _aad(name))

    def unseal(self, name: str, sealed: bytes) -> bytes:
        """The plaintext of a value sealed under `name`.

        Raises:
            WrongKeyError: another master key sealed it, it was altered, or it belongs to
                another name.
        """
        if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
            raise WrongKeyError(f"the sealed value of {name!r} is malformed")
        try:
            return self._aead.decrypt(sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], _aad(name))
        except InvalidTag:
            raise WrongKeyError(
                f"cannot unseal {name!r}: wrong KBS master key, or the database was altered"
            ) from None


def _aad(name: str) -> bytes:
    return b"cvmstore-kbs/" + name.encode("utf-8")


def _parse(raw: bytes, where: str) -> bytes:
    key = key_from_text(raw)
    if key is None:
        raise FormatError(f"{where} is not a master key (32 raw bytes or 64 hex digits)")
    return key


def load_master_key(path: Path | None, data_dir: Path, *, create: bool) -> tuple[bytes, str]:
    """The master key and where it came from (never the key itself in that description).

    Order: `path`, then $CVMSTORE_KBS_MASTER_KEY_FILE, then $CVMSTORE_KBS_MASTER_KEY (hex),
    then `data_dir/master.key`, which is made (mode 0600) when `create` is set.

    Raises:
        FormatError: a key source exists but does not hold a key, or there is none.
    """
    chosen = path or (
        Path(os.environ[MASTER_KEY_FILE_ENV]) if os.environ.get(MASTER_KEY_FILE_ENV) else None
    )
    if chosen is not None:
        try:
            return _parse(chosen.read_bytes(), f"master key file {chosen}"), f"file {chosen}"
        except OSError as exc:
            raise FormatError(f"cannot read master key file {chosen}: {exc.strerror}") from None
    text = os.environ.get(MASTER_KEY_ENV)
    if text:
        return _parse(text.encode("utf-8", "replace"), f"${MASTER_KEY_ENV}"), f"${MASTER_KEY_ENV}"
    default = data_dir / "master.key"
    if default.exists():
        return _parse(default.read_bytes(), f"master key file {default}"), f"file {default}"
    if not create:
        raise FormatError(
            f"no KBS master key: set master_key_file, ${MASTER_KEY_FILE_ENV} or ${MASTER_KEY_ENV}"
        )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(default, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return _parse(default.read_bytes(), f"master key file {default}"), f"file {default}"
    with os.fdopen(fd, "wb") as f:
        f.write(key.hex().encode("ascii") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return key, f"file {default} (new)"
