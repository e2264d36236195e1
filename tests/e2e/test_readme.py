"""The README's examples run as written (keeps the documentation true)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cvmstore.kbs.server import free_loopback_port
from tests.conftest import require_or_skip

README = Path(__file__).resolve().parents[2] / "README.md"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
# What each Python example prints, in order.
EXPECTED_OUTPUT = ["vTPM NV state", "['db', 'dbx'] 16384"]


def test_python_examples_run(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) == len(EXPECTED_OUTPUT), "update EXPECTED_OUTPUT with the README"
    for code, expected in zip(blocks, EXPECTED_OUTPUT, strict=True):
        if "/usr/share/OVMF/" in code:
            require_or_skip(OVMF_CODE.exists(), "Debian's OVMF code file (the example uses it)")
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert expected in proc.stdout


def _tour(heading: str = "## A short tour") -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the tour has no shell block"
    return match.group(1)


def _as_checked_script(block: str) -> str:
    """Every line must succeed, except those marked `# exits N`, which must exit N."""
    lines = ["set -u"]
    for number, line in enumerate(block.splitlines(), 1):
        command = line.split("  #", 1)[0].strip()
        if not command or command.startswith("#"):
            continue
        expected = re.search(r"# exits (\d+)", line)
        code = int(expected.group(1)) if expected else 0
        lines.append(
            f"{command}\nrc=$?; if [ $rc -ne {code} ]; then "
            f"echo 'tour line {number}: exit '$rc', expected {code}' >&2; exit 99; fi"
        )
    return "\n".join(lines) + "\n"


def test_shell_tour_runs_as_written(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "cvmstore").exists():
        pytest.fail(f"no cvmstore console script beside {sys.executable}")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    script = _as_checked_script(_tour())
    assert script.count("expected 7") == 2, "the tour shows the tamper caught twice"
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "/vtpm/nv" in proc.stdout
    assert "clean" in proc.stdout
    assert "IntegrityError" not in proc.stderr  # one clear line, not a class name dump
    assert "data block fails authentication" in proc.stderr


def test_key_broker_tour_runs_as_written(tmp_path: Path) -> None:
    """The KBS section: serve, provision, a guest's mkfs and put, a restored copy refused."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    env = {k: v for k, v in env.items() if not k.startswith("CVMSTORE_")}
    port = free_loopback_port()  # the README's 8080 may be taken on a shared machine
    block = _tour("## A key broker, a volume, and a guest")
    assert "127.0.0.1:8080" in block
    script = _as_checked_script(block.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    assert "expected 8" in script, "the tour shows the restored copy refused"
    proc = subprocess.run(
        ["bash", "-c", f"{script}\nwait"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout + (tmp_path / "kbs.log").read_text()
    assert "volume vtpm created" in proc.stdout
    assert "older copy of the image was restored" in proc.stderr
    assert "advanced" in proc.stdout  # the audit log
    assert (tmp_path / "kbs-data" / "admin.token").stat().st_mode & 0o777 == 0o600


def test_svsm_state_section_runs(tmp_path: Path) -> None:
    """The CocoonFs section's first block, as written (a restored copy exits 8)."""
    script = _as_checked_script(_tour("## An SVSM state image (CocoonFs)"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVMSTORE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "4294967297 0x01" in proc.stdout
