"""The real Rust `cocoonfs` tool (crate cocoonfs-cli 0.1.3) and images made with it.

The tool is looked up in `CVMSTORE_COCOONFS`, then on PATH, then in
/tmp/cocoonfs-install/bin. The variable is read when this module is imported, because the
suite's autouse fixture removes CVMSTORE_* variables from each test's environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require_or_skip

_FALLBACK = Path("/tmp/cocoonfs-install/bin/cocoonfs")


def _find_tool() -> Path | None:
    configured = os.environ.get("CVMSTORE_COCOONFS")
    if configured:
        return Path(configured)
    on_path = shutil.which("cocoonfs")
    if on_path:
        return Path(on_path)
    return _FALLBACK if _FALLBACK.is_file() else None


TOOL = _find_tool()

KEY = bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdef")

#: Every (hash family, cipher, strength) `cocoonfs mkfs` accepts; SM3 and SM4 exist only at 128.
COMBOS = [
    (h, c, t)
    for h in ("sha2", "sha3", "sm3")
    for c in ("aes", "camellia", "sm4")
    for t in ("128", "192", "256")
    if t == "128" or (h != "sm3" and c != "sm4")
]

#: Geometries: the tool's defaults, and one with every size changed.
GEOMETRIES = {
    "default": [],
    "large": [
        "--allocation-block-size", "256B",
        "--io-block-size", "4K",
        "--auth-tree-data-block-size", "1K",
        "--auth-tree-node-size", "8K",
        "--inode-index-tree-leaf-node-size", "512B",
        "--inode-index-tree-internal-node-size", "256B",
        "--allocation-bitmap-file-block-size", "2K",
    ],
}  # fmt: skip


@dataclass
class Tool:
    """Runs the real `cocoonfs` binary on images in a temporary directory."""

    path: Path
    workdir: Path
    files: dict[int, bytes] = field(default_factory=dict)

    def run(self, image: Path, *args: str, stdin: bytes | None = None) -> bytes:
        result = subprocess.run(
            [str(self.path), "-i", str(image), "-f", *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"cocoonfs {args[0]} failed: {result.stderr.decode()}")
        return result.stdout

    def mkfs(self, image: Path, hash_family: str, cipher: str, strength: str, *extra: str) -> None:
        self.run(
            image, "mkfs", "-K", KEY.hex(), "-H", hash_family, "-C", cipher,
            "-t", strength, "-I", "c0c00f5eed", *extra,
        )  # fmt: skip

    def write_file(self, image: Path, inode: int, data: bytes, flags: int = 0) -> None:
        source = self.workdir / f"in-{inode}"
        source.write_bytes(data)
        self.run(image, "write-file", "-K", KEY.hex(), "-i", str(source), str(inode), str(flags))

    def read_file(self, image: Path, inode: int) -> bytes:
        return self.run(image, "read-file", "-K", KEY.hex(), str(inode))

    def list_files(self, image: Path) -> list[tuple[int, int]]:
        out = self.run(image, "list-files", "-K", KEY.hex()).decode()
        rows = [line.split() for line in out.splitlines() if line.strip()]
        return [(int(n), int(f, 16)) for n, f in rows]


@pytest.fixture(scope="session")
def cocoonfs_tool(tmp_path_factory: pytest.TempPathFactory) -> Tool:
    """The real tool; skipped outside CI when it is not installed, a failure under CI."""
    require_or_skip(TOOL is not None and TOOL.is_file(), "the cocoonfs tool (cocoonfs-cli 0.1.3)")
    assert TOOL is not None
    return Tool(TOOL, tmp_path_factory.mktemp("cocoonfs-tool"))
