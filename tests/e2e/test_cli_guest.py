"""`cvmstore guest` as a guest runs it: subprocesses against a real KBS on loopback.

Each test runs on SQLite and on PostgreSQL (`repository`). The KBS trusts the root that
`cvmstore guest simulator-root` wrote, and every subprocess signs its reports' chain with it
(`--simulator-root`). A volume is provisioned through the admin API with a policy that allows
MEASUREMENT; then the image commands run through the KBS (`guest mkfs`, put, ls, get, cat,
mkdir, mv, rm, fsck, info), and every refusal exits with its documented status and leaves the
image as it was: a second volume (8, no file left), an older copy (8), a forged KBS (45), a
measurement the policy does not allow (43), nothing listening (41), no pinned key (2).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from cvmstore.attest.certs import load_certificates
from cvmstore.attest.configfs import DEFAULT_ROOT as TSM_REPORT_ROOT
from cvmstore.attest.simulator import Simulator, SimulatorRoot
from cvmstore.kbs.admin import AdminClient
from cvmstore.kbs.repository import Repository
from tests.e2e.test_cli_image import Proc, cvmstore, fails, ok, sha256
from tests.kbs.conftest import repository as repository  # the fixture: SQLite, PostgreSQL
from tests.kbs.live import LiveKbs, free_port, live_kbs

MEASUREMENT = "ab" * 48
OTHER = "cd" * 48
VOLUME = "vm1"
#: Exit statuses every guest help lists.
EXIT_CODES = [(2, "usage error"), (4, "NotAnImageError"), (8, "RollbackError"), (9, "ForkError")]
EXIT_CODES += [(41, "KbsUnreachableError"), (43, "KbsAuthError"), (45, "KbsIdentityError")]
#: A well-formed thumbprint of no key the KBS has.
FORGED_KEY = base64.urlsafe_b64encode(hashlib.sha256(b"another KBS").digest()).decode()[:43]


@dataclass
class Guest:
    """A live KBS with volume `vm1`; `run` passes the guest options to a `guest` action."""

    live: LiveKbs
    dir: Path
    root: Path

    @property
    def image(self) -> Path:
        return self.dir / "vm1.img"

    @property
    def env(self) -> dict[str, str]:
        return {"CVMSTORE_KBS_URL": self.live.url, "CVMSTORE_KBS_KEY": self.live.thumbprint}

    def run(
        self,
        action: str,
        *args: str | Path,
        image: Path | None = None,
        measurement: str = MEASUREMENT,
        stdin: bytes = b"",
        env: Mapping[str, str] | None = None,
    ) -> Proc:
        return cvmstore(
            "guest",
            action,
            "--image",
            image or self.image,
            "--volume",
            VOLUME,
            "--evidence",
            "simulator",
            "--simulator-root",
            self.root,
            "--measurement",
            measurement,
            "--retries",
            "0",
            *args,
            stdin=stdin,
            env={**self.env, **(env or {})},
            cwd=self.dir,
        )

    def text(self, action: str, *args: str | Path, stdin: bytes = b"") -> str:
        return ok(self.run(action, *args, stdin=stdin)).stdout.decode()

    def ledger_generation(self) -> int | None:
        with AdminClient(self.live.url, self.live.admin_token) as admin:
            generation = admin.volume(VOLUME)["generation"]
        return None if generation is None else int(generation)


@pytest.fixture(scope="module")
def ark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulator's root, written by the command an operator runs."""
    path = tmp_path_factory.mktemp("simulator") / "sim-root.pem"
    ok(cvmstore("guest", "simulator-root", path))
    return path


@pytest.fixture
def guest(tmp_path: Path, repository: Repository, ark: Path) -> Iterator[Guest]:
    with live_kbs(tmp_path / "kbs", repository, simulator_roots=(ark,)) as live:
        with AdminClient(live.url, live.admin_token) as admin:
            admin.add_reference(MEASUREMENT)
            admin.create_volume(VOLUME, f'measurements = ["{MEASUREMENT}"]')
        yield Guest(live, tmp_path, ark)


@pytest.fixture
def made(guest: Guest) -> Guest:
    """`guest` with the volume formatted by `guest mkfs` and one file in it."""
    ok(guest.run("mkfs", "--size", "4M"))
    ok(guest.run("put", "-", "/nv", stdin=b"tpm state"))
    return guest


def test_mkfs_then_every_file_command_through_the_kbs(guest: Guest) -> None:
    out = guest.text("mkfs", "--size", "4M")
    assert out.startswith(f"made {guest.image}: 4194304 bytes (virtio)")
    assert f"anchor kbs {guest.live.url} volume {VOLUME}" in out
    assert guest.ledger_generation() is not None  # the first commit is anchored

    local = guest.dir / "state.bin"
    local.write_bytes(bytes(range(256)) * 100)
    ok(guest.run("put", "-p", local, "/etc/state.bin"))
    ok(guest.run("put", "-", "/nv", stdin=b"tpm state"))
    assert guest.text("ls", "-R").splitlines() == ["/etc/", "/nv", "/etc/state.bin"]
    listing = json.loads(guest.text("ls", "--json", "/etc"))
    assert [(e["name"], e["size"]) for e in listing] == [("state.bin", 25600)]

    ok(guest.run("get", "/etc/state.bin", "copy.bin"))
    assert (guest.dir / "copy.bin").read_bytes() == local.read_bytes()
    assert ok(guest.run("get", "/nv")).stdout == b"tpm state"
    assert ok(guest.run("cat", "/nv", "/nv")).stdout == b"tpm statetpm state"

    ok(guest.run("mkdir", "-p", "/var/lib"))
    ok(guest.run("mv", "/nv", "/var/lib"))
    ok(guest.run("rm", "-r", "/etc"))
    assert guest.text("ls", "-R").splitlines() == ["/var/", "/var/lib/", "/var/lib/nv"]

    assert "clean" in guest.text("fsck")
    assert json.loads(guest.text("fsck", "--json"))["ok"] is True
    info = json.loads(guest.text("info", "--json"))
    assert info["image"] == str(guest.image)
    assert info["anchor"] == f"kbs {guest.live.url} volume {VOLUME}"
    assert info["generation"] == info["anchored_generation"] == guest.ledger_generation()
    assert (info["files"], info["directories"]) == (1, 3)


def test_a_second_volume_is_refused_and_leaves_no_file(made: Guest) -> None:
    before = sha256(made.image)
    other = made.dir / "other.img"
    fails(made.run("mkfs", "--size", "4M", image=other), 8, "anchors generation")
    assert not other.exists()
    # --force over the real image: refused before it is overwritten.
    fails(made.run("mkfs", "--size", "4M", "--force"), 8, "left as it was")
    # without --force an existing image is never touched
    fails(made.run("mkfs", "--size", "4M"), 10, "already exists")
    assert sha256(made.image) == before
    assert made.text("cat", "/nv") == "tpm state"


def test_an_older_copy_of_the_image_is_a_rollback(made: Guest) -> None:
    old = made.dir / "old.img"
    shutil.copyfile(made.image, old)
    ok(made.run("put", "-", "/nv", stdin=b"newer state"))
    shutil.copyfile(old, made.image)  # the host restores the snapshot
    restored = sha256(made.image)
    for action, args in (("cat", ["/nv"]), ("put", ["-", "/nv"]), ("info", [])):
        fails(made.run(action, *args), 8, "an older copy of the image was restored")
    assert sha256(made.image) == restored


def test_refusals_leave_the_image_as_it_was(made: Guest) -> None:
    before = sha256(made.image)
    fails(made.run("cat", "/nv", "--kbs-key", FORGED_KEY), 45, "pinned KBS key")
    fails(made.run("cat", "/nv", measurement=OTHER), 43, "measurement")

    started = time.monotonic()
    dead = f"http://127.0.0.1:{free_port()}"
    fails(made.run("put", "-", "/nv", "--kbs", dead), 41, "cannot be reached after 1 attempts")
    assert time.monotonic() - started < 30

    unpinned = made.run("cat", "/nv", env={"CVMSTORE_KBS_KEY": ""})
    fails(unpinned, 2, "--kbs-key", "--insecure-no-pin", "CVMSTORE_KBS_KEY")
    fails(made.run("ls", "--kbs-key", "not a thumbprint"), 2, "43 base64url characters")
    both = made.run("ls", "--kbs-key", FORGED_KEY, "--insecure-no-pin")
    assert both.returncode == 2
    assert "--insecure-no-pin: not allowed with argument --kbs-key" in both.stderr.decode()
    fails(made.run("ls", "--measurement", "ab"), 2, "96 hex digits")
    fails(made.run("ls", env={"CVMSTORE_KBS_URL": ""}), 2, "--kbs URL")
    insecure = made.run("cat", "/nv", "--insecure-no-pin", env={"CVMSTORE_KBS_KEY": ""})
    assert ok(insecure).stdout == b"tpm state"
    assert "warning: --insecure-no-pin" in insecure.stderr.decode()

    blank = made.dir / "blank.img"
    blank.write_bytes(bytes(4 << 20))
    fails(made.run("ls", image=blank), 4)
    assert blank.read_bytes() == bytes(4 << 20)
    assert sha256(made.image) == before
    assert made.text("cat", "/nv") == "tpm state"


def test_evidence_defaults_to_configfs_or_is_refused(tmp_path: Path) -> None:
    if TSM_REPORT_ROOT.is_dir():
        pytest.skip("this host has configfs-tsm: the default evidence exists")
    proc = cvmstore(
        "guest",
        "ls",
        "--image",
        tmp_path / "x.img",
        "--volume",
        VOLUME,
        "--kbs",
        "http://127.0.0.1:1",
        "--kbs-key",
        FORGED_KEY,
    )
    fails(proc, 2, str(TSM_REPORT_ROOT), "--evidence simulator", "simulator-root")
    configfs_only = cvmstore(
        "guest",
        "ls",
        *("--image", tmp_path / "x.img", "--volume", VOLUME, "--kbs", "http://127.0.0.1:1"),
        *("--kbs-key", FORGED_KEY, "--evidence", "configfs", "--measurement", MEASUREMENT),
    )
    fails(configfs_only, 2, "--evidence simulator")


def test_simulator_root_is_a_private_file_the_kbs_and_guests_share(
    ark: Path, tmp_path: Path
) -> None:
    assert ark.stat().st_mode & 0o777 == 0o600
    root = SimulatorRoot.from_pem(ark.read_bytes())
    (certificate,) = load_certificates(ark.read_bytes())  # what the KBS reads from it
    assert certificate == root.certificate
    assert Simulator(key_size=2048, root=root).ark == root.certificate
    fails(cvmstore("guest", "simulator-root", ark), 2, "already exists")
    again = ok(cvmstore("guest", "simulator-root", tmp_path / "other.pem"))
    assert "measurement" in again.stdout.decode()
    other = SimulatorRoot.from_pem((tmp_path / "other.pem").read_bytes())
    assert other.certificate != root.certificate  # a new root each time


def test_help_teaches_the_flow_the_example_and_the_exit_codes() -> None:
    for action in ("", "mkfs", "info", "ls", "put", "get", "cat", "rm", "mv", "mkdir", "fsck"):
        text = ok(cvmstore("guest", *([action] if action else []), "--help")).stdout.decode()
        for needle in (
            "attest",
            "root secret",
            "ledger",
            "kbs admin volume create",
            "guest mkfs --image",
            "guest put",
            "guest get",
        ):
            assert needle in text, (action, needle)
        for code, name in EXIT_CODES:
            assert re.search(rf"\n +{code}  {name}: ", text), (action, code, name)
    ark_help = ok(cvmstore("guest", "simulator-root", "--help")).stdout.decode()
    assert "simulator_roots" in ark_help
    assert "RSA-2048" in ark_help
    # The key comes from the KBS: no keygen or rekey here.
    for action in ("keygen", "rekey"):
        refused = cvmstore("guest", action, "--help")
        assert refused.returncode == 2
        assert f"invalid choice: '{action}'" in refused.stderr.decode()
