"""The README's Python example runs as written (keeps the documentation true)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_python_examples_run(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "the README has no Python example"
    for code in blocks:
        if "/usr/share/OVMF/" in code and not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
            pytest.skip("the example uses Debian's OVMF code file")
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "vTPM NV state" in proc.stdout
