"""`cvmstore bench cocoonfs` in a tiny configuration: the report's shape, never its speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cvmstore.bench import SUITES, BenchConfig
from cvmstore.bench import cocoonfs as bench_cocoonfs
from cvmstore.bench.cocoonfs import (
    MKFS,
    OPEN_READ,
    OPEN_WRITE,
    PROCESS,
    READ,
    RUST,
    WRITE,
    find_tool,
)
from tests.conftest import require_or_skip

pytestmark = pytest.mark.slow

OPERATIONS = (MKFS, WRITE, READ)


def test_the_suite_is_registered_without_loading_it_at_start() -> None:
    # The suite times `python -m cvmstore` starts, so it must not slow them down itself.
    script = "import sys, cvmstore.cli.main; print('cvmstore.bench.cocoonfs' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr
    assert "cocoonfs" in SUITES


def test_the_cli_reports_every_operation_against_the_rust_tool(tmp_path: Path) -> None:
    tool, looked_in = find_tool()
    require_or_skip(tool is not None, f"the cocoonfs tool (looked in {looked_in})")
    proc = subprocess.run(
        [sys.executable, "-m", "cvmstore", "bench", "cocoonfs", "--json", "--quick",
         "--rounds", "1", "--ops", "1", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads(proc.stdout)
    assert report["suite"] == "cocoonfs"
    figures = {figure["name"]: figure for figure in report["figures"]}
    expected = [f"{op}, {how}" for op in OPERATIONS for how in ("in-process", "per process")]
    assert list(figures) == [*expected, OPEN_WRITE, OPEN_READ]
    for figure in figures.values():
        assert figure["baseline_name"] == RUST
        assert figure["unit"] == "us/op"
        assert figure["value"] > 0
        assert figure["baseline"] > 0
        assert figure["higher_is_better"] is False
    targets = {name: figure["target"] for name, figure in figures.items() if figure["target"]}
    assert targets == {f"{op}, in-process": pytest.approx(1 / 3) for op in OPERATIONS}
    summaries = [note for note in report["notes"] if "cvmstore/Rust" in note]
    assert [note.split(":")[0] for note in summaries] == list(OPERATIONS)
    assert all("target <= 3x" in note and "per process" in note for note in summaries)
    assert not any("not measured" in note for note in report["notes"])
    assert list(tmp_path.iterdir()) == []  # scratch images removed


def test_without_the_rust_tool_the_cvmstore_figures_are_reported_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVMSTORE_COCOONFS", str(tmp_path / "no-such-tool"))
    work = tmp_path / "work"
    work.mkdir()
    config = BenchConfig(quick=True, directory=str(work), rounds=2, ops=2)
    report = bench_cocoonfs.run(config, process_ops=1)
    assert report.suite == "cocoonfs"
    assert any("baseline was skipped" in note for note in report.notes)
    names = [figure.name for figure in report.figures]
    assert names == [f"{op}, in-process" for op in OPERATIONS] + [OPEN_WRITE, OPEN_READ]
    for figure in report.figures:
        # Beside cvmstore's own process instead: no target, the is against Rust.
        assert figure.baseline_name == PROCESS
        assert figure.target is None
        assert figure.value > 0
        assert figure.baseline > 0
    assert not any("cvmstore/Rust" in note for note in report.notes)
    assert list(work.iterdir()) == []


def test_a_command_the_cli_lacks_is_noted_and_its_image_made_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As before the CLI had its write commands: mkfs and write-file refused, read-file there.
    def refused(self: bench_cocoonfs._Process, image: Path) -> None:
        raise bench_cocoonfs._Failed("invalid choice")

    monkeypatch.setenv("CVMSTORE_COCOONFS", str(tmp_path / "no-such-tool"))
    monkeypatch.setattr(bench_cocoonfs._Process, "mkfs", refused)
    monkeypatch.setattr(bench_cocoonfs._Process, "write", refused)
    config = BenchConfig(quick=True, directory=str(tmp_path), rounds=1, ops=1)
    report = bench_cocoonfs.run(config, process_ops=1)
    assert f"{PROCESS}: {MKFS} not measured (invalid choice)" in report.notes
    assert f"{PROCESS}: {WRITE} not measured (invalid choice)" in report.notes
    # Only the read has a cvmstore per-process figure to stand beside.
    assert [figure.name for figure in report.figures] == [f"{READ}, in-process", OPEN_READ]
    assert any(note.startswith(f"{WRITE}: ") and "not measured" in note for note in report.notes)
    assert list(tmp_path.iterdir()) == []
