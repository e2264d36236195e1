"""What every benchmark shares: timing, figures reported as ratios to a same-run baseline.

A figure is never a bare number: each one is measured beside a baseline that does the same
work without cvmstore, in the same run, on the same file, and interleaved with it (A, B, A,
B, ...) so that a noisy neighbour slows both alike. The reported value of each side is its
median over the rounds; the ratio is candidate / baseline for rates (higher is better) and
baseline / candidate for times.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

__all__ = ["BenchConfig", "Figure", "Report", "interleave"]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Settings shared by every benchmark."""

    quick: bool
    directory: str
    rounds: int = 5
    ops: int | None = None  # operations per run, for suites that take a count (`--ops`)


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured result beside its baseline."""

    name: str
    unit: str
    value: float
    baseline: float
    baseline_name: str
    higher_is_better: bool = True
    target: float | None = None  # the ratio the issue asks for, if any

    @property
    def ratio(self) -> float:
        """Candidate relative to the baseline; above 1 means better than the baseline."""
        if self.higher_is_better:
            return self.value / self.baseline if self.baseline else 0.0
        return self.baseline / self.value if self.value else 0.0

    @property
    def met(self) -> bool | None:
        """Whether the ratio reaches the target (None when there is no target)."""
        return None if self.target is None else self.ratio >= self.target


@dataclass(slots=True)
class Report:
    """All figures of one `cvmstore bench` run, with the facts needed to reproduce it."""

    suite: str
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The report as JSON: machine, command settings, and each figure with its ratio."""
        return json.dumps(
            {
                "suite": self.suite,
                "quick": self.quick,
                "machine": _machine(),
                "figures": [
                    {**asdict(fig), "ratio": round(fig.ratio, 4), "met": fig.met}
                    for fig in self.figures
                ],
                "notes": self.notes,
            },
            indent=2,
        )

    def to_text(self) -> str:
        """The report as an aligned table."""
        lines = [f"cvmstore bench {self.suite}{' (quick)' if self.quick else ''}: {_machine()}"]
        width = max((len(fig.name) for fig in self.figures), default=10)
        for fig in self.figures:
            target = "" if fig.target is None else f"  target >= {fig.target:.2f}x"
            verdict = {True: "  ok", False: "  MISSED", None: ""}[fig.met]
            lines.append(
                f"  {fig.name:<{width}}  {fig.value:>12,.1f} {fig.unit:<8}"
                f" vs {fig.baseline_name} {fig.baseline:>12,.1f}"
                f"  = {fig.ratio:5.2f}x{target}{verdict}"
            )
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def _machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cpu, Python {sys.version.split()[0]}, "
        f"{platform.system()} {platform.release()}"
    )


def interleave(
    rounds: int,
    candidate: Callable[[], float],
    baseline: Callable[[], float],
) -> tuple[float, float]:
    """Run both sides alternately for `rounds` rounds; return the median of each.

    Each callable does its work once and returns its own measured figure (a rate or a time),
    so setup outside its timed part is not counted.
    """
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(rounds):
        # Alternate who goes first, so a warming cache favours neither side.
        if i % 2:
            theirs.append(baseline())
            ours.append(candidate())
        else:
            ours.append(candidate())
            theirs.append(baseline())
    return statistics.median(ours), statistics.median(theirs)


def rate(operations: float, work: Callable[[], object]) -> float:
    """Run `work` once and return operations per second."""
    start = time.perf_counter()
    work()
    return operations / (time.perf_counter() - start)
