"""`cvmstore bench block`: what `FileDevice` adds over bare `os.pread`/`os.pwrite`.

Both sides work on the same image file, with the same block indexes, in the same process,
interleaved round by round. The file is written in full first, so reads hit real data.

Two regimes are reported. With a warm page cache a 4 KiB `pread` takes about 1 us, so the
figure shows the device's own per-call cost undiluted (a Python method call and a bounds
check, about 0.2 us: the floor any Python wrapper pays). With the cache dropped before each
round (`POSIX_FADV_DONTNEED`), and with writes made durable by `fdatasync` every 256 writes
(the store's group commit), the disk is in the loop, as it is for a guest. Target from the
issue: the device adds at most 5 % (ratio >= 0.95).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from cvmstore._types import BlockIndex
from cvmstore.bench._harness import BenchConfig, Figure, Report, interleave, rate
from cvmstore.block.file import FileDevice

__all__ = ["run"]

_BLOCK = 4096
_SEQ = 1 << 20
_TARGET = 0.95
_GROUP = 256  # writes per fdatasync in the durable case: the store's group commit


def run(config: BenchConfig) -> Report:
    """Measure 4 KiB random and 1 MiB sequential reads and writes."""
    size = (64 if config.quick else 256) << 20
    ops = 5_000 if config.quick else 40_000
    report = Report("block", config.quick)
    with tempfile.TemporaryDirectory(dir=config.directory, prefix="cvmstore-bench-") as tmp:
        path = Path(tmp) / "bench.img"
        dev = FileDevice.create(path, size)
        try:
            _fill(dev)
            fd = os.open(path, os.O_RDWR)
            try:
                report.figures.extend(_measure(config, dev, fd, size, ops))
            finally:
                os.close(fd)
        finally:
            dev.close()
    report.notes.append(
        f"{size >> 20} MiB image on {config.directory}, warm page cache, "
        f"{ops} random ops per round, {config.rounds} interleaved rounds, medians"
    )
    return report


def _fill(dev: FileDevice) -> None:
    chunk = os.urandom(_SEQ)
    per = _SEQ // _BLOCK
    for first in range(0, dev.block_count, per):
        dev.write(BlockIndex(first), chunk)
    dev.flush()


def _measure(config: BenchConfig, dev: FileDevice, fd: int, size: int, ops: int) -> list[Figure]:
    rng = random.Random(1)
    blocks = size // _BLOCK
    indexes = [BlockIndex(rng.randrange(blocks)) for _ in range(ops)]
    seq = [BlockIndex(i * (_SEQ // _BLOCK)) for i in range(size // _SEQ)]
    page = os.urandom(_BLOCK)
    big = os.urandom(_SEQ)
    pread, pwrite, read, write, flush = os.pread, os.pwrite, dev.read, dev.write, dev.flush
    cold = ops // 4
    per_seq = _SEQ // _BLOCK

    def dev_rand_read() -> None:
        for i in indexes:
            read(i)

    def raw_rand_read() -> None:
        for i in indexes:
            pread(fd, _BLOCK, i * _BLOCK)

    def dev_rand_write() -> None:
        for i in indexes:
            write(i, page)

    def raw_rand_write() -> None:
        for i in indexes:
            pwrite(fd, page, i * _BLOCK)

    def drop_cache() -> None:
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)

    def dev_cold_read() -> None:
        drop_cache()
        for i in indexes[:cold]:
            read(i)

    def raw_cold_read() -> None:
        drop_cache()
        for i in indexes[:cold]:
            pread(fd, _BLOCK, i * _BLOCK)

    def dev_durable_write() -> None:
        for n, i in enumerate(indexes[:cold], 1):
            write(i, page)
            if n % _GROUP == 0:
                flush()

    def raw_durable_write() -> None:
        for n, i in enumerate(indexes[:cold], 1):
            pwrite(fd, page, i * _BLOCK)
            if n % _GROUP == 0:
                os.fdatasync(fd)

    def dev_seq_read() -> None:
        for i in seq:
            read(i, per_seq)

    def raw_seq_read() -> None:
        for i in seq:
            pread(fd, _SEQ, i * _BLOCK)

    def dev_seq_write() -> None:
        for i in seq:
            write(i, big)

    def raw_seq_write() -> None:
        for i in seq:
            pwrite(fd, big, i * _BLOCK)

    mib = len(seq) * _SEQ / (1 << 20)
    cases = [
        ("4 KiB random read", "ops/s", ops, dev_rand_read, raw_rand_read),
        ("4 KiB random write", "ops/s", ops, dev_rand_write, raw_rand_write),
        ("4 KiB random read, cold cache", "ops/s", cold, dev_cold_read, raw_cold_read),
        (
            f"4 KiB random write, fsync/{_GROUP}",
            "ops/s",
            cold,
            dev_durable_write,
            raw_durable_write,
        ),
        ("1 MiB sequential read", "MiB/s", mib, dev_seq_read, raw_seq_read),
        ("1 MiB sequential write", "MiB/s", mib, dev_seq_write, raw_seq_write),
    ]
    figures = []
    for name, unit, amount, ours, theirs in cases:
        value, baseline = interleave(
            config.rounds,
            lambda ours=ours, amount=amount: rate(int(amount), ours),  # type: ignore[misc]
            lambda theirs=theirs, amount=amount: rate(int(amount), theirs),  # type: ignore[misc]
        )
        figures.append(Figure(name, unit, value, baseline, "os.pread/pwrite", target=_TARGET))
    return figures
