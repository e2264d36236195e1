"""`cvmstore demo`: the whole story on embedded defaults, with every expectation checked.

Each step does something for real, says what happened and what was expected, and the demo
exits 0 only if every expectation held. The story: a key broker (in this process, on a free
loopback port, SQLite in a temporary directory) and a simulated SEV-SNP guest. The volume is
provisioned; boot 1 attests, receives the key, formats a pflash image and writes a vTPM state
and a UEFI dbx; boot 2 reads them back and updates the dbx. Then the host attacks: a flipped
bit, the image restored from before the dbx update, a clone, a guest from another image, and
a forged KBS; each is detected.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.serialization import Encoding

from cvmstore._types import BlockIndex
from cvmstore._units import format_size
from cvmstore.attest.simulator import Simulator
from cvmstore.block import FileDevice, ImageProfile, MemoryDevice
from cvmstore.errors import (
    CvmstoreError,
    DeviceError,
    ForkError,
    IntegrityError,
    KbsAuthError,
    KbsIdentityError,
    RollbackError,
)
from cvmstore.guest import GuestConfig, boot
from cvmstore.kbs.admin import AdminClient
from cvmstore.kbs.config import KbsConfig
from cvmstore.kbs.evidence_source import SimulatorEvidence
from cvmstore.kbs.server import ADMIN_TOKEN_FILE, build_service, free_loopback_port, serve_in_thread
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

    _kbs_story(say, work, code)


def _expect_error(kind: type[CvmstoreError], action: Callable[[], object]) -> tuple[bool, str]:
    try:
        action()
    except kind as exc:
        return True, f"{type(exc).__name__}: {exc}"
    except CvmstoreError as exc:
        return False, f"wrong error {type(exc).__name__}: {exc}"
    return False, "nothing was detected"


#: The launch digest of the demo's (simulated) SVSM: what the volume's policy allows.
SVSM_MEASUREMENT = hashlib.sha384(b"cvmstore demo: the SVSM image").digest()
#: A guest launched from another image (say, with a debug shell added).
OTHER_MEASUREMENT = hashlib.sha384(b"cvmstore demo: a modified SVSM image").digest()
VOLUME = "svsm-state"


@dataclass
class _Kbs:
    url: str
    thumbprint: str
    admin: AdminClient


@contextmanager
def _kbs(work: Path, name: str, simulator: Simulator) -> Iterator[_Kbs]:
    """A KBS on a free loopback port: SQLite in `work/name`, the simulator's root trusted."""
    data = work / name
    data.mkdir(parents=True, exist_ok=True)
    root = data / "simulator-ark.pem"
    root.write_bytes(simulator.ark.public_bytes(Encoding.PEM))
    config = KbsConfig(
        listen=f"127.0.0.1:{free_loopback_port()}",
        data_dir=data,
        simulator_roots=(root,),
        log_level="warning",
    )
    quiet = logging.getLogger("cvmstore.kbs")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the demo narrates; the KBS's own log would interleave
    service = build_service(config)
    try:
        with serve_in_thread(config, service) as url:
            token = (data / ADMIN_TOKEN_FILE).read_text().strip()
            with AdminClient(url, token) as admin:
                yield _Kbs(url, service.signer.thumbprint, admin)
    finally:
        service.repository.close()
        quiet.setLevel(level)


def _kbs_story(say: _Narrator, work: Path, code: Path | None) -> None:
    simulator = Simulator(seed="cvmstore demo", key_size=2048)
    image = work / "svsm-volume.img"
    vtpm = b"vTPM NV state: endorsement hierarchy, PCR policy, counters"
    dbx_old = b"dbx: 12 revoked hashes"
    dbx_new = b"dbx: 13 revoked hashes (the bootkit's shim revoked)"
    saved: dict[str, bytes] = {}
    with _kbs(work, "kbs", simulator) as kbs:
        print(f"\nA key broker listens on {kbs.url} (SQLite in {work / 'kbs'}).", file=say.out)

        def guest(measurement: bytes = SVSM_MEASUREMENT, key: str | None = None) -> GuestConfig:
            evidence = SimulatorEvidence(simulator, {"measurement": measurement})
            return GuestConfig(
                kbs.url, VOLUME, evidence, kbs_key=key or kbs.thumbprint, retries=1, backoff=0.1
            )

        def provision() -> tuple[bool, str]:
            kbs.admin.add_reference(SVSM_MEASUREMENT.hex())
            policy = f'measurements = ["{SVSM_MEASUREMENT.hex()}"]\nallow_debug = false\n'
            info = kbs.admin.create_volume(VOLUME, policy)
            ok = info["version"] == 0 and info["generation"] is None
            return ok, (
                f"volume {VOLUME!r}: a random root secret, a policy allowing one launch"
                f" measurement ({SVSM_MEASUREMENT.hex()[:16]}...), ledger at version"
                f" {info['version']}; guests pin the KBS key {kbs.thumbprint[:12]}..."
            )

        say.step(
            "Provision the volume at the KBS",
            "a root secret and an empty ledger entry",
            provision,
        )

        def first_boot() -> tuple[bool, str]:
            size = 1 << 20
            profile = ImageProfile.PFLASH
            with (
                FileDevice.create(image, size, profile=profile, firmware_code=code) as dev,
                boot(dev, guest()) as booted,
            ):
                booted.fs.mkdir("/vtpm")
                booted.fs.mkdir("/uefi")
                with booted.fs.transaction():
                    booted.fs.write_file("/vtpm/nv", vtpm)
                    booted.fs.write_file("/uefi/dbx", dbx_old)
                generation = booted.fs.store.generation
            raw = image.read_bytes()
            leaked = b"vTPM" in raw or b"revoked" in raw
            ledger = kbs.admin.volume(VOLUME)
            ok = booted.formatted and not leaked and ledger["generation"] == generation
            return ok, (
                f"attested, received the volume key, formatted {format_size(size)}"
                f" {image.name}, wrote /vtpm/nv and /uefi/dbx as generation {generation};"
                f" ledger at generation {ledger['generation']};"
                f" plaintext in the image: {'YES' if leaked else 'none'}"
            )

        say.step(
            "Boot 1: attest, format the volume, write the vTPM state and the dbx",
            "the key arrives only after attestation; every commit anchored; no plaintext",
            first_boot,
        )
        saved["before dbx update"] = image.read_bytes()

        def second_boot() -> tuple[bool, str]:
            with FileDevice.open(image) as dev, boot(dev, guest()) as booted:
                ok = (
                    booted.fs.read_file("/vtpm/nv") == vtpm
                    and booted.fs.read_file("/uefi/dbx") == dbx_old
                )
                booted.fs.write_file("/uefi/dbx", dbx_new)
                generation = booted.fs.store.generation
            return ok and not booted.formatted, (
                f"attested again, verified freshness against the ledger, read both back;"
                f" updated the dbx as generation {generation}"
            )

        say.step(
            "Boot 2: attest, read back, update the dbx",
            "the data reads back and the dbx update is anchored",
            second_boot,
        )

        def flip() -> tuple[bool, str]:
            damaged = clone_file(image, work / "damaged.img")
            with FileDevice.open(damaged) as dev:
                good = saved["before dbx update"]
                changed = [
                    block
                    for block in range(2, dev.block_count)
                    if dev.read(BlockIndex(block)) != good[block * 4096 : (block + 1) * 4096]
                ]
                for block in changed:  # every block the dbx update wrote
                    flip_bit(dev, block, 7)

                def read_dbx() -> bytes:
                    with boot(dev, guest()) as booted:
                        return booted.fs.read_file("/uefi/dbx")

                return _expect_error(IntegrityError, read_dbx)

        say.step(
            "The host flips a bit in each block the dbx update wrote",
            "an integrity error naming the block; nothing wrong is returned",
            flip,
        )

        def rollback() -> tuple[bool, str]:
            restored = work / "restored.img"
            restored.write_bytes(saved["before dbx update"])
            with FileDevice.open(restored) as dev:
                return _expect_error(RollbackError, lambda: boot(dev, guest()).close())

        say.step(
            "The host restores the image from before the dbx update (the dbx rollback a"
            " bootkit needs to run a revoked boot loader again)",
            "refused: the KBS ledger holds a newer generation",
            rollback,
        )

        def fork() -> tuple[bool, str]:
            twin = clone_file(image, work / "clone.img")
            with (
                FileDevice.open(image) as dev_a,
                FileDevice.open(twin) as dev_b,
                boot(dev_a, guest()) as first,
                boot(dev_b, guest()) as second,
            ):
                first.fs.write_file("/vtpm/nv", vtpm + b" (guest A)")
                return _expect_error(
                    ForkError, lambda: second.fs.write_file("/vtpm/nv", vtpm + b" (guest B)")
                )

        say.step(
            "The host starts a clone of the image beside the original",
            "the second guest to commit is refused as a fork by the ledger",
            fork,
        )

        def other_image() -> tuple[bool, str]:
            before = image.read_bytes()
            with FileDevice.open(image) as dev:
                ok, seen = _expect_error(
                    KbsAuthError, lambda: boot(dev, guest(OTHER_MEASUREMENT)).close()
                )
            return ok and image.read_bytes() == before, seen + "; the image was not touched"

        say.step(
            "A guest launched from a modified image asks for the key",
            "no key: its measurement is not the one the policy allows",
            other_image,
        )

        with _kbs(work, "impostor", simulator) as impostor:
            impostor.admin.add_reference(SVSM_MEASUREMENT.hex())
            impostor.admin.create_volume(VOLUME, f'measurements = ["{SVSM_MEASUREMENT.hex()}"]')

            def forged() -> tuple[bool, str]:
                evidence = SimulatorEvidence(simulator, {"measurement": SVSM_MEASUREMENT})
                config = GuestConfig(
                    impostor.url, VOLUME, evidence, kbs_key=kbs.thumbprint, retries=0
                )
                before = image.read_bytes()
                with FileDevice.open(image) as dev:
                    ok, seen = _expect_error(KbsIdentityError, lambda: boot(dev, config).close())
                return ok and image.read_bytes() == before, seen

            say.step(
                "The host answers with its own KBS (same protocol, same volume name)",
                "refused before any key or ledger answer is used: not signed by the pinned key",
                forged,
            )
