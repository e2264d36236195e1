"""`cvmstore bench igvm`: the SNP launch digest of an IGVM file against bare SHA-384 hashing.

Computing the digest of an IGVM file is dominated by hashing its pages: one SHA-384 per 4 KiB
page. The candidate is what `cvmstore igvm measure` does once the file is in memory:
`parse_igvm` (CRC, every record validated, each page's bytes sliced out) and `measure_snp`
(one SHA-384 per page plus one per 112-byte PAGE_INFO record to chain them). The baseline is
a bare hashlib loop over the same bytes: one SHA-384 per 4 KiB page of the file data, and
nothing else (no PAGE_INFO chaining, no parsing). Both sides run in the same process,
interleaved, on the same buffer. Target from the issue: >= 0.8x the bare loop.

The file is built in memory with `IgvmBuilder`: an SEV-SNP platform and policy, 4096 NORMAL
pages of distinct pseudo-random data (16 MiB; 1024 pages with --quick) and a VMSA last.
Nothing is written to --dir.
"""

from __future__ import annotations

import hashlib
import random
import struct
import time

from cvmstore.bench._harness import BenchConfig, Figure, Report, interleave
from cvmstore.igvm.format import PAGE_SIZE, IgvmBuilder, PlatformType, parse_igvm
from cvmstore.igvm.measure import KVM_VMSA_GPA, measure_snp

__all__ = ["build_sample", "run"]

_TARGET = 0.8
_MIB = 1 << 20


def build_sample(pages: int, seed: int = 1) -> tuple[bytes, int]:
    """An SNP IGVM file with `pages` distinct NORMAL pages and a VMSA; (file, data offset).

    The page contents are distinct, so the builder's deduplication keeps every page, and the
    file data section holds exactly `pages + 1` pages (the VMSA last).
    """
    rng = random.Random(seed)
    builder = IgvmBuilder().platform(PlatformType.SEV_SNP, 1).policy(0x30000, 1)
    for index in range(pages):
        builder.page(0x10_0000 + index * PAGE_SIZE, rng.randbytes(PAGE_SIZE), 1)
    vmsa = bytearray(PAGE_SIZE)
    struct.pack_into("<HHIQ", vmsa, 0x10, 0xF000, 0x9B, 0xFFFF, 0xFFFF_0000)  # cs
    struct.pack_into("<Q", vmsa, 0x158, 0x31)  # cr0
    struct.pack_into("<Q", vmsa, 0x178, 0xFFF0)  # rip
    struct.pack_into("<Q", vmsa, 0x3B0, 0x1)  # sev_features: SNP
    builder.vp_context(KVM_VMSA_GPA, bytes(vmsa), 1)
    data = builder.build()
    start = len(data) - (pages + 1) * PAGE_SIZE
    return data, start


def run(config: BenchConfig) -> Report:
    """Time parse + measure against a bare SHA-384 loop over the same page bytes."""
    report = Report("igvm", config.quick)
    pages = 1024 if config.quick else 4096
    data, start = build_sample(pages)
    view = memoryview(data)
    offsets = range(start, len(data), PAGE_SIZE)
    total = len(offsets) * PAGE_SIZE
    expected = measure_snp(parse_igvm(data)).digest  # warm up; the figure checks it below
    sha384 = hashlib.sha384

    def ours() -> float:
        begin = time.perf_counter()
        result = measure_snp(parse_igvm(data))
        elapsed = time.perf_counter() - begin
        if result.digest != expected:
            raise AssertionError("the digest changed between rounds")
        return total / _MIB / elapsed

    def theirs() -> float:
        begin = time.perf_counter()
        for at in offsets:
            sha384(view[at : at + PAGE_SIZE]).digest()
        return total / _MIB / (time.perf_counter() - begin)

    value, baseline = interleave(config.rounds, ours, theirs)
    report.figures.append(
        Figure(
            f"parse + measure_snp, {total // _MIB} MiB IGVM",
            "MiB/s",
            value,
            baseline,
            "bare SHA-384 per page",
            target=_TARGET,
        )
    )
    report.notes.append(
        f"{pages:,} NORMAL pages of distinct data + 1 VMSA ({len(data):,}-byte file, in "
        f"memory); {config.rounds} interleaved rounds, medians. The baseline hashes each 4 KiB "
        "page once and does nothing else; the candidate also validates every record and "
        f"hashes {pages + 1:,} PAGE_INFO records to chain the digest"
    )
    return report
