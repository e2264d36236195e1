"""Imports point down only: the layering of docs/architecture.md, checked on the AST."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cvmstore"

#: Shared leaf modules every layer may use.
LEAVES = {"errors", "_types", "_units", "_binary"}

#: Layer -> the layers it may import (besides LEAVES and itself). Keep docs/architecture.md
#: in step with this table.
ALLOWED: dict[str, set[str]] = {
    "block": set(),
    "crypto": set(),
    "integrity": {"block", "crypto"},
    "fs": {"block", "crypto", "integrity"},
    "attest": set(),
    "igvm": set(),
    "kbs": {"attest", "crypto", "integrity"},
    "guest": {"attest", "kbs", "block", "crypto", "integrity", "fs"},
    "cocoonfs": {"block", "crypto", "integrity"},
    "testing": {"block", "crypto", "integrity", "fs"},
    "bench": {"*"},
    "demo": {"*"},
    "cli": {"*"},
    "__main__": {"*"},
    "__init__": {"*"},  # the top-level recipe API re-exports from the layers
}


def layer_of(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def imported_layers(path: Path) -> set[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.level:
            raise AssertionError(f"{path}:{node.lineno}: use absolute imports")
        elif node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "cvmstore" and len(parts) > 1:
                found.add((parts[1], node.lineno))
            elif parts == ["cvmstore"]:
                found.add(("__init__", node.lineno))
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        layer = layer_of(path)
        if layer in LEAVES:
            allowed: set[str] = set(LEAVES)
        else:
            assert layer in ALLOWED, f"{path}: layer {layer!r} is missing from the table"
            allowed = ALLOWED[layer] | LEAVES | {layer}
        for target, line in imported_layers(path):
            if "*" not in allowed and target not in allowed:
                problems.append(f"{path.relative_to(SRC)}:{line}: {layer} imports {target}")
    return problems


def test_imports_follow_the_layering() -> None:
    assert violations() == []


def test_the_check_catches_an_upward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "cvmstore"
    (fake / "block").mkdir(parents=True)
    (fake / "block" / "bad.py").write_text("from cvmstore.fs import thing\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["SRC"]), "SRC", fake)
    assert violations() == ["block/bad.py:1: block imports fs"]


def test_every_layer_is_documented() -> None:
    text = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    for layer in ALLOWED:
        assert f"`{layer}`" in text, f"docs/architecture.md does not describe `{layer}`"
