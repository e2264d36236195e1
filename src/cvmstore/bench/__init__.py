"""Benchmarks behind `cvmstore bench`: every figure beside a baseline from the same run.

Each suite is a module with `run(config) -> Report`; `SUITES` names them for the command line.
"""

from __future__ import annotations

from collections.abc import Callable

from cvmstore.bench import block, fs, igvm, snp, store
from cvmstore.bench._harness import BenchConfig as BenchConfig
from cvmstore.bench._harness import Figure as Figure
from cvmstore.bench._harness import Report as Report

__all__ = ["SUITES", "BenchConfig", "Figure", "Report"]


def _kbs(config: BenchConfig) -> Report:
    # Imported on use: the KBS stack (httpx, Starlette, uvicorn) would slow every `cvmstore`.
    from cvmstore.bench import kbs

    return kbs.run(config)


def _guest(config: BenchConfig) -> Report:
    from cvmstore.bench import guest  # on use, as for `kbs`

    return guest.run(config)


def _cocoonfs(config: BenchConfig) -> Report:
    from cvmstore.bench import cocoonfs  # on use, as for `kbs`

    return cocoonfs.run(config)


#: Suite name -> (one-line description, runner).
SUITES: dict[str, tuple[str, Callable[[BenchConfig], Report]]] = {
    "block": ("FileDevice against bare os.pread/os.pwrite", block.run),
    "store": ("the secure store against raw file I/O with the same fsync cadence", store.run),
    "fs": ("the filesystem against the host filesystem doing the same work", fs.run),
    "snp": ("SEV-SNP report verification against a bare ECDSA P-384 verify", snp.run),
    "igvm": ("the SNP launch digest of an IGVM file against bare SHA-384 per page", igvm.run),
    "kbs": ("KBS handshakes and ledger advances on loopback against crypto and SQLite", _kbs),
    "guest": ("commits anchored in a KBS ledger (strict, batched) against a FileAnchor", _guest),
    "cocoonfs": (
        "CocoonFs mkfs, 16 KiB writes and reads against the Rust cocoonfs tool",
        _cocoonfs,
    ),
}
