"""Running a KBS: build the service from a configuration, and serve it with uvicorn.

`build_service` opens (and migrates) the database, loads the master key, the signing key and
the trusted roots, and makes the first admin token when there is none. `serve` runs uvicorn
(TLS when configured), logs one JSON object per line, and shuts down gracefully on SIGTERM or
SIGINT: requests in flight finish, then the database is closed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from cvmstore.attest.certs import load_certificates, role_of
from cvmstore.attest.verify import Trust
from cvmstore.errors import FormatError
from cvmstore.kbs.config import KbsConfig
from cvmstore.kbs.repository import Repository
from cvmstore.kbs.sealing import Sealer, load_master_key
from cvmstore.kbs.service import KbsService
from cvmstore.kbs.storage import open_repository
from cvmstore.kbs.tokens import SigningKey
from cvmstore.kbs.verifier import EvidenceVerifier

__all__ = [
    "ADMIN_TOKEN_FILE",
    "build_service",
    "configure_logging",
    "free_loopback_port",
    "new_admin_token",
    "serve",
    "serve_in_thread",
]

ADMIN_TOKEN_FILE = "admin.token"
_log = logging.getLogger("cvmstore.kbs")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "color_message"}
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the KBS and uvicorn's own messages."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("cvmstore", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def trust_for(config: KbsConfig) -> Trust:
    """AMD's roots, plus the simulator roots the configuration names (tests and demos)."""
    trust = Trust()
    for path in config.simulator_roots:
        for cert in load_certificates(path.read_bytes()):
            role = role_of(cert)
            if role is None or role[0].value != "ARK" or role[1] is None:
                raise FormatError(f"simulator root {path}: not an ARK certificate")
            trust = trust.with_root(cert, role[1])
            _log.warning(
                "trusting an attestation-simulator root: never do this in production",
                extra={"event": "simulator-root", "path": str(path)},
            )
    return trust


def new_admin_token(repository: Repository, label: str) -> str:
    """Register a fresh admin token (only its SHA-256 is stored) and return it."""
    token = secrets.token_urlsafe(32)
    repository.add_admin_token(hashlib.sha256(token.encode()).hexdigest(), label, time.time())
    return token


def write_secret_file(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by the owner only (a file there is replaced).

    A fresh 0600 file is renamed over the target, so an older file's wider mode never
    carries over to the secret.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_service(config: KbsConfig, *, repository: Repository | None = None) -> KbsService:
    """A ready `KbsService`: database migrated, keys loaded, first admin token made.

    Raises:
        FormatError: a bad master key source, simulator root or database URL.
        WrongKeyError: the master key does not unseal this database's signing key.
    """
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    repository = repository or open_repository(config.database_url)
    try:
        version = repository.migrate()
        master_key, source = load_master_key(config.master_key_file, config.data_dir, create=True)
        sealer = Sealer(master_key)
        signer = SigningKey.load_or_create(repository, sealer)
        if repository.count_admin_tokens() == 0:
            token_file = config.data_dir / ADMIN_TOKEN_FILE
            write_secret_file(token_file, new_admin_token(repository, "first"))
            _log.warning(
                "made the first admin token",
                extra={"event": "admin-token", "path": str(token_file)},
            )
        verifier = EvidenceVerifier(
            trust_for(config), allow_sample=config.allow_sample_tee, vcek_store=config.vcek_store
        )
    except BaseException:
        repository.close()
        raise
    _log.info(
        "KBS ready",
        extra={
            "event": "ready",
            "backend": repository.backend,
            "schema": version,
            "master-key": source,
            "token-key": signer.thumbprint,
        },
    )
    return KbsService(repository, config, sealer, verifier, signer)


def serve(config: KbsConfig) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn; `workers` processes when above 1)."""
    configure_logging(config.log_level)
    ssl: dict[str, Any] = {}
    if config.tls_certificate is not None and config.tls_key is not None:
        ssl = {"ssl_certfile": str(config.tls_certificate), "ssl_keyfile": str(config.tls_key)}
    common: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_config": None,
        "access_log": False,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": 10,
        "limit_concurrency": 1024,
        # The client address keys the /auth rate limit: never take it from a header a
        # client writes (X-Forwarded-For), even from loopback.
        "proxy_headers": False,
        "server_header": False,
        **ssl,
    }
    if config.workers > 1:
        # Set up once here (schema, master key, signing key, first admin token), so the
        # workers only load what exists and never race to make it.
        build_service(config).repository.close()
        # Each worker builds its own service from the configuration, passed by environment.
        os.environ["CVMSTORE_KBS_CONFIG_JSON"] = _config_json(config)
        uvicorn.run(
            "cvmstore.kbs.server:app_from_environment",
            factory=True,
            workers=config.workers,
            **common,
        )
        return
    service = build_service(config)
    from cvmstore.kbs.app import create_app

    app = create_app(service, on_shutdown=service.repository.close)
    _GracefulServer(uvicorn.Config(app, **common)).run()


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, but a SIGTERM/SIGINT shutdown that completed exits with status 0.

    uvicorn re-raises the signal after its graceful shutdown, so the process would end "killed
    by SIGTERM"; a KBS that drained its requests and closed its database has succeeded.
    """

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


@contextmanager
def serve_in_thread(config: KbsConfig, service: KbsService) -> Iterator[str]:
    """Serve `service` on `config.listen` from a thread of this process; yields the base URL.

    For the demo, tests and benchmarks: real HTTP on a real socket, stopped when the block
    ends (requests in flight finish first).
    """
    from cvmstore.kbs.app import create_app

    tls: dict[str, str] = {}
    if config.tls_certificate is not None and config.tls_key is not None:
        tls = {"ssl_certfile": str(config.tls_certificate), "ssl_keyfile": str(config.tls_key)}
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            proxy_headers=False,
            **tls,  # type: ignore[arg-type]  # str paths, as uvicorn takes them
        )
    )
    thread = threading.Thread(target=server.run, name="cvmstore-kbs", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the KBS did not start on {config.listen}")
        time.sleep(0.01)
    try:
        yield f"{'https' if tls else 'http'}://{config.listen}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config_json(config: KbsConfig) -> str:
    from dataclasses import asdict

    # Workers may start elsewhere: every path goes as an absolute one.
    return json.dumps(asdict(config), default=lambda value: str(Path(value).resolve()))


def app_from_environment() -> Starlette:
    """The app of one worker process (uvicorn `--workers`)."""
    from cvmstore.kbs.app import create_app
    from cvmstore.kbs.config import config_from_mapping

    raw = json.loads(os.environ["CVMSTORE_KBS_CONFIG_JSON"])
    data = {k: v for k, v in raw.items() if v is not None and v != []}
    data["simulator_roots"] = [str(p) for p in raw.get("simulator_roots", [])]
    config = config_from_mapping(data, base=Path("/"))
    configure_logging(config.log_level)
    service = build_service(config)
    return create_app(service, on_shutdown=service.repository.close)
