"""`cvmstore bench kbs`: the KBS under load on loopback, against its crypto-bound ceiling.

The KBS runs as its own process (`cvmstore.kbs.server.serve`: uvicorn with one worker per CPU,
SQLite in a scratch directory under `--dir`), so the load generator never shares its
interpreter lock. The load comes from separate processes too (`multiprocessing`, spawn; one
per CPU, which gave the server as much load as one process of threads or more): closed-loop
clients, each a thread with its own keep-alive connection, spread round-robin over them.

Workloads (issue targets in brackets):
- Full RCAR handshakes (auth, attest, resource) with simulator evidence at 1, 16 and 64
  concurrent clients: handshakes/s and p50/p99 latency [>= 0.5x the crypto-bound ceiling].
  The ceiling is what one server worker's mandatory crypto allows, in a bare loop of this
  process: `verify_report` with a warm chain cache (the report's ECDSA P-384 signature and
  the checks around it), the ECDH-ES+A256KW JWE of the resource to the guest's P-521 key, and
  the two ES256 signatures (the attestation token and the resource signature), times the
  workers. Every handshake carries a fresh report bound to the server's nonce, so making it
  (an ECDSA P-384 signature) is load-generator work. Apart from that the client is lean, to
  leave the shared CPUs to the server: stdlib `http.client` (half the CPU of httpx per
  handshake here), one TEE key per client for all its handshakes, the constant certificate
  chain serialised once, answers checked for shape (each client's first resource is
  decrypted and compared).
- Rollback-ledger advances through `KbsClient.ledger_advance` (attested beforehand), one
  volume per client so that every compare-and-swap wins, at 16 clients and at 1:
  advances/s and p50/p99 latency [>= 1,000/s and p99 <= 20 ms at 16 clients]. The baseline
  is the bare SQLite transaction underneath, in the same directory with the same durability
  (WAL, synchronous=FULL) and the KBS's own schema: one conditional UPDATE and one INSERT.

Each load figure's rounds alternate with its baseline's (`_harness.interleave`). In a round
all clients start together; after a ramp of a fifth of the window (not counted), the rate
counts the operations that complete inside the window, and latencies are kept of those that
start in it, also when they finish after it. Rates are medians over the rounds; percentiles
pool every round. A failed operation (an HTTP error) is counted, reported in the notes and
left out. The figures give the KBS's CPU time per handshake, the notes both sides' per
operation. The spawned processes import the main module again, so a script that calls `run`
must guard its entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cvmstore.attest.evidence import report_to_trustee_json, trustee_evidence
from cvmstore.attest.simulator import Simulator
from cvmstore.attest.verify import verify_report
from cvmstore.bench._harness import BenchConfig, Figure, Report, interleave
from cvmstore.kbs.binding import trustee_report_data
from cvmstore.kbs.client import KbsClient
from cvmstore.kbs.config import PROTOCOL_VERSION, KbsConfig
from cvmstore.kbs.jose import (
    b64url_encode,
    jwe_decrypt,
    jwe_digest,
    jwe_encrypt,
    parse_tee_jwk,
    tee_jwk,
)
from cvmstore.kbs.protocol import SESSION_COOKIE
from cvmstore.kbs.sealing import Sealer, load_master_key
from cvmstore.kbs.server import free_loopback_port, new_admin_token
from cvmstore.kbs.service import KbsService
from cvmstore.kbs.storage import open_repository, schema
from cvmstore.kbs.tokens import SigningKey
from cvmstore.kbs.verifier import EvidenceVerifier, snp_claims

__all__ = ["HANDSHAKE_CLIENTS", "LEDGER_CLIENTS", "run"]

HANDSHAKE_CLIENTS = (1, 16, 64)
LEDGER_CLIENTS = (16, 1)
_HANDSHAKE_TARGET = 0.5  # of the crypto-bound ceiling
_ADVANCE_TARGET = 1000.0  # advances/s at 16 clients
_P99_TARGET_MS = 20.0  # advance latency at 16 clients
_TARGET_CLIENTS = 16

_SEED = "cvmstore bench kbs"
_MEASUREMENT = hashlib.sha384(_SEED.encode()).digest()
_POLICY = f'measurements = ["{_MEASUREMENT.hex()}"]\n'
_RESOURCE = "bench/key/handshake"
_SECRET = hashlib.sha256(b"the released resource").digest()
_AUTH_BODY = json.dumps({"version": PROTOCOL_VERSION, "tee": "snp", "extra-params": ""}).encode()


def run(
    config: BenchConfig,
    *,
    seconds: float | None = None,
    handshake_clients: Sequence[int] = HANDSHAKE_CLIENTS,
    ledger_clients: Sequence[int] = LEDGER_CLIENTS,
    processes: int | None = None,
) -> Report:
    """Measure handshakes and ledger advances against a KBS process on loopback.

    Args:
        config: the shared settings; `rounds` interleaved rounds per figure.
        seconds: the measured window of one round of load (default 0.5 s, 0.25 with `quick`).
        handshake_clients: the concurrency levels of the handshake figures.
        ledger_clients: the concurrency levels of the ledger figures.
        processes: load-generator processes (default: one per CPU).
    """
    report = Report("kbs", config.quick)
    window = seconds if seconds is not None else (0.25 if config.quick else 0.5)
    cpus = _cpus()
    processes = processes or cpus
    with tempfile.TemporaryDirectory(dir=config.directory, prefix="cvmstore-bench-") as tmp:
        work = Path(tmp)
        simulator = Simulator(seed=_SEED, key_size=2048)
        kbs = _provision(work, simulator, workers=cpus, volumes=max(ledger_clients, default=0))
        setup = _ClientSetup(
            url=kbs.url,
            thumbprint=kbs.signer.thumbprint,
            chain=tuple(c.public_bytes(Encoding.DER) for c in simulator.chain()),
            vcek=_spki(simulator.vcek),
        )
        with (
            _Server(kbs.config_file, kbs.url, work / "kbs.log") as server,
            _LoadGenerator(setup, processes) as load,
            contextlib.closing(_BareLedger(work / "bare.db")) as bare,
        ):
            bench = _Bench(config, window, cpus, load, server, _Ceiling(simulator, kbs.signer))
            for clients in handshake_clients:
                report.figures.extend(bench.handshakes(clients))
            for clients in ledger_clients:
                report.figures.extend(bench.advances(clients, bare))
    report.notes.append(
        f"KBS: its own process, uvicorn with {cpus} workers (one per CPU), SQLite (WAL, "
        f"synchronous=FULL) in --dir; load: {processes} client processes, one thread and one "
        f"keep-alive connection per client, sharing the same {cpus} CPUs; {config.rounds} "
        f"interleaved rounds of {window:g} s per figure (medians; percentiles pool the rounds)"
    )
    if handshake_clients:
        report.notes.append(
            f"ceiling: one worker's crypto per handshake (verify_report with a warm chain cache, "
            f"ECDH-ES+A256KW to a P-521 key, two ES256 signatures) took {bench.crypto_ms:.2f} ms "
            f"(median of the last level's rounds), x {cpus} workers"
        )
    report.notes.extend(bench.cpu_notes)
    report.notes.extend(
        f"{count} {kind} operations failed (left out of the figures); first: {first}"
        for kind, (count, first) in bench.failures.items()
    )
    return report


# ---------------------------------------------------------------------------- the KBS


@dataclass(frozen=True, slots=True)
class _Provisioned:
    url: str
    config_file: Path
    signer: SigningKey


def _provision(work: Path, simulator: Simulator, *, workers: int, volumes: int) -> _Provisioned:
    """Write the KBS's configuration and fill its database: reference, resource, volumes."""
    data = work / "kbs"
    data.mkdir(mode=0o700)
    ark = work / "simulator-ark.pem"
    ark.write_bytes(simulator.ark.public_bytes(Encoding.PEM))
    listen = f"127.0.0.1:{free_loopback_port()}"
    settings: dict[str, object] = {
        "listen": listen,
        "data_dir": str(data),
        "simulator_roots": [str(ark)],
        "workers": workers,
        # Every request comes from one address here: the /auth limit would refuse most.
        "auth_rate": 86_400.0,
        "auth_burst": 1_000_000,
    }
    config_file = work / "kbs.toml"
    config_file.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    config = KbsConfig(listen=listen, data_dir=data, simulator_roots=(ark,), workers=workers)
    repository = open_repository(config.database_url)
    try:
        repository.migrate()
        master_key, _ = load_master_key(None, data, create=True)
        sealer = Sealer(master_key)
        signer = SigningKey.load_or_create(repository, sealer)
        new_admin_token(repository, "bench")  # so that the workers do not race to make one
        verifier = EvidenceVerifier(simulator.trust())
        service = KbsService(repository, config, sealer, verifier, signer)
        service.add_reference(_MEASUREMENT.hex())
        service.set_resource(_RESOURCE, _SECRET)
        for index in range(volumes):
            service.create_volume(_volume(index), _POLICY)
    finally:
        repository.close()
    return _Provisioned(f"http://{listen}", config_file, signer)


def _volume(index: int) -> str:
    return f"bench-{index}"


class _Server:
    """`serve(load_config(FILE))` in a child process; its CPU time, read from /proc."""

    def __init__(self, config_file: Path, url: str, log: Path) -> None:
        self.url = url
        self._log_path = log
        self._log: IO[bytes] = open(log, "wb")  # noqa: SIM115 (closed by _stop)
        script = (
            "import sys\n"
            "from cvmstore.kbs.config import load_config\n"
            "from cvmstore.kbs.server import serve\n"
            "serve(load_config(sys.argv[1]))\n"
        )
        self._process = subprocess.Popen(
            [sys.executable, "-c", script, str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=config_file.parent,
            start_new_session=True,  # its workers form a group this code can end as a whole
        )

    def __enter__(self) -> _Server:
        try:
            self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=self.url, timeout=2) as http:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"the KBS exited at start:\n{self._tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/healthz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the KBS did not answer /healthz:\n{self._tail()}")
                time.sleep(0.05)

    def _tail(self) -> str:
        self._log.flush()
        return self._log_path.read_text(errors="replace")[-2000:]

    def _stop(self) -> None:
        try:
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)  # graceful: uvicorn ends its workers
                try:
                    self._process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self._process.pid, signal.SIGKILL)
                    self._process.wait()
        finally:
            self._log.close()

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its descendants so far (0 without /proc)."""
        parents: dict[int, int] = {}
        with contextlib.suppress(OSError):
            for name in os.listdir("/proc"):
                stat = _proc_stat(name) if name.isdigit() else None
                if stat is not None:
                    parents[int(name)] = int(stat[1])
        pids, grown = {self._process.pid}, True
        while grown:
            children = {pid for pid, parent in parents.items() if parent in pids}
            grown = not children <= pids
            pids |= children
        ticks = 0
        for pid in pids:
            stat = _proc_stat(str(pid))
            if stat is not None:
                ticks += int(stat[11]) + int(stat[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


# ---------------------------------------------------------------------------- baselines


class _Ceiling:
    """One worker's mandatory crypto for one handshake, in a bare loop."""

    def __init__(self, simulator: Simulator, signer: SigningKey) -> None:
        self.report = simulator.report(bytes(64), measurement=_MEASUREMENT)
        self.chain = simulator.chain()
        self.trust = simulator.trust()
        self.signer = signer
        jwk = tee_jwk(ec.generate_private_key(ec.SECP521R1()).public_key())
        self.key = parse_tee_jwk(jwk)
        raw = self.report.encode()
        self.claims = {
            "runtime_data_claims": {"nonce": b64url_encode(bytes(32)), "tee-pubkey": jwk},
            "init_data": None,
            "tee": "snp",
            "binding": "trustee",
            "evidence-sha384": hashlib.sha384(raw).hexdigest(),
            "snp": snp_claims(raw),
        }
        verify_report(self.report, self.chain, trust=self.trust)  # warms the chain cache

    def once(self) -> None:
        """The crypto of /attest and /resource: verify, sign the token, encrypt, sign."""
        verify_report(self.report, self.chain, trust=self.trust)
        self.signer.attestation_token("0" * 32, 300, self.claims)
        jwe = jwe_encrypt(self.key, _SECRET)
        self.signer.sign({"resource": _RESOURCE, "jwe-sha256": jwe_digest(jwe)})

    def rate(self, seconds: float) -> float:
        """Handshakes/s of one worker's crypto over about `seconds`."""
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or count < 5:
            self.once()
            count += 1
        return count / elapsed


class _BareLedger:
    """The ledger's SQLite transaction without the KBS: the same schema and durability."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        for migration in schema.MIGRATIONS:
            for statement in migration.sql("sqlite"):
                self._db.execute(statement)
        self._db.execute(
            f"INSERT INTO kbs_volumes ({schema.VOLUME_COLUMNS}) "
            "VALUES (?, ?, ?, 0, 0, NULL, NULL, NULL)",
            ("bare", "cvmstore/volume/bare", _POLICY),
        )
        self.version = 0

    def advance(self) -> None:
        """One compare-and-swap with its audit record, committed."""
        db, version = self._db, self.version
        db.execute("BEGIN IMMEDIATE")
        updated = db.execute(
            "UPDATE kbs_volumes SET version = version + 1, generation = ?, root = ?, "
            "store_id = ? WHERE name = ? AND version = ?",
            (version + 1, os.urandom(32), b"bare-store", "bare", version),
        ).rowcount
        db.execute(
            f"INSERT INTO kbs_ledger_audit ({schema.AUDIT_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "bare",
                time.time(),
                "00" * 48,
                "advanced",
                version,
                version + 1,
                version,
                version + 1,
            ),
        )
        db.execute("COMMIT")
        if updated != 1:
            raise AssertionError("the bare compare-and-swap lost against nobody")
        self.version = version + 1

    def rate(self, seconds: float, latencies: list[float]) -> float:
        """Advances/s over about `seconds`; each one's latency is appended to `latencies`."""
        count, start = 0, time.perf_counter()
        end = start
        while end - start < seconds or count < 5:
            before = time.perf_counter()
            self.advance()
            end = time.perf_counter()
            latencies.append(end - before)
            count += 1
        return count / (end - start)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


# ---------------------------------------------------------------------------- figures


@dataclass
class _Bench:
    config: BenchConfig
    window: float
    workers: int
    load: _LoadGenerator
    server: _Server
    ceiling: _Ceiling
    crypto_ms: float = 0.0
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    cpu_notes: list[str] = field(default_factory=list)

    def _rounds(
        self, kind: str, clients: int, latencies: list[float], server_cpu: list[float]
    ) -> Callable[[], float]:
        """Ready and warm `clients` for `kind`; return one measured round, for `interleave`.

        Each round adds its latencies and the KBS's CPU time per operation to the lists
        given; after the last round, a note gives both sides' CPU time per operation.
        """
        client_cpu: list[float] = []
        self.load.prepare(kind, clients)
        self.load.round(kind, clients, self.window / 2)  # warm-up: connections, caches

        def measured() -> float:
            before = self.server.cpu_seconds()
            result = self.load.round(kind, clients, self.window)
            server_cpu.append((self.server.cpu_seconds() - before) / result.operations)
            client_cpu.append(result.cpu / result.operations)
            latencies.extend(result.latencies)
            if result.failed:
                count, first = self.failures.get(kind, (0, result.first_failure))
                self.failures[kind] = (count + result.failed, first)
            if len(server_cpu) == self.config.rounds:
                server, client = _median(server_cpu) * 1e3, _median(client_cpu) * 1e3
                self.cpu_notes.append(
                    f"{kind}, {_clients(clients)}: CPU per operation {server:.2f} ms in the KBS,"
                    f" {client:.2f} ms in the load generator"
                )
            return result.rate

        return measured

    def handshakes(self, clients: int) -> list[Figure]:
        """Handshakes/s against the ceiling; latency and CPU against the crypto's time."""
        latencies: list[float] = []
        server_cpu: list[float] = []
        measured = self._rounds("handshake", clients, latencies, server_cpu)
        value, per_worker = interleave(
            self.config.rounds, measured, lambda: self.ceiling.rate(self.window / 4)
        )
        crypto_ms = 1e3 / per_worker
        self.crypto_ms = crypto_ms
        at = _clients(clients)
        return [
            Figure(
                f"handshakes, {at}",
                "hs/s",
                value,
                per_worker * self.workers,
                f"crypto ceiling x{self.workers}",
                target=_HANDSHAKE_TARGET,
            ),
            _ms(f"handshake p50, {at}", _percentile(latencies, 0.5), crypto_ms, "server crypto"),
            _ms(f"handshake p99, {at}", _percentile(latencies, 0.99), crypto_ms, "server crypto"),
            _ms(f"server CPU per handshake, {at}", _median(server_cpu), crypto_ms, "server crypto"),
        ]

    def advances(self, clients: int, bare: _BareLedger) -> list[Figure]:
        """Advances/s and latency against the bare SQLite transaction; the issue's targets."""
        latencies: list[float] = []
        bare_latencies: list[float] = []
        measured = self._rounds("ledger", clients, latencies, [])
        value, baseline = interleave(
            self.config.rounds, measured, lambda: bare.rate(self.window / 4, bare_latencies)
        )
        at = _clients(clients)
        p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
        figures = [
            Figure(f"ledger advances, {at}", "adv/s", value, baseline, "bare SQLite txn"),
            _ms(
                f"ledger p50, {at}", p50, _percentile(bare_latencies, 0.5) * 1e3, "bare SQLite txn"
            ),
            _ms(
                f"ledger p99, {at}", p99, _percentile(bare_latencies, 0.99) * 1e3, "bare SQLite txn"
            ),
        ]
        if clients == _TARGET_CLIENTS:
            figures += [
                Figure(
                    f"ledger advances, {at}, against 1,000/s",
                    "adv/s",
                    value,
                    _ADVANCE_TARGET,
                    "target",
                    target=1.0,
                ),
                Figure(
                    f"ledger p99, {at}, against 20 ms",
                    "ms",
                    p99 * 1e3,
                    _P99_TARGET_MS,
                    "target",
                    higher_is_better=False,
                    target=1.0,
                ),
            ]
        return figures


def _ms(name: str, seconds: float, baseline_ms: float, baseline_name: str) -> Figure:
    return Figure(name, "ms", seconds * 1e3, baseline_ms, baseline_name, higher_is_better=False)


def _clients(count: int) -> str:
    return f"{count} client{'s' if count != 1 else ''}"


def _percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (0 for no samples)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _median(values: Sequence[float]) -> float:
    return _percentile(values, 0.5)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------------------- load generator


@dataclass(frozen=True, slots=True)
class _ClientSetup:
    """What a load-generator process needs (picklable: it crosses a spawn)."""

    url: str
    thumbprint: str
    chain: tuple[bytes, ...]  # DER: VCEK, ASK, ARK of the simulator the server trusts
    vcek: bytes  # the VCEK's public key (DER), which the process's own simulator must hold


@dataclass(frozen=True, slots=True)
class _Round:
    rate: float  # operations completed inside the window, per second
    latencies: list[float]  # of the operations that succeeded and started in the window
    operations: int  # every operation of the round, ramp and drain included
    cpu: float  # load-generator CPU seconds
    failed: int
    first_failure: str


class _LoadGenerator:
    """Client processes, each running its share of the clients as threads."""

    def __init__(self, setup: _ClientSetup, processes: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[BaseProcess] = []
        try:
            for _ in range(processes):
                ours, theirs = context.Pipe()
                process = context.Process(target=_client_main, args=(theirs, setup), daemon=True)
                process.start()
                theirs.close()
                self._pipes.append(ours)
                self._processes.append(process)
            for pipe in self._pipes:
                _reply(pipe)  # "ready": imports done, simulator made
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _shares(self, clients: int) -> list[tuple[Connection, list[int]]]:
        count = len(self._pipes)
        shares = [(pipe, list(range(i, clients, count))) for i, pipe in enumerate(self._pipes)]
        return [(pipe, indices) for pipe, indices in shares if indices]

    def prepare(self, kind: str, clients: int) -> None:
        """Make clients 0..clients-1 ready for `kind` (connect; attest for the ledger)."""
        shares = self._shares(clients)
        for pipe, indices in shares:
            pipe.send(("prepare", kind, indices))
        for pipe, _ in shares:
            _reply(pipe)

    def round(self, kind: str, clients: int, seconds: float) -> _Round:
        """Every client runs `kind` back to back; measured for `seconds` after a short ramp.

        All clients start together; what completes in the ramp (a fifth of `seconds`, while
        the first requests pile up) is not counted, nor is what starts after the window.
        """
        shares = self._shares(clients)
        start = time.monotonic() + 0.05
        measured_from = start + seconds / 5
        deadline = measured_from + seconds
        for pipe, indices in shares:
            pipe.send(("go", kind, indices, start, measured_from, deadline))
        latencies: list[float] = []
        inside = done = failed = 0
        cpu, first = 0.0, ""
        for pipe, _ in shares:
            theirs, their_inside, their_done, their_cpu, their_failed, their_first = _reply(pipe)
            latencies += theirs
            inside, done, failed = inside + their_inside, done + their_done, failed + their_failed
            cpu, first = cpu + their_cpu, first or their_first
        if failed and not done:
            raise RuntimeError(f"every {kind} failed ({failed}); the first: {first}")
        return _Round(inside / seconds, latencies, done + failed, cpu, failed, first)

    def close(self) -> None:
        """Stop and reap every process."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
        for pipe in self._pipes:
            pipe.close()
        self._pipes, self._processes = [], []


def _reply(pipe: Connection) -> Any:  # noqa: ANN401 (each command answers its own shape)
    status, value = pipe.recv()
    if status != "ok":
        raise RuntimeError(f"a load-generator process failed: {value}")
    return value


def _client_main(pipe: Connection, setup: _ClientSetup) -> None:
    """A load-generator process: obey the parent's commands until "stop"."""
    try:
        clients = _Clients(setup)
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    pipe.send(("ok", None))
    while (command := pipe.recv())[0] != "stop":
        try:
            if command[0] == "prepare":
                clients.prepare(command[1], command[2])
                pipe.send(("ok", None))
            else:
                pipe.send(("ok", clients.go(*command[1:])))
        except Exception as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    clients.close()


#: (latencies, done inside the window, done in all, failed, first failure)
_Outcome = tuple[list[float], int, int, int, str]


class _Clients:
    """The clients of one load-generator process, kept across rounds (and connections)."""

    def __init__(self, setup: _ClientSetup) -> None:
        self.setup = setup
        # The seed fixes the VCEK's key, so this simulator's reports verify under the chain the
        # server trusts (whose ASK and ARK keys this process never sees).
        self.simulator = Simulator(seed=_SEED, key_size=2048)
        if _spki(self.simulator.vcek) != setup.vcek:
            raise AssertionError("the seeded simulator does not hold the server's VCEK key")
        self.chain = [x509.load_der_x509_certificate(der) for der in setup.chain]
        chain = trustee_evidence(self.simulator.report(), self.chain)["cert_chain"]
        self.chain_json = json.dumps(chain)
        self.handshakers: dict[int, _Handshaker] = {}
        self.advancers: dict[int, _Advancer] = {}

    def prepare(self, kind: str, indices: list[int]) -> None:
        for index in indices:
            if kind == "handshake" and index not in self.handshakers:
                self.handshakers[index] = _Handshaker(self)
            elif kind == "ledger" and index not in self.advancers:
                self.advancers[index] = _Advancer(self, index)

    def go(
        self, kind: str, indices: list[int], start: float, measured_from: float, deadline: float
    ) -> tuple[list[float], int, int, float, int, str]:
        table: Mapping[int, _Client] = self.handshakers if kind == "handshake" else self.advancers
        outcomes: list[_Outcome] = []
        cpu = time.process_time()
        threads = [
            threading.Thread(
                target=_closed_loop, args=(table[i], start, measured_from, deadline, outcomes)
            )
            for i in indices
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu = time.process_time() - cpu
        return (
            [latency for outcome in outcomes for latency in outcome[0]],
            sum(o[1] for o in outcomes),
            sum(o[2] for o in outcomes),
            cpu,
            sum(o[3] for o in outcomes),
            next((o[4] for o in outcomes if o[4]), ""),
        )

    def close(self) -> None:
        for handshaker in self.handshakers.values():
            handshaker.close()
        for advancer in self.advancers.values():
            advancer.close()


class _Client(Protocol):
    def __call__(self) -> None: ...
    def recover(self) -> None: ...


def _closed_loop(
    client: _Client, start: float, measured_from: float, deadline: float, outcomes: list[_Outcome]
) -> None:
    """Run `client()` back to back from `start` to `deadline`; append what happened.

    Latencies are kept of the operations that start from `measured_from` on; an operation
    counts as done inside the window when it ends between `measured_from` and `deadline`.
    """
    latencies: list[float] = []
    inside = done = failed = in_a_row = 0
    first = ""
    time.sleep(max(0.0, start - time.monotonic()))
    now = time.monotonic()
    while now < deadline and in_a_row < 3:  # three failures in a row: this client is broken
        before = now
        try:
            client()
        except Exception as exc:
            failed, in_a_row = failed + 1, in_a_row + 1
            first = first or f"{type(exc).__name__}: {exc}"
            client.recover()
        else:
            in_a_row, done = 0, done + 1
            now = time.monotonic()
            if before >= measured_from:
                latencies.append(now - before)
            inside += measured_from <= now <= deadline
        now = time.monotonic()
    outcomes.append((latencies, inside, done, failed, first))  # list.append is atomic


class _Handshaker:
    """One lean client: auth, attest with a fresh report, resource; one TEE key for all."""

    def __init__(self, clients: _Clients) -> None:
        self.simulator = clients.simulator
        self.chain_json = clients.chain_json
        host, _, port = clients.setup.url.removeprefix("http://").rpartition(":")
        self.http = http.client.HTTPConnection(host, int(port), timeout=30)
        self.cookie = ""
        self.key = ec.generate_private_key(ec.SECP521R1())
        self.jwk = tee_jwk(self.key.public_key())
        self.jwk_json = json.dumps(self.jwk)
        self.checked = False

    def __call__(self) -> None:
        self.cookie = ""
        nonce = self._call("POST", "/kbs/v0/auth", _AUTH_BODY)["nonce"]
        report_data = trustee_report_data(nonce, self.jwk, "")
        report = report_to_trustee_json(
            self.simulator.report(report_data, measurement=_MEASUREMENT)
        )
        body = (
            f'{{"init-data":null,"runtime-data":{{"nonce":{json.dumps(nonce)},'
            f'"tee-pubkey":{self.jwk_json}}},"tee-evidence":{{"primary_evidence":'
            f'{{"attestation_report":{json.dumps(report)},"cert_chain":{self.chain_json}}},'
            '"additional_evidence":""}}'
        )
        if "token" not in self._call("POST", "/kbs/v0/attest", body.encode()):
            raise RuntimeError("the attestation answer has no token")
        jwe = self._call("GET", f"/kbs/v0/resource/{_RESOURCE}")
        if not self.checked:
            if jwe_decrypt(jwe, self.key) != _SECRET:
                raise RuntimeError("the released resource does not decrypt to the secret")
            self.checked = True
        elif "ciphertext" not in jwe:
            raise RuntimeError("the resource answer is not a JWE")

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        headers = {"content-type": "application/json"} if body is not None else {}
        if self.cookie:
            headers["cookie"] = self.cookie
        self.http.request(method, path, body=body, headers=headers)
        response = self.http.getresponse()
        data = response.read()
        for header in response.headers.get_all("set-cookie") or ():
            name_value = header.partition(";")[0].strip()
            if name_value.startswith(f"{SESSION_COOKIE}="):
                self.cookie = name_value
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:300]!r}")
        value = json.loads(data)
        if not isinstance(value, dict):
            raise RuntimeError(f"{method} {path}: the answer is not a JSON object")
        return value

    def recover(self) -> None:
        """Start the next handshake on a new connection."""
        self.http.close()

    def close(self) -> None:
        self.http.close()


@dataclass
class _BenchEvidence:
    """Simulator reports with the server-trusted chain (an `EvidenceSource`)."""

    simulator: Simulator
    chain: list[x509.Certificate]
    tee: str = "snp"

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """Trustee-shaped evidence whose REPORT_DATA is `report_data`."""
        report = self.simulator.report(report_data, measurement=_MEASUREMENT)
        return trustee_evidence(report, self.chain)


class _Advancer:
    """One guest advancing its own volume's ledger, generation by generation."""

    def __init__(self, clients: _Clients, index: int) -> None:
        setup = clients.setup
        source = _BenchEvidence(clients.simulator, clients.chain)
        self.client = KbsClient(
            setup.url, source, kbs_key=setup.thumbprint, retries=1, backoff=0.01, timeout=30
        )
        self.client.attest()
        self.volume = _volume(index)
        self.store_id = hashlib.sha256(self.volume.encode()).digest()[:16]
        self.state: tuple[int, bytes] | None = None

    def __call__(self) -> None:
        generation = 1 if self.state is None else self.state[0] + 1
        new = (generation, hashlib.sha256(f"{self.volume}/{generation}".encode()).digest())
        answer = self.client.ledger_advance(self.volume, self.state, new, self.store_id)
        if answer.result != "advanced" or answer.generation != generation:
            raise RuntimeError(f"advance of {self.volume} to {generation}: {answer.result}")
        self.state = new

    def recover(self) -> None:
        """After a failure, take the ledger's word for where this volume is."""
        with contextlib.suppress(Exception):
            answer = self.client.ledger_read(self.volume)
            if answer.generation is not None and answer.root is not None:
                self.state = (answer.generation, answer.root)

    def close(self) -> None:
        self.client.close()
