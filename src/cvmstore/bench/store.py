"""`cvmstore bench store`: the secure store against raw file I/O with the same fsync cadence.

Both sides use a real image file on the chosen directory, in the same run, interleaved round by
round. The store runs in strict mode against an in-memory anchor, so the figures are those of
the store itself (encryption, tree, copy-on-write, two flushes per commit); what a remote
anchor adds is measured by `bench guest`. One extra figure shows a `FileAnchor` (its own
fsyncs) for single-block commits.

Workloads (issue targets in brackets):
- sequential write, a commit every 4 MiB [>= 0.7x raw pwrites + fdatasync every 4 MiB], once
  through the per-block API against 4 KiB pwrites, once through `write_blocks` in 1 MiB calls
  against 1 MiB pwrites
- random 4 KiB writes, 256 per commit [>= 1.0x raw in-place pwrites + fdatasync per 256]
- durable single-block commits [>= 0.5x raw pwrite + fdatasync]
- sequential read with verification [>= 0.7x raw preads], per block and in 1 MiB calls
- open of a 1 GiB and a 64 GiB store [<= 20 ms], beside opening the file and reading 2 blocks
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cvmstore._types import BlockIndex
from cvmstore.bench._harness import BenchConfig, Figure, Report, interleave, rate
from cvmstore.block.file import FileDevice
from cvmstore.integrity import FileAnchor, MemoryAnchor, SecureStore, format_store, open_store

__all__ = ["run"]

_BS = 4096
_MIB = 1 << 20
_KEY = bytes(range(32))


def run(config: BenchConfig) -> Report:
    """Measure every store workload against its raw baseline."""
    report = Report("store", config.quick)
    size = (64 if config.quick else 256) << 20
    with tempfile.TemporaryDirectory(dir=config.directory, prefix="cvmstore-bench-") as tmp:
        work = Path(tmp)
        # The store's image is larger than the data by its metadata and spare (about 6 %).
        store_dev = FileDevice.create(work / "store.img", size + size // 8)
        raw_dev = FileDevice.create(work / "raw.img", size + size // 8)
        store = format_store(store_dev, _KEY, MemoryAnchor())
        raw = os.open(work / "raw.img", os.O_RDWR)
        try:
            report.figures.extend(_throughput(config, store, raw, size, work))
        finally:
            store.close()
            store_dev.close()
            raw_dev.close()
            os.close(raw)
        report.figures.extend(_open_times(config, work))
    report.notes.append(
        f"{size >> 20} MiB of data per sequential pass, strict mode, in-memory anchor, "
        f"{config.rounds} interleaved rounds, medians; files on {config.directory}"
    )
    return report


def _throughput(
    config: BenchConfig, store: SecureStore, raw: int, size: int, work: Path
) -> list[Figure]:
    blocks = size // _BS
    per_commit_seq = (4 << 20) // _BS
    page = os.urandom(_BS)
    rng = random.Random(3)
    random_ops = 2048 if config.quick else 8192
    targets = [rng.randrange(blocks) for _ in range(random_ops)]
    singles = 200 if config.quick else 1000
    pwrite, pread, fdatasync = os.pwrite, os.pread, os.fdatasync
    write, read, commit = store.write, store.read, store.commit

    def store_seq_write() -> None:
        for i in range(blocks):
            write(i, page)
            if (i + 1) % per_commit_seq == 0:
                commit()
        commit()

    def raw_seq_write() -> None:
        for i in range(blocks):
            pwrite(raw, page, i * _BS)
            if (i + 1) % per_commit_seq == 0:
                fdatasync(raw)
        fdatasync(raw)

    chunk = page * (_MIB // _BS)
    per = _MIB // _BS

    def store_seq_write_bulk() -> None:
        for n, i in enumerate(range(0, blocks, per), 1):
            store.write_blocks(i, chunk)
            if n % 4 == 0:
                commit()
        commit()

    def raw_seq_write_bulk() -> None:
        for n, i in enumerate(range(0, blocks, per), 1):
            pwrite(raw, chunk, i * _BS)
            if n % 4 == 0:
                fdatasync(raw)
        fdatasync(raw)

    def store_seq_read_bulk() -> None:
        for i in range(0, blocks, per):
            store.read_blocks(i, per)

    def raw_seq_read_bulk() -> None:
        for i in range(0, blocks, per):
            pread(raw, _MIB, i * _BS)

    def store_rand_write() -> None:
        for n, i in enumerate(targets, 1):
            write(i, page)
            if n % 256 == 0:
                commit()
        commit()

    def raw_rand_write() -> None:
        for n, i in enumerate(targets, 1):
            pwrite(raw, page, i * _BS)
            if n % 256 == 0:
                fdatasync(raw)
        fdatasync(raw)

    def store_single() -> None:
        for i in range(singles):
            write(targets[i], page)
            commit()

    def raw_single() -> None:
        for i in range(singles):
            pwrite(raw, page, targets[i] * _BS)
            fdatasync(raw)

    def store_seq_read() -> None:
        for i in range(blocks):
            read(i)

    def raw_seq_read() -> None:
        for i in range(blocks):
            pread(raw, _BS, i * _BS)

    mib = size / (1 << 20)
    cases: list[tuple[str, str, float, Callable[[], None], Callable[[], None], float]] = [
        ("sequential write, commit per 4 MiB", "MiB/s", mib, store_seq_write, raw_seq_write, 0.7),
        (
            "sequential write 1 MiB calls, commit per 4 MiB",
            "MiB/s",
            mib,
            store_seq_write_bulk,
            raw_seq_write_bulk,
            0.7,
        ),
        (
            "random 4 KiB write, 256 per commit",
            "ops/s",
            random_ops,
            store_rand_write,
            raw_rand_write,
            1.0,
        ),
        ("durable single-block commits", "ops/s", singles, store_single, raw_single, 0.5),
        ("sequential read, verified", "MiB/s", mib, store_seq_read, raw_seq_read, 0.7),
        (
            "sequential read 1 MiB calls, verified",
            "MiB/s",
            mib,
            store_seq_read_bulk,
            raw_seq_read_bulk,
            0.7,
        ),
    ]
    figures = []
    for name, unit, amount, ours, theirs, target in cases:
        value, baseline = interleave(
            config.rounds,
            lambda ours=ours, amount=amount: rate(amount, ours),  # type: ignore[misc]
            lambda theirs=theirs, amount=amount: rate(amount, theirs),  # type: ignore[misc]
        )
        baseline_name = (
            "raw pwrite+fdatasync" if "write" in name or "commit" in name else ("raw pread")
        )
        figures.append(Figure(name, unit, value, baseline, baseline_name, target=target))
    figures.append(_file_anchor_commits(config, work, singles, targets, page, raw))
    return figures


def _file_anchor_commits(
    config: BenchConfig, work: Path, singles: int, targets: list[int], page: bytes, raw: int
) -> Figure:
    dev = FileDevice.create(work / "anchored.img", 64 << 20)
    store = format_store(dev, _KEY, FileAnchor(work / "anchor.json"))
    count = min(singles, store.block_count)

    def ours() -> None:
        for i in range(count):
            store.write(targets[i] % store.block_count, page)
            store.commit()

    def theirs() -> None:
        for i in range(count):
            os.pwrite(raw, page, targets[i] * _BS)
            os.fdatasync(raw)

    try:
        value, baseline = interleave(
            config.rounds, lambda: rate(count, ours), lambda: rate(count, theirs)
        )
    finally:
        store.close()
        dev.close()
    return Figure(
        "durable single-block commits, FileAnchor",
        "ops/s",
        value,
        baseline,
        "raw pwrite+fdatasync",
    )


def _open_times(config: BenchConfig, work: Path) -> list[Figure]:
    figures = []
    for label, size in (("1 GiB", 1 << 30), ("64 GiB", 64 << 30)):
        path = work / f"open-{label.replace(' ', '')}.img"
        anchor = MemoryAnchor()
        with FileDevice.create(path, size) as dev:
            store = format_store(dev, _KEY, anchor)
            store.write(store.block_count - 1, bytes(_BS))
            store.commit()
            store.close()

        def open_store_once(path: Path = path, anchor: MemoryAnchor = anchor) -> float:
            start = time.perf_counter()
            with FileDevice.open(path) as dev:
                open_store(dev, _KEY, anchor).close()
            return (time.perf_counter() - start) * 1000

        def open_file_once(path: Path = path) -> float:
            start = time.perf_counter()
            with FileDevice.open(path) as dev:
                dev.read(BlockIndex(0), 2)
            return (time.perf_counter() - start) * 1000

        value, baseline = interleave(max(config.rounds, 5), open_store_once, open_file_once)
        figures.append(
            Figure(
                f"open a {label} store",
                "ms",
                value,
                baseline,
                "open + read 2 blocks",
                higher_is_better=False,
            )
        )
        path.unlink()
    return figures
