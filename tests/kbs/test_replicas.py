"""Two KBS processes sharing one PostgreSQL serve one fleet.

A session made on one process is attested and used on the other, both sign with the same
key, and guests racing to advance one volume through the two processes get exactly one winner
per round (the ledger's compare-and-swap holds across processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from cvmstore.errors import ForkError
from cvmstore.kbs.admin import AdminClient
from cvmstore.kbs.client import KbsClient
from cvmstore.kbs.evidence_source import SimulatorEvidence
from cvmstore.kbs.storage.postgres import PostgresRepository
from tests.kbs.live import MEASUREMENT, SIMULATOR, free_port, simulator_root
from tests.kbs.support import drop_schema, fresh_schema, postgres_url

ROUNDS = 25
SERVE = (
    "import sys; from cvmstore.kbs.config import load_config;"
    " from cvmstore.kbs.server import serve; serve(load_config(sys.argv[1]))"
)


def start(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVMSTORE_")}
    with log.open("wb") as stderr:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(config)], env=env, stderr=stderr
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the KBS exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("the KBS did not start")


@pytest.fixture
def two_kbs(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    url = postgres_url()
    schema = fresh_schema()
    PostgresRepository(url, schema=schema).close()  # creates the schema
    shared = f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"
    master = tmp_path / "master.key"
    master.write_text(os.urandom(32).hex())
    root = simulator_root(tmp_path)
    processes, urls = [], []
    try:
        for name in ("a", "b"):
            port = free_port()
            config = tmp_path / f"{name}.toml"
            config.write_text(
                f'listen = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / name}"\n'
                f'database = "{shared}"\nmaster_key_file = "{master}"\n'
                f'simulator_roots = ["{root}"]\nlog_level = "warning"\n'
            )
            processes.append(start(config, port, tmp_path / f"{name}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        token = (tmp_path / "a" / "admin.token").read_text().strip()
        assert not (tmp_path / "b" / "admin.token").exists()  # one fleet, one first token
        yield urls[0], urls[1], token
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=30) == 0
        drop_schema(url, schema)


def client(url: str, thumbprint: str) -> KbsClient:
    evidence = SimulatorEvidence(SIMULATOR, {"measurement": MEASUREMENT})
    return KbsClient(url, evidence, kbs_key=thumbprint, retries=0)


def test_a_session_made_on_one_process_works_on_the_other(two_kbs: tuple[str, str, str]) -> None:
    a, b, token = two_kbs
    with AdminClient(a, token) as admin_a, AdminClient(b, token) as admin_b:
        thumbprint = admin_a.token_key()["thumbprint"]
        assert admin_b.token_key()["thumbprint"] == thumbprint
        admin_a.add_reference(MEASUREMENT.hex())
        admin_b.set_resource("fleet/key/one", b"shared secret")
    with client(a, thumbprint) as guest:
        # auth on A; then point the same session (cookie jar) at B for attest and resource.
        guest.attest()
        session = guest._http.cookies["kbs-session-id"]
    with client(b, thumbprint) as other:
        other._key = guest._key
        other._http.cookies.set("kbs-session-id", session)
        assert other.resource("fleet/key/one") == b"shared secret"
    # The whole handshake split across the two: /auth on A, /attest on B.
    with httpx.Client() as http:
        challenge = http.post(f"{a}/kbs/v0/auth", json={"version": "0.4.0", "tee": "snp"})
        assert challenge.status_code == 200
        from cryptography.hazmat.primitives.asymmetric import ec

        from tests.kbs.test_protocol import attestation

        body = attestation(challenge.json()["nonce"], ec.generate_private_key(ec.SECP256R1()))
        attested = http.post(f"{b}/kbs/v0/attest", json=body)
        assert attested.status_code == 200, attested.text


def test_racing_advances_through_both_processes_have_one_winner(
    two_kbs: tuple[str, str, str],
) -> None:
    a, b, token = two_kbs
    with AdminClient(a, token) as admin:
        thumbprint = admin.token_key()["thumbprint"]
        admin.add_reference(MEASUREMENT.hex())
        admin.create_volume("shared", f'measurements = ["{MEASUREMENT.hex()}"]')
    store_id = b"\x42" * 16
    with client(a, thumbprint) as one, client(b, thumbprint) as two:
        one.attest()
        two.attest()
        state: tuple[int, bytes] | None = None
        winners = []
        for round_ in range(ROUNDS):
            results: dict[str, str] = {}
            barrier = threading.Barrier(2)
            generation = 0 if state is None else state[0] + 1

            def race(
                name: str,
                guest: KbsClient,
                expected: tuple[int, bytes] | None,
                generation: int = generation,
                barrier: threading.Barrier = barrier,
                results: dict[str, str] = results,
            ) -> None:
                root = (name * 32).encode()[:32]
                barrier.wait()
                try:
                    guest.ledger_advance("shared", expected, (generation, root), store_id)
                    results[name] = "won"
                except ForkError:
                    results[name] = "fork"

            threads = [
                threading.Thread(target=race, args=("a", one, state)),
                threading.Thread(target=race, args=("b", two, state)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(results.values()) == ["fork", "won"], (round_, results)
            winner = next(name for name, result in results.items() if result == "won")
            winners.append(winner)
            state = (generation, (winner * 32).encode()[:32])
    with AdminClient(b, token) as admin:
        info = admin.volume("shared")
    assert info["version"] == ROUNDS
    assert info["generation"] == ROUNDS - 1
    assert [entry["outcome"] for entry in info["audit"]].count("advanced") == ROUNDS
