"""The KBS configuration: a TOML file whose every key has a safe default.

An empty file (or none) gives a KBS on 127.0.0.1:8080, SQLite in `./kbs-data`, no TLS, only
AMD's roots trusted, no `sample` TEE and no RSA1_5. docs/kbs.md lists every key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cvmstore.errors import FormatError

__all__ = ["PROTOCOL_VERSION", "KbsConfig", "load_config"]

#: The Trustee KBS protocol version this KBS speaks (checked exactly, as Trustee does).
PROTOCOL_VERSION = "0.4.0"


@dataclass(frozen=True, slots=True)
class KbsConfig:
    """Every setting of a KBS process (see docs/kbs.md for each)."""

    listen: str = "127.0.0.1:8080"
    data_dir: Path = Path("kbs-data")
    database: str = ""  # empty: SQLite at data_dir/kbs.db; or sqlite:///..., postgresql://...
    master_key_file: Path | None = None  # else $CVMSTORE_KBS_MASTER_KEY(_FILE), else data_dir
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    session_lifetime: float = 300.0
    token_lifetime: float = 300.0
    allow_sample_tee: bool = False
    allow_rsa1_5: bool = False
    simulator_roots: tuple[Path, ...] = ()  # attestation-simulator ARKs to trust: tests only
    vcek_store: Path | None = None
    max_body_bytes: int = 1 << 20
    auth_rate: float = 50.0  # /auth requests per second per client address
    auth_burst: int = 100
    request_timeout: float = 30.0
    workers: int = 1
    log_level: str = "info"

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FormatError(f"listen: {self.listen!r} is not HOST:PORT")
        for name in ("session_lifetime", "token_lifetime", "request_timeout", "auth_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value <= 86_400:
                raise FormatError(f"{name}: {value!r} is not a number of seconds in (0, 86400]")
        for name, low, high in (
            ("max_body_bytes", 1024, 64 << 20),
            ("auth_burst", 1, 1_000_000),
            ("workers", 1, 256),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise FormatError(f"{name}: {value!r} is not an integer in [{low}, {high}]")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise FormatError("tls_certificate and tls_key go together: set both or neither")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise FormatError(f"log_level: {self.log_level!r} is not debug|info|warning|error")

    @property
    def host(self) -> str:
        """The address to listen on."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The port to listen on."""
        return int(self.listen.rpartition(":")[2])

    @property
    def database_url(self) -> str:
        """Where the state lives: the configured URL, or SQLite in the data directory."""
        return self.database or f"sqlite:///{(self.data_dir / 'kbs.db').resolve()}"


_PATHS = {"data_dir", "master_key_file", "tls_certificate", "tls_key", "vcek_store"}
_TYPES: dict[str, tuple[type, ...]] = {
    "listen": (str,),
    "database": (str,),
    "allow_sample_tee": (bool,),
    "allow_rsa1_5": (bool,),
    "log_level": (str,),
    "session_lifetime": (int, float),
    "token_lifetime": (int, float),
    "request_timeout": (int, float),
    "auth_rate": (int, float),
    "max_body_bytes": (int,),
    "auth_burst": (int,),
    "workers": (int,),
}


def load_config(path: str | Path | None) -> KbsConfig:
    """The configuration in `path` (TOML), or the defaults when `path` is None.

    Relative paths in the file are relative to the file's directory.

    Raises:
        FormatError: unreadable, not TOML, an unknown key, a value of the wrong type or range.
    """
    if path is None:
        return KbsConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FormatError(f"cannot read KBS configuration {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"KBS configuration {path}: not valid TOML: {exc}") from None
    return config_from_mapping(data, base=path.parent, source=str(path))


def config_from_mapping(
    data: dict[str, Any], *, base: Path = Path("."), source: str = "configuration"
) -> KbsConfig:
    """A `KbsConfig` from parsed TOML/JSON (see `load_config`)."""
    known = {f.name for f in fields(KbsConfig)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise FormatError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        if key in _PATHS:
            if not isinstance(value, str) or not value:
                raise FormatError(f"{source}: {key}: expected a path")
            values[key] = base / value
        elif key == "simulator_roots":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FormatError(f"{source}: simulator_roots: expected a list of paths")
            values[key] = tuple(base / v for v in value)
        else:
            allowed = _TYPES[key]
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                names = " or ".join(t.__name__ for t in allowed)
                raise FormatError(f"{source}: {key}: expected {names}, got {value!r}")
            values[key] = value
    try:
        return KbsConfig(**values)
    except FormatError as exc:
        raise FormatError(f"{source}: {exc}") from None
