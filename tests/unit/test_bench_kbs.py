"""`cvmstore bench kbs` in a tiny configuration: the report's shape, never its speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cvmstore.bench import SUITES, BenchConfig
from cvmstore.bench import kbs as bench_kbs

pytestmark = pytest.mark.slow


def expected_names(handshake: tuple[int, ...], ledger: tuple[int, ...]) -> list[str]:
    def at(clients: int) -> str:
        return f"{clients} client{'s' if clients > 1 else ''}"

    names = []
    for clients in handshake:
        names += [
            f"handshakes, {at(clients)}",
            f"handshake p50, {at(clients)}",
            f"handshake p99, {at(clients)}",
            f"server CPU per handshake, {at(clients)}",
        ]
    for clients in ledger:
        names += [
            f"ledger advances, {at(clients)}",
            f"ledger p50, {at(clients)}",
            f"ledger p99, {at(clients)}",
        ]
        if clients == 16:
            names += [f"ledger advances, {at(clients)}, against 1,000/s"]
            names += [f"ledger p99, {at(clients)}, against 20 ms"]
    return names


def test_the_suite_is_registered_without_loading_the_kbs_stack() -> None:
    script = "import sys, cvmstore.cli.main; print('cvmstore.bench.kbs' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr
    assert "kbs" in SUITES


def test_a_tiny_run_reports_every_figure_with_positive_numbers(tmp_path: Path) -> None:
    config = BenchConfig(quick=True, directory=str(tmp_path), rounds=1)
    report = bench_kbs.run(
        config,
        seconds=0.2,
        handshake_clients=(1, 2),
        ledger_clients=(16, 1),
        processes=2,
    )
    assert report.suite == "kbs"
    assert [fig.name for fig in report.figures] == expected_names((1, 2), (16, 1))
    for fig in report.figures:
        assert fig.value > 0, fig
        assert fig.baseline > 0, fig
        assert fig.ratio > 0, fig
    targets = {fig.name: fig.target for fig in report.figures if fig.target is not None}
    assert targets == {
        "handshakes, 1 client": 0.5,
        "handshakes, 2 clients": 0.5,
        "ledger advances, 16 clients, against 1,000/s": 1.0,
        "ledger p99, 16 clients, against 20 ms": 1.0,
    }
    latencies = {fig.name: fig for fig in report.figures if fig.unit == "ms"}
    assert all(not fig.higher_is_better for fig in latencies.values())
    assert report.notes
    document = json.loads(report.to_json())
    assert len(document["figures"]) == len(report.figures)
    assert "handshakes, 2 clients" in report.to_text()
    assert list(tmp_path.iterdir()) == []  # the KBS's data and the bare database are gone
