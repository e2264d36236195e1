"""A progress bar on stderr for long commands, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from cvmstore._units import format_size

__all__ = ["Progress"]

_WIDTH = 28
_INTERVAL = 0.1  # seconds between redraws


class Progress:
    """`label [#######.......]  45%  12.0 MiB / 27.0 MiB  80.1 MiB/s`, redrawn in place."""

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        unit: str = "B",
    ) -> None:
        self._label = label
        self._unit = unit
        self._total = total
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._drawn = 0.0
        self._done = 0

    def update(self, done: int, total: int | None = None) -> None:
        """Record `done` (bytes, or units); redraw at most ten times a second."""
        self._done = done
        if total is not None:
            self._total = total
        now = time.monotonic()
        if self._enabled and now - self._drawn >= _INTERVAL:
            self._drawn = now
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        human = _human if self._unit == "B" else lambda n: f"{n} {self._unit}"
        rate = f"{human(int(self._done / elapsed))}/s"
        if self._total:
            share = min(self._done / self._total, 1.0)
            filled = int(share * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            text = (
                f"{self._label} [{bar}] {share:4.0%}  "
                f"{human(self._done)} / {human(self._total)}  {rate}"
            )
        else:
            text = f"{self._label} {human(self._done)}  {rate}"
        self._stream.write("\r" + text + " " * 4)
        self._stream.flush()


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return format_size(size) if size else "0 B"
