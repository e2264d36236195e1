"""Where the command line gets the root secret: a key file, or the environment.

Never from an argument: command lines end up in shell history and `ps` output. A key file
holds 32 raw bytes, or 64 hexadecimal characters (whitespace around them is ignored).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cvmstore.cli.usage import UsageError
from cvmstore.crypto.keys import key_from_text

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "load_key", "write_new_key", "write_private_file"]

KEY_FILE_ENV = "CVMSTORE_KEY_FILE"
KEY_ENV = "CVMSTORE_KEY"
KEY_BYTES = 32


def parse_key(raw: bytes, where: str) -> bytes:
    """32 raw bytes, or 64 hex characters; anything else is refused (without echoing it)."""
    key = key_from_text(raw)
    if key is not None:
        return key
    raise UsageError(
        f"{where} holds {len(raw)} bytes, not a key: a key is 32 raw bytes or 64 hex "
        f"characters (make one with `cvmstore keygen FILE`)"
    )


def load_key(key_file: str | None) -> bytes:
    """The root secret from `--key-file`, else $CVMSTORE_KEY_FILE, else $CVMSTORE_KEY (hex)."""
    path = key_file or os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
        return parse_key(raw, f"key file {path}")
    text = os.environ.get(KEY_ENV)
    if text:
        return parse_key(text.encode("utf-8", "replace"), f"${KEY_ENV}")
    raise UsageError(
        f"no key given: use --key-file FILE, or set ${KEY_FILE_ENV} or ${KEY_ENV} "
        f"(make a key with `cvmstore keygen FILE`)"
    )


def write_new_key(path: Path, *, hex_text: bool, force: bool) -> None:
    """Write 32 fresh random bytes to `path`, readable by the owner only."""
    key = secrets.token_bytes(KEY_BYTES)
    write_private_file(path, (key.hex() + "\n").encode("ascii") if hex_text else key, force=force)


def write_private_file(path: Path, data: bytes, *, force: bool) -> None:
    """Write `data` to a new file readable by the owner only (replace one only with `force`)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} already exists (use --force to replace it)") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
