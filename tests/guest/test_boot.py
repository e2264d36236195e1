"""The boot flow end to end over real HTTP: first boot, later boots, and every refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmstore.block.memory import MemoryDevice
from cvmstore.errors import (
    ForkError,
    KbsAuthError,
    KbsIdentityError,
    KbsUnreachableError,
    RollbackError,
)
from cvmstore.guest import GuestConfig, boot
from cvmstore.integrity import AnchorPolicy
from cvmstore.kbs.admin import AdminClient
from cvmstore.kbs.evidence_source import SimulatorEvidence
from cvmstore.kbs.repository import Repository
from tests.kbs.live import MEASUREMENT, SIMULATOR, LiveKbs, free_port, live_kbs

OTHER = bytes.fromhex("cd" * 48)


@pytest.fixture
def kbs(tmp_path: Path, repository: Repository) -> Iterator[LiveKbs]:
    with live_kbs(tmp_path / "kbs", repository) as live:
        with AdminClient(live.url, live.admin_token) as admin:
            admin.add_reference(MEASUREMENT.hex())
            admin.create_volume("vtpm", f'measurements = ["{MEASUREMENT.hex()}"]')
        yield live


def config(kbs: LiveKbs, measurement: bytes = MEASUREMENT, **kw: object) -> GuestConfig:
    evidence = SimulatorEvidence(SIMULATOR, {"measurement": measurement})
    values: dict[str, object] = {"kbs_key": kbs.thumbprint, "retries": 0}
    values.update(kw)
    return GuestConfig(kbs.url, "vtpm", evidence, **values)  # type: ignore[arg-type]


def test_first_boot_formats_and_later_boots_read_back(kbs: LiveKbs) -> None:
    device = MemoryDevice(256)
    with boot(device, config(kbs)) as first:
        assert first.formatted
        first.fs.write_file("/nv", b"tpm state")
    with boot(device, config(kbs)) as second:
        assert not second.formatted
        assert second.fs.read_file("/nv") == b"tpm state"


def test_rollback_fork_and_erasure_are_refused(kbs: LiveKbs) -> None:
    device = MemoryDevice(256)
    with boot(device, config(kbs)) as booted:
        booted.fs.write_file("/dbx", b"old")
    old = device.image()
    with boot(device, config(kbs)) as booted:
        booted.fs.write_file("/dbx", b"new")
    with pytest.raises(RollbackError):
        boot(MemoryDevice.from_image(old), config(kbs))
    clone = MemoryDevice.from_image(device.image())
    with boot(device, config(kbs)) as booted, boot(clone, config(kbs)) as other:
        booted.fs.write_file("/dbx", b"newer")
        with pytest.raises(ForkError):
            other.fs.write_file("/dbx", b"forked")
    with pytest.raises(RollbackError, match="erased or replaced"):
        boot(MemoryDevice(256), config(kbs))


def test_policy_denial_forged_kbs_and_unreachable(kbs: LiveKbs) -> None:
    device = MemoryDevice(256)
    with pytest.raises(KbsAuthError, match="measurement"):
        boot(device, config(kbs, measurement=OTHER))
    with pytest.raises(KbsIdentityError):
        boot(device, config(kbs, kbs_key="x" * 43))
    dead = GuestConfig(
        f"http://127.0.0.1:{free_port()}",
        "vtpm",
        SimulatorEvidence(SIMULATOR),
        retries=3,
        backoff=0.01,
    )
    with pytest.raises(KbsUnreachableError, match="after 4 attempts"):
        boot(device, dead)
    assert device.image() == bytes(len(device.image()))  # nothing was written


def test_batched_anchoring_has_a_bounded_window_and_close_anchors(kbs: LiveKbs) -> None:
    device = MemoryDevice(256)
    boot(device, config(kbs)).close()  # first boot, strict: formatted and anchored
    batched = config(kbs, anchor_policy=AnchorPolicy(every_commits=4, every_seconds=3600))
    with AdminClient(kbs.url, kbs.admin_token) as admin:
        with boot(device, batched) as booted:
            anchored = admin.volume("vtpm")["generation"]
            for n in range(3):
                booted.fs.write_file("/nv", b"state %d" % n)
            commits, _ = booted.fs.store.rollback_window()
            assert commits == 3  # three commits a host could still roll back
            assert admin.volume("vtpm")["generation"] == anchored
        assert admin.volume("vtpm")["generation"] == booted.generation + 3  # close anchored
    with boot(device, config(kbs)) as again:
        assert again.fs.read_file("/nv") == b"state 2"
