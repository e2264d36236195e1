"""Storage backends of the KBS, and `open_repository`, which picks one from a database URL.

- `sqlite:///absolute/path.db`, or a plain file path: `SqliteRepository` (the embedded
  default; `cvmstore.kbs.storage.sqlite`).
- `postgresql://...` or `postgres://...` (libpq URLs): `PostgresRepository`, for several KBS
  replicas sharing one database (`cvmstore.kbs.storage.postgres`).

Both implement `cvmstore.kbs.repository.Repository` on the schema of
`cvmstore.kbs.storage.schema`. `open_repository` does not create the schema: call `migrate()`
on what it returns. A database URL may carry a password; `redact_url` is how every message of
this package shows one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from cvmstore.errors import FormatError

if TYPE_CHECKING:
    from cvmstore.kbs.repository import Repository

__all__ = ["open_repository", "redact_url"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)
_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
_KNOWN_SCHEMES = _POSTGRES_SCHEMES | {"sqlite"}
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
_EXPECTED = "expected sqlite:///absolute/path.db, a file path, or postgresql://..."


def open_repository(url: str) -> Repository:
    """Open the KBS repository a database URL names (without creating its schema).

    Args:
        url: `sqlite:///absolute/path.db`, a plain file path (relative to the working
            directory when not absolute), or a `postgresql://` / `postgres://` URL.

    Raises:
        FormatError: the URL is empty, of another scheme, or malformed (the message shows
            it with any password redacted).
        DeviceError: the database cannot be reached or opened.
    """
    if not url.strip():
        raise FormatError(f"empty database URL: {_EXPECTED}")
    match = _SCHEME.fullmatch(url)
    if match is None or (match[1].lower() not in _KNOWN_SCHEMES and not match[2].startswith("//")):
        from cvmstore.kbs.storage.sqlite import SqliteRepository

        return SqliteRepository(url)
    scheme = match[1].lower()
    if scheme not in _KNOWN_SCHEMES:
        raise FormatError(f"unsupported database URL {redact_url(url)!r}: {_EXPECTED}")
    if not match[2].startswith("//"):  # not shown: there is no telling where a password is
        raise FormatError(f"malformed database URL ({scheme}: without //): {_EXPECTED}")
    if scheme == "sqlite":
        from cvmstore.kbs.storage.sqlite import SqliteRepository

        return SqliteRepository(_sqlite_path(url))
    from cvmstore.kbs.storage.postgres import PostgresRepository

    return PostgresRepository(url)


def redact_url(url: str) -> str:
    """`url` with the password of its user part and of its query (`password=`) replaced by `***`.

    The user part is taken to run to the *last* `@` of the URL, so that a password with an
    unescaped `@`, `/`, `?` or `#` is hidden whole (at worst the host is hidden with it).
    """
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    if at != -1:
        user, colon, _ = rest[:at].partition(":")
        rest = f"{user}{':***' if colon else ''}{rest[at:]}"
    body, hash_mark, fragment = rest.partition("#")
    before, question_mark, query = body.partition("?")
    if question_mark:
        query = "&".join(_redact_parameter(item) for item in query.split("&"))
    return f"{head}{sep}{before}{question_mark}{query}{hash_mark}{fragment}"


def _redact_parameter(item: str) -> str:
    key, eq, _ = item.partition("=")
    if eq and unquote(key).strip().lower() in _SECRET_PARAMETERS:
        return f"{key}=***"
    return item


def _sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///absolute/path` URL (percent-escapes decoded)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise FormatError(f"malformed SQLite URL {redact_url(url)!r}: {exc}") from None
    path = unquote(parts.path)
    if parts.netloc or parts.query or parts.fragment or not path.startswith("/"):
        raise FormatError(
            f"malformed SQLite URL {redact_url(url)!r}: expected sqlite:///absolute/path.db "
            "(no host, no query)"
        )
    if path.endswith("/"):
        raise FormatError(f"SQLite URL {redact_url(url)!r} names a directory, not a file")
    return Path(path)
