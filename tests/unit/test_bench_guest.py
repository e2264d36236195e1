"""`cvmstore bench guest` in a tiny configuration: the report's shape, never its speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvmstore.bench import SUITES, BenchConfig
from cvmstore.bench import guest as bench_guest

pytestmark = pytest.mark.slow


def test_a_tiny_run_reports_strict_and_batched_beside_a_file_anchor(
    tmp_path: Path,
) -> None:
    assert "guest" in SUITES
    report = bench_guest.run(BenchConfig(quick=True, directory=str(tmp_path), rounds=1))
    names = [figure.name for figure in report.figures]
    assert names == ["strict commits via KBS", "batched commits via KBS"]
    for figure in report.figures:
        assert figure.value > 0
        assert figure.baseline > 0
        assert figure.baseline_name == "FileAnchor strict"
    assert report.figures[1].target == 0.8
    assert any("p50" in note and "p99" in note for note in report.notes)
    assert any("roll back at most" in note for note in report.notes)
    assert list(tmp_path.iterdir()) == []  # scratch images removed
