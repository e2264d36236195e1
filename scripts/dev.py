#!/usr/bin/env python3
"""Set up a virtual environment from the hashed locks and run the demo or every check.

    python3 scripts/dev.py demo [ARGS...]   # runtime lock, then `cvmstore demo ARGS...`
    python3 scripts/dev.py check [PYTEST_ARGS...]  # dev lock, then format, lint, types, tests
    python3 scripts/dev.py bench [ARGS...]  # runtime lock, then `cvmstore bench ARGS...`

It needs only Python 3.11+ and the package registry. The environment lives in `.venv`
(override with CVMSTORE_VENV) and is reinstalled only when a lock file or pyproject.toml
changes, so repeated runs start at once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("CVMSTORE_VENV", ROOT / ".venv"))
BIN = VENV / "bin"


def _fingerprint(lock: Path) -> str:
    digest = hashlib.sha256()
    for path in (lock, ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run(*argv: str | Path) -> int:
    return subprocess.call([str(a) for a in argv], cwd=ROOT)


def ensure_env(lock_name: str) -> None:
    """Create .venv and install the lock (hash-checked) plus cvmstore, if not already done."""
    lock = ROOT / "requirements" / lock_name
    stamp = VENV / f".installed-{lock_name}"
    wanted = _fingerprint(lock)
    if stamp.is_file() and stamp.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"dev: creating {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"dev: installing requirements/{lock_name} (hash-checked)", file=sys.stderr)
    pip = [BIN / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
    steps = [
        [*pip, "install", "--require-hashes", "--only-binary", ":all:", "-r", lock],
        [*pip, "install", "--no-deps", "--no-build-isolation", "-e", ROOT],
    ]
    for step in steps:
        if _run(*step) != 0:
            sys.exit("dev: installation failed (see pip's message above)")
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.write_text(wanted)


def check(pytest_args: list[str]) -> int:
    """Run every check in the order a reviewer would: format, lint, types, tests."""
    ensure_env("dev.txt")
    steps: list[tuple[str, list[str | Path]]] = [
        ("ruff format", [BIN / "ruff", "format", "--check", "."]),
        ("ruff check", [BIN / "ruff", "check", "."]),
        ("mypy --strict", [BIN / "mypy"]),
        ("pytest", [BIN / "python", "-m", "pytest", *pytest_args]),
    ]
    for name, argv in steps:
        print(f"dev: == {name} ==", file=sys.stderr, flush=True)
        code = _run(*argv)
        # pytest exits 5 when it collected nothing: a broken suite, never a pass.
        if code != 0:
            print(f"dev: {name} failed (exit {code})", file=sys.stderr)
            return code
    print("dev: every check passed", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "check", "bench"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "check":
        return check(rest)
    ensure_env("runtime.txt" if not (VENV / ".installed-dev.txt").exists() else "dev.txt")
    return _run(BIN / "cvmstore", command, *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
