"""A real KBS on a loopback port, in a thread of the test process (real HTTP, real uvicorn)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cvmstore.attest.simulator import Simulator
from cvmstore.kbs.config import KbsConfig
from cvmstore.kbs.repository import Repository
from cvmstore.kbs.server import (
    ADMIN_TOKEN_FILE,
    build_service,
    free_loopback_port,
    serve_in_thread,
)
from cvmstore.kbs.service import KbsService

#: One simulator for the whole test run: making its RSA keys is the slow part.
SIMULATOR = Simulator(seed="cvmstore-kbs-tests", key_size=2048)
MEASUREMENT = bytes.fromhex("ab" * 48)


free_port = free_loopback_port


def simulator_root(directory: Path) -> Path:
    path = directory / "simulator-ark.pem"
    if not path.exists():
        from cryptography.hazmat.primitives.serialization import Encoding

        path.write_bytes(SIMULATOR.ark.public_bytes(Encoding.PEM))
    return path


@dataclass
class LiveKbs:
    url: str
    service: KbsService
    admin_token: str
    config: KbsConfig
    thumbprint: str = field(init=False)

    def __post_init__(self) -> None:
        self.thumbprint = self.service.signer.thumbprint


@contextmanager
def live_kbs(
    data_dir: Path,
    repository: Repository,
    **settings: object,
) -> Iterator[LiveKbs]:
    """Serve a KBS over `repository` until the block ends."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {
        "listen": f"127.0.0.1:{port}",
        "data_dir": data_dir,
        "master_key_file": None,
        "simulator_roots": (simulator_root(data_dir),),
    }
    values.update(settings)
    config = KbsConfig(**values)  # type: ignore[arg-type]  # test settings, checked by KbsConfig
    service = build_service(config, repository=repository)
    token_file = data_dir / ADMIN_TOKEN_FILE
    admin_token = token_file.read_text().strip() if token_file.exists() else ""
    with serve_in_thread(config, service) as url:
        yield LiveKbs(url, service, admin_token, config)
