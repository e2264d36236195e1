"""`cvmstore bench guest`: anchored commits through a real KBS on loopback.

A guest commits to its secure store and anchors each commit in the KBS ledger (strict mode),
or every K commits / T seconds (batched mode). The workload: rewrite one 4 KiB block and
commit, N times, on a file image in `--dir`. The KBS runs as its own process (SQLite in a
temporary directory), the guest is already attested (its boot is not part of the figure).

Figures, each beside a baseline measured in the same run, interleaved:
- strict mode through the KBS, commits/s with p50/p99, against the same workload anchored in
  a local `FileAnchor` (strict: one crash-safe file replace per commit). Target from the
  issue: >= 300 commits/s (absolute; the ratio is reported too).
- batched mode through the KBS, against the same `FileAnchor` workload; target >= 0.8x. Its
  rollback window (how many commits, how long a host could roll back) is in the notes.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cvmstore.attest.simulator import Simulator
from cvmstore.bench._harness import BenchConfig, Figure, Report, interleave
from cvmstore.bench.kbs import _MEASUREMENT, _provision, _Server, _volume
from cvmstore.block import FileDevice
from cvmstore.integrity import Anchor, AnchorPolicy, FileAnchor, SecureStore, StoreState
from cvmstore.kbs.anchor import KbsAnchor
from cvmstore.kbs.client import KbsClient
from cvmstore.kbs.evidence_source import SimulatorEvidence

__all__ = ["run"]

_STRICT_TARGET = 300.0  # commits per second, absolute
_BATCHED_TARGET = 0.8  # x the FileAnchor workload
_BATCH = AnchorPolicy(every_commits=32, every_seconds=0.5)
_IMAGE_BYTES = 8 << 20


def run(config: BenchConfig) -> Report:
    """Measure strict and batched anchoring through a KBS against a local FileAnchor."""
    report = Report("guest", config.quick)
    commits = 200 if config.quick else 1000
    simulator = Simulator(key_size=2048)
    with tempfile.TemporaryDirectory(prefix="cvmstore-bench-guest-") as tmp:
        work = Path(tmp)
        kbs = _provision(work, simulator, workers=1, volumes=2 * config.rounds + 2)
        with (
            _Server(kbs.config_file, kbs.url, work / "kbs.log"),
            tempfile.TemporaryDirectory(prefix="cvmstore-bench-guest-", dir=config.directory) as d,
        ):
            images = Path(d)
            volumes = iter(range(2 * config.rounds + 2))
            evidence = SimulatorEvidence(simulator, {"measurement": _MEASUREMENT})
            client = KbsClient(kbs.url, evidence, kbs_key=kbs.signer.thumbprint)
            client.attest()
            latencies: list[float] = []

            def through_kbs(
                policy: AnchorPolicy, record: list[float] | None
            ) -> Callable[[], float]:
                def once() -> float:
                    anchor = KbsAnchor(client, _volume(next(volumes)))
                    return _commits(images, anchor, policy, commits, record)

                return once

            def through_file() -> float:
                anchor = FileAnchor(images / f"anchor-{time.monotonic_ns()}.json")
                return _commits(images, anchor, AnchorPolicy(), commits, None)

            strict, local = interleave(
                config.rounds, through_kbs(AnchorPolicy(), latencies), through_file
            )
            batched, local_b = interleave(config.rounds, through_kbs(_BATCH, None), through_file)
            client.close()
    report.figures.append(
        Figure("strict commits via KBS", "commit/s", strict, local, "FileAnchor strict")
    )
    report.figures.append(
        Figure(
            "batched commits via KBS",
            "commit/s",
            batched,
            local_b,
            "FileAnchor strict",
            target=_BATCHED_TARGET,
        )
    )
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    verdict = "met" if strict >= _STRICT_TARGET else "MISSED"
    report.notes.append(
        f"strict mode: {strict:,.0f} commits/s, p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"
        f" per commit (store commit + ledger compare-and-swap); target >= {_STRICT_TARGET:.0f}/s:"
        f" {verdict}"
    )
    report.notes.append(
        f"batched mode anchors every {_BATCH.every_commits} commits or {_BATCH.every_seconds} s:"
        f" a host can roll back at most the {_BATCH.every_commits - 1} commits (or"
        f" {_BATCH.every_seconds} s) not yet anchored; close() anchors them"
    )
    report.notes.append(
        f"{commits} commits of one rewritten 4 KiB block per round, {config.rounds} rounds; the"
        " KBS is a separate process (uvicorn, SQLite WAL synchronous=FULL); images in"
        f" {config.directory}"
    )
    return report


def _commits(
    directory: Path, anchor: Anchor, policy: AnchorPolicy, commits: int, record: list[float] | None
) -> float:
    """Format a store anchored in `anchor`, then commit `commits` one-block rewrites: commits/s."""
    path = directory / f"image-{time.monotonic_ns()}.img"
    block = os.urandom(4096)
    with FileDevice.create(path, _IMAGE_BYTES) as device:
        store = SecureStore.format(device, os.urandom(32), anchor, policy=policy)
        try:
            start = time.perf_counter()
            for _ in range(commits):
                began = time.perf_counter()
                store.write(0, block)
                store.commit()
                if record is not None:
                    record.append(time.perf_counter() - began)
            store.close()  # batched: the last anchor advance is part of the work
            elapsed = time.perf_counter() - start
        finally:
            if store.state is StoreState.OPEN:
                store.close()
    path.unlink()
    return commits / elapsed


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
