"""`cvmstore demo`: the whole story on embedded defaults, with every expectation checked.

Each step does something for real, says what happened and what was expected, and the demo
exits 0 only if every expectation held. It grows with the project: today it shows the block
layer and the hostile host that the layers above must defeat.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cvmstore._types import BlockIndex
from cvmstore._units import format_size
from cvmstore.block import FileDevice, ImageProfile, MemoryDevice
from cvmstore.errors import DeviceError
from cvmstore.testing import CrashDevice, exhaustive_state_count, flip_bit

__all__ = ["DemoResult", "run_demo"]

#: Where Debian's `ovmf` package puts the 4 MiB firmware code image.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")


@dataclass(slots=True)
class DemoResult:
    """What the demo saw: one line per step, and whether every expectation held."""

    steps: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every step met its expectation."""
        return all(ok for _, ok, _ in self.steps)


class _Narrator:
    def __init__(self, out: TextIO, result: DemoResult) -> None:
        self.out = out
        self.result = result

    def step(self, title: str, expected: str, check: Callable[[], tuple[bool, str]]) -> None:
        number = len(self.result.steps) + 1
        print(f"\n[{number}] {title}", file=self.out)
        print(f"    expected: {expected}", file=self.out)
        try:
            ok, seen = check()
        except Exception as exc:  # a demo step must report, not crash the story
            ok, seen = False, f"unexpected {type(exc).__name__}: {exc}"
        print(f"    saw:      {seen}", file=self.out)
        print(f"    {'OK' if ok else 'FAILED'}", file=self.out)
        self.result.steps.append((title, ok, seen))


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    tmp = Path(tempfile.mkdtemp(prefix="cvmstore-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_demo(out: TextIO, keep: Path | None = None) -> DemoResult:
    """Play every step, printing an account to `out`; keep the files in `keep` if given."""
    result = DemoResult()
    say = _Narrator(out, result)
    with _workdir(keep) as work:
        print(f"cvmstore demo: working in {work}", file=out)
        _block_layer(say, work)
    passed = sum(ok for _, ok, _ in result.steps)
    print(f"\n{passed} of {len(result.steps)} expectations held.", file=out)
    return result


def _block_layer(say: _Narrator, work: Path) -> None:
    image = work / "svsm-state.img"
    code = OVMF_CODE if OVMF_CODE.is_file() else None
    beside = f"beside {code}" if code else "(no OVMF code file here; 8 MiB q35 limit alone)"

    big = (5 << 20) if code else (8 << 20) + 4096

    def too_big() -> tuple[bool, str]:
        try:
            FileDevice.create(
                work / "too-big.img", big, profile=ImageProfile.PFLASH, firmware_code=code
            )
        except DeviceError as exc:
            return not (work / "too-big.img").exists(), f"refused: {exc}"
        return False, "created an image QEMU would refuse"

    say.step(
        f"A {format_size(big)} pflash state image {beside}",
        "refused before QEMU would refuse it, and no file left behind",
        too_big,
    )

    def make_image() -> tuple[bool, str]:
        size = 256 << 10
        with FileDevice.create(image, size, profile=ImageProfile.PFLASH, firmware_code=code) as dev:
            dev.write(BlockIndex(0), b"vTPM NV state v1".ljust(dev.block_size, b"\0"))
            dev.flush()
        with FileDevice.open(image, profile=ImageProfile.PFLASH) as dev:
            back = dev.read(BlockIndex(0))[:16]
        return back == b"vTPM NV state v1", (
            f"made {format_size(size)} {image.name}, wrote and flushed block 0, read back {back!r}"
        )

    say.step("Make a pflash image and write the vTPM state", "the data reads back", make_image)

    def crash_states() -> tuple[bool, str]:
        crash = CrashDevice(MemoryDevice(8))
        for block in range(3):
            crash.write(BlockIndex(block), bytes([block + 1]) * crash.block_size)
        points = list(crash.crash_points())
        states = sum(1 for _ in points[-1].states())
        want = exhaustive_state_count(3, crash.block_size // 512)
        return states == want, (
            f"{len(points)} crash points; 3 unflushed writes give {states} crash states "
            f"(2**3 subsets + 3 x 7 torn writes = {want})"
        )

    say.step("Enumerate what a crash can leave", "every subset and every torn write", crash_states)

    def tamper() -> tuple[bool, str]:
        with FileDevice.open(image) as dev:
            flip_bit(dev, 0, 3)
            back = dev.read(BlockIndex(0))[:16]
        changed = back != b"vTPM NV state v1"
        return changed, (
            f"the raw image now reads {back!r}: the block layer returns whatever the host "
            f"wrote, which is why every layer above it verifies"
        )

    say.step("The host flips one bit of the image", "the raw block layer is fooled", tamper)
