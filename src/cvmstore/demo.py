"""`cvmstore demo`: the whole story on embedded defaults, with every expectation checked.

Each step does something for real, says what happened and what was expected, and the demo
exits 0 only if every expectation held. It grows with the project: today it shows the block
layer, the secure store on a pflash image with a file anchor, and the hostile host's attacks
(a flipped bit, a restored older image, a clone, a wrong key) each detected.
"""

from __future__ import annotations

import os
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
from cvmstore.errors import (
    CvmstoreError,
    DeviceError,
    ForkError,
    IntegrityError,
    RollbackError,
    WrongKeyError,
)
from cvmstore.integrity import FileAnchor, format_store, open_store
from cvmstore.testing import CrashDevice, clone_file, exhaustive_state_count, flip_bit

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

    _secure_store(say, work, code)


def _expect_error(kind: type[CvmstoreError], action: Callable[[], object]) -> tuple[bool, str]:
    try:
        action()
    except kind as exc:
        return True, f"{type(exc).__name__}: {exc}"
    except CvmstoreError as exc:
        return False, f"wrong error {type(exc).__name__}: {exc}"
    return False, "nothing was detected"


def _secure_store(say: _Narrator, work: Path, code: Path | None) -> None:
    image = work / "svsm-store.img"
    anchor = FileAnchor(work / "anchor.json")
    key = os.urandom(32)
    nv = b"vTPM NV state, boot 1".ljust(4096, b"\0")
    dbx_old = b"dbx: 12 revoked hashes".ljust(4096, b"\0")
    dbx_new = b"dbx: 13 revoked hashes (bootkit revoked)".ljust(4096, b"\0")
    snapshots: dict[str, bytes] = {}

    def first_boot() -> tuple[bool, str]:
        size = 512 << 10
        with FileDevice.create(image, size, profile=ImageProfile.PFLASH, firmware_code=code) as dev:
            store = format_store(dev, key, anchor)
            store.write(0, nv)
            store.write(1, dbx_old)
            generation = store.commit()
            store.close()
        snapshots["before dbx update"] = image.read_bytes()
        raw = image.read_bytes()
        leaked = b"vTPM NV state" in raw or b"revoked" in raw
        return not leaked, (
            f"formatted a {format_size(size)} store, committed generation {generation}; "
            f"plaintext in the image file: {'YES' if leaked else 'none'}"
        )

    say.step(
        "Boot 1: format the store, write the vTPM state and the dbx",
        "committed, anchored, and no plaintext in the image",
        first_boot,
    )

    def second_boot() -> tuple[bool, str]:
        with FileDevice.open(image) as dev:
            store = open_store(dev, key, anchor)
            ok = store.read(0) == nv and store.read(1) == dbx_old
            store.write(1, dbx_new)
            generation = store.commit()
            store.close()
        return ok, f"read both back intact; updated the dbx as generation {generation}"

    say.step("Boot 2: reopen, verify, update the dbx", "the data reads back", second_boot)

    def flip() -> tuple[bool, str]:
        damaged = work / "damaged.img"
        clone_file(image, damaged)
        with FileDevice.open(damaged) as dev:
            store = open_store(dev, key, anchor)
            target = store.geometry.data_start
            for block in range(store.geometry.data_start, dev.block_count):
                if any(dev.read(BlockIndex(block))):
                    target = block
                    break
            flip_bit(dev, target, 5)
            return _expect_error(IntegrityError, lambda: [store.read(i) for i in range(2)])

    say.step("The host flips one bit of a data block", "an integrity error naming the block", flip)

    def rollback() -> tuple[bool, str]:
        old = work / "restored.img"
        old.write_bytes(snapshots["before dbx update"])
        with FileDevice.open(old) as dev:
            return _expect_error(RollbackError, lambda: open_store(dev, key, anchor))

    say.step(
        "The host restores the image from before the dbx update (the dbx rollback)",
        "refused as a rollback by the anchor",
        rollback,
    )

    def fork() -> tuple[bool, str]:
        twin = clone_file(image, work / "clone.img")
        with FileDevice.open(image) as dev_a, FileDevice.open(twin) as dev_b:
            first = open_store(dev_a, key, anchor)
            second = open_store(dev_b, key, anchor)
            first.write(0, b"guest A".ljust(4096, b"\0"))
            first.commit()
            second.write(0, b"guest B".ljust(4096, b"\0"))
            return _expect_error(ForkError, second.commit)

    say.step(
        "The host starts a clone of the image beside the original",
        "the second guest to commit is refused as a fork",
        fork,
    )

    def wrong_key() -> tuple[bool, str]:
        with FileDevice.open(image) as dev:
            return _expect_error(WrongKeyError, lambda: open_store(dev, os.urandom(32), anchor))

    say.step("Someone opens the image with another key", "a wrong-key error", wrong_key)
