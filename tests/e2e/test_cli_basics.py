"""The command line as a user types it: a subprocess, exit codes, output on the right stream."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

EXPECTED_BLOCK_FIGURES = {
    "4 KiB random read",
    "4 KiB random write",
    "4 KiB random read, cold cache",
    "4 KiB random write, fsync/256",
    "1 MiB sequential read",
    "1 MiB sequential write",
}


def cvmstore(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cvmstore", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        check=False,
    )


def test_help_lists_commands_and_exit_codes() -> None:
    proc = cvmstore("--help")
    assert proc.returncode == 0
    for word in ("demo", "bench", "exit status", "IntegrityError", "RollbackError"):
        assert word in proc.stdout


def test_demo_succeeds_and_keeps_files(tmp_path: Path) -> None:
    proc = cvmstore("demo", "--keep", str(tmp_path / "kept"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout
    held = re.search(r"(\d+) of (\d+) expectations held", proc.stdout)
    assert held is not None
    assert held.group(1) == held.group(2)
    # Each attack of the story is detected by its own error.
    for detected in (
        "IntegrityError",
        "RollbackError",
        "ForkError",
        "KbsAuthError",
        "KbsIdentityError",
    ):
        assert f"saw:      {detected}" in proc.stdout, detected
    kept = tmp_path / "kept"
    assert (kept / "kbs" / "kbs.db").is_file()
    assert (kept / "svsm-volume.img").is_file()


def test_bench_block_quick_json_prints_ratios(tmp_path: Path) -> None:
    proc = cvmstore("bench", "block", "--quick", "--json", "--rounds", "1", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads(proc.stdout)
    assert report["suite"] == "block"
    figures = {fig["name"]: fig for fig in report["figures"]}
    assert set(figures) == EXPECTED_BLOCK_FIGURES
    for fig in figures.values():
        assert fig["value"] > 0
        assert fig["baseline"] > 0
        assert fig["ratio"] == round(fig["value"] / fig["baseline"], 4)
    assert list(tmp_path.iterdir()) == []  # scratch images are removed


def test_unknown_bench_suite_is_a_usage_error() -> None:
    proc = cvmstore("bench", "nosuch")
    assert proc.returncode == 2
    assert "unknown suite nosuch" in proc.stderr


def test_no_command_is_a_usage_error() -> None:
    proc = cvmstore()
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
