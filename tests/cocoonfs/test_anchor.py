"""Rollback anchoring of CocoonFs images made by the real Rust tool, in every kind of anchor.

The images come from `cocoonfs mkfs` and `cocoonfs write-file` (every test image has the salt
c0c00f5eed, so they share one volume id). The modular order and the generation limit are
checked on `counter_delta` and on `ImageVersion` values, as no image gets near them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvmstore._types import BlockIndex
from cvmstore.block.memory import MemoryDevice
from cvmstore.cocoonfs.anchor import (
    MAX_GENERATION,
    AnchorStatus,
    ImageVersion,
    check_anchored,
    check_and_advance,
    counter_delta,
    decode_anchor_state,
    encode_anchor_state,
    image_version,
    volume_id_for_salt,
)
from cvmstore.cocoonfs.image import CocoonFsImage
from cvmstore.cocoonfs.mkfs import MkfsOptions
from cvmstore.cocoonfs.volume import CocoonFsVolume
from cvmstore.errors import AnchorError, ForkError, RollbackError
from cvmstore.integrity.anchor import AnchorState, FileAnchor, MemoryAnchor, NoAnchor
from cvmstore.kbs.admin import AdminClient
from cvmstore.kbs.anchor import KbsAnchor
from cvmstore.kbs.client import KbsClient
from cvmstore.testing.crash import CrashDevice
from tests.cocoonfs.conftest import KEY, Tool
from tests.guest.test_boot import config
from tests.guest.test_boot import kbs as kbs  # the fixture: a live KBS with volume "vtpm"
from tests.kbs.conftest import repository as repository  # the fixture: SQLite, PostgreSQL
from tests.kbs.live import LiveKbs

SALT = bytes.fromhex("c0c00f5eed")  # what `Tool.mkfs` passes as -I
VOLUME_ID = volume_id_for_salt(SALT)
TOP = (1 << 128) - 1


def opened(path: Path) -> CocoonFsImage:
    return CocoonFsImage.open(path.read_bytes(), KEY)


@pytest.fixture
def image(cocoonfs_tool: Tool, tmp_path: Path) -> Path:
    """A fresh image with one file."""
    path = tmp_path / "state.img"
    cocoonfs_tool.mkfs(path, "sha2", "aes", "128", "-s", "512K")
    cocoonfs_tool.write_file(path, 16, b"first state")
    return path


def updated(tool: Tool, path: Path, data: bytes = b"next state", times: int = 1) -> Path:
    for _ in range(times):
        tool.write_file(path, 16, data)
    return path


def copy(path: Path, name: str) -> Path:
    target = path.with_name(name)
    shutil.copyfile(path, target)
    return target


# ---------------------------------------------------------------- the rules, on real images


def test_first_use_records_and_then_is_current(image: Path) -> None:
    anchor = MemoryAnchor()
    state = opened(image)

    first = check_and_advance(state, anchor)
    again = check_and_advance(state, anchor)

    assert first.status is AnchorStatus.RECORDED
    assert first.written
    assert (first.counter, first.anchored_counter, first.generation) == (
        state.update_counter,
        None,
        0,
    )
    assert first.volume_id == VOLUME_ID
    held = anchor.read(VOLUME_ID)
    assert held is not None
    assert held.generation == 0
    assert decode_anchor_state(held) == (
        state.update_counter,
        state.update_counter,
        state.mutable_header.root_hmac,
    )
    assert again.status is AnchorStatus.CURRENT
    assert not again.written
    assert anchor.advances == 1


def test_updated_image_advances_the_anchor(cocoonfs_tool: Tool, image: Path) -> None:
    anchor = MemoryAnchor()
    base = opened(image).update_counter
    check_and_advance(opened(image), anchor)

    now = opened(updated(cocoonfs_tool, image, times=3))
    outcome = check_and_advance(now, anchor)

    assert now.update_counter == (base + 3) % (TOP + 1)
    assert outcome.status is AnchorStatus.ADVANCED
    assert outcome.written
    assert (outcome.anchored_counter, outcome.counter) == (base, now.update_counter)
    assert (outcome.updates, outcome.generation) == (3, 3)
    assert anchor.read(VOLUME_ID) == encode_anchor_state(
        base, now.update_counter, now.mutable_header.root_hmac
    )
    assert check_and_advance(now, anchor).status is AnchorStatus.CURRENT
    assert anchor.advances == 2


def test_restored_older_copy_is_a_rollback(cocoonfs_tool: Tool, image: Path) -> None:
    anchor = MemoryAnchor()
    old = copy(image, "old.img")
    old_counter = opened(old).update_counter
    new = opened(updated(cocoonfs_tool, image))
    check_and_advance(new, anchor)
    held = anchor.read(VOLUME_ID)

    with pytest.raises(RollbackError) as caught:
        check_and_advance(opened(old), anchor)
    with pytest.raises(RollbackError):
        check_anchored(opened(old), anchor)

    message = str(caught.value)
    assert str(old_counter) in message
    assert str(new.update_counter) in message
    assert "is 1 update older than the anchored counter" in message
    assert anchor.read(VOLUME_ID) == held
    assert anchor.advances == 1


def test_same_counter_other_content_is_a_fork(cocoonfs_tool: Tool, image: Path) -> None:
    """Two copies of one image, each updated once with other data: same salt and counter."""
    anchor = MemoryAnchor()
    clone = copy(image, "clone.img")
    mine = opened(updated(cocoonfs_tool, image, b"the guest's state"))
    theirs = opened(updated(cocoonfs_tool, clone, b"the host's state"))
    assert mine.update_counter == theirs.update_counter
    assert mine.mutable_header.root_hmac != theirs.mutable_header.root_hmac
    check_and_advance(mine, anchor)
    held = anchor.read(VOLUME_ID)

    with pytest.raises(ForkError, match=f"update counter {mine.update_counter} is the anchored"):
        check_and_advance(theirs, anchor)
    with pytest.raises(ForkError):
        check_anchored(theirs, anchor)
    assert anchor.read(VOLUME_ID) == held


def test_a_filesystem_made_again_with_the_same_salt_is_refused(
    cocoonfs_tool: Tool, image: Path
) -> None:
    """mkfs draws a new random counter: half the time it is before the anchored one, and
    otherwise (but with chance 2^-64) too far after it for any updated copy."""
    anchor = MemoryAnchor()
    check_and_advance(opened(image), anchor)
    held = anchor.read(VOLUME_ID)
    again = image.with_name("again.img")
    cocoonfs_tool.mkfs(again, "sha2", "aes", "128", "-s", "512K")

    with pytest.raises((RollbackError, AnchorError)):
        check_and_advance(opened(again), anchor)
    assert anchor.read(VOLUME_ID) == held


def test_check_only_writes_nothing(cocoonfs_tool: Tool, image: Path, tmp_path: Path) -> None:
    path = tmp_path / "state.anchor"
    anchor = FileAnchor(path)

    unanchored = check_anchored(opened(image), anchor)
    assert unanchored.status is AnchorStatus.UNANCHORED
    assert not unanchored.written
    assert not path.exists()

    base = check_and_advance(opened(image), anchor).counter
    recorded, stat = path.read_bytes(), path.stat()
    old = copy(image, "old.img")
    now = opened(updated(cocoonfs_tool, image, times=2))
    current = check_anchored(opened(old), anchor)
    ahead = check_anchored(now, anchor)

    assert current.status is AnchorStatus.CURRENT
    assert ahead.status is AnchorStatus.AHEAD
    assert not ahead.written
    assert (ahead.anchored_counter, ahead.updates, ahead.generation) == (base, 2, 2)
    assert path.read_bytes() == recorded
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.img", "state.anchor", "state.img"]


def test_file_anchor_persists_across_objects(cocoonfs_tool: Tool, image: Path, tmp_path: Path):
    path = tmp_path / "state.anchor"
    old = copy(image, "old.img")
    base = opened(image).update_counter
    assert check_and_advance(opened(image), FileAnchor(path)).status is AnchorStatus.RECORDED
    now = opened(updated(cocoonfs_tool, image))

    advanced = check_and_advance(opened(image), FileAnchor(path))
    current = check_and_advance(opened(image), FileAnchor(path))
    with pytest.raises(RollbackError):
        check_and_advance(opened(old), FileAnchor(path))

    assert (advanced.status, current.status) == (AnchorStatus.ADVANCED, AnchorStatus.CURRENT)
    record = json.loads(path.read_text())
    assert record["volume"] == VOLUME_ID.hex()
    assert record["generation"] == 1
    assert (
        record["digest"]
        == encode_anchor_state(base, now.update_counter, now.mutable_header.root_hmac).digest.hex()
    )


def test_file_anchor_of_another_volume_is_refused(image: Path, tmp_path: Path) -> None:
    path = tmp_path / "state.anchor"
    check_and_advance(opened(image), FileAnchor(path), volume_id=b"another volume")

    with pytest.raises(AnchorError, match="belongs to volume"):
        check_and_advance(opened(image), FileAnchor(path))


# ---------------------------------------------------------------- the KBS ledger


def _ledger(live: LiveKbs) -> dict[str, object]:
    with AdminClient(live.url, live.admin_token) as admin:
        return admin.volume("vtpm")


@pytest.fixture
def attested(kbs: LiveKbs) -> Iterator[KbsClient]:
    with config(kbs).client() as client:
        client.attest()
        yield client


def test_kbs_ledger_anchors_the_image(
    cocoonfs_tool: Tool, image: Path, kbs: LiveKbs, attested: KbsClient
) -> None:
    anchor = KbsAnchor(attested, "vtpm")
    old = copy(image, "old.img")
    base = opened(image).update_counter

    recorded = check_and_advance(opened(image), anchor)
    clone = copy(image, "clone.img")
    updated(cocoonfs_tool, image, b"the guest's state", times=2)
    advanced = check_and_advance(opened(image), anchor)

    assert (recorded.status, advanced.status) == (AnchorStatus.RECORDED, AnchorStatus.ADVANCED)
    ledger = _ledger(kbs)
    assert ledger["generation"] == 2
    assert ledger["store-id"] == VOLUME_ID.hex()
    assert (
        ledger["root"]
        == encode_anchor_state(
            base, opened(image).update_counter, opened(image).mutable_header.root_hmac
        ).digest.hex()
    )

    # A new session (another boot) sees the same ledger.
    with config(kbs).client() as later:
        later.attest()
        fresh = KbsAnchor(later, "vtpm")
        assert check_anchored(opened(image), fresh).status is AnchorStatus.CURRENT
        with pytest.raises(RollbackError):
            check_and_advance(opened(old), fresh)
        updated(cocoonfs_tool, clone, b"the host's state", times=2)
        with pytest.raises(ForkError):
            check_and_advance(opened(clone), fresh)
    assert _ledger(kbs)["generation"] == 2
    assert anchor.advances == 2


def test_kbs_ledger_refuses_another_filesystem(
    cocoonfs_tool: Tool, image: Path, attested: KbsClient
) -> None:
    """The ledger is bound to the first store id: another salt is another volume id."""
    anchor = KbsAnchor(attested, "vtpm")
    check_and_advance(opened(image), anchor)
    other = image.with_name("other.img")
    cocoonfs_tool.run(
        other, "mkfs", "-K", KEY.hex(), "-H", "sha2", "-C", "aes", "-t", "128",
        "-I", "0ddba11", "-s", "512K",
    )  # fmt: skip

    with pytest.raises(AnchorError, match="not this image's store"):
        check_and_advance(opened(other), anchor)


# ---------------------------------------------------------------- the order and the limits


@pytest.mark.parametrize("x", [0, 1, 5, 1 << 64, (1 << 127) - 1, 1 << 127, TOP - 1, TOP])
def test_counter_order_is_the_specs_modular_order(x: int) -> None:
    """[x + 2^127, x - 1] mod 2^128 comes before x, [x + 1, x + 2^127 - 1] after it."""
    mod = TOP + 1
    assert counter_delta(x, x) == 0
    assert counter_delta((x + 1) % mod, x) == 1
    assert counter_delta((x - 1) % mod, x) == -1
    assert counter_delta((x + (1 << 127) - 1) % mod, x) == (1 << 127) - 1
    assert counter_delta((x + (1 << 127)) % mod, x) == -(1 << 127)
    assert counter_delta((x + (1 << 127) + 1) % mod, x) == -(1 << 127) + 1


def test_counter_order_wraps_at_2_to_the_128() -> None:
    assert counter_delta(0, TOP) == 1
    assert counter_delta(TOP, 0) == -1
    assert counter_delta(3, TOP - 2) == 6
    with pytest.raises(ValueError, match="128-bit"):
        counter_delta(TOP + 1, 0)
    with pytest.raises(ValueError, match="128-bit"):
        counter_delta(0, -1)


def version(counter: int, root: bytes = b"r" * 32, salt: bytes = SALT) -> ImageVersion:
    return ImageVersion(salt, counter, root)


def test_anchoring_across_the_wrap() -> None:
    anchor = MemoryAnchor()
    check_and_advance(version(TOP - 1), anchor)

    outcome = check_and_advance(version(2, b"s" * 32), anchor)

    assert (outcome.status, outcome.updates, outcome.generation) == (AnchorStatus.ADVANCED, 4, 4)
    held = anchor.read(VOLUME_ID)
    assert held is not None
    assert decode_anchor_state(held) == (TOP - 1, 2, b"s" * 32)
    with pytest.raises(RollbackError, match=f"counter {TOP} is 3 updates older"):
        check_and_advance(version(TOP), anchor)
    with pytest.raises(RollbackError):
        check_and_advance(version(TOP - 1), anchor)


def test_generation_limit_of_the_ledger() -> None:
    anchor = MemoryAnchor()
    check_and_advance(version(TOP), anchor)
    last = (TOP + MAX_GENERATION) % (TOP + 1)

    with pytest.raises(AnchorError, match="more than the 9223372036854775807 generations"):
        check_and_advance(version((last + 1) % (TOP + 1)), anchor)
    assert check_and_advance(version(last), anchor).generation == MAX_GENERATION
    with pytest.raises(AnchorError):
        encode_anchor_state(0, MAX_GENERATION + 1, b"r" * 32)


def test_digest_fits_the_ledger_for_every_root_hmac_size() -> None:
    """Roots of SHA-1 (20 bytes) to SHA-512 (64): the digest stays within 16 to 64 bytes."""
    for size in (20, 32, 48, 64):
        root = os.urandom(size)
        state = encode_anchor_state(7, 9, root)
        assert 16 <= len(state.digest) <= 64
        assert state.generation == 2
        assert decode_anchor_state(state) == (7, 9, root[:32])
    anchor = MemoryAnchor()
    check_and_advance(version(9, b"x" * 32 + b"a" * 32), anchor)
    assert check_anchored(version(9, b"x" * 32 + b"a" * 32), anchor).status is AnchorStatus.CURRENT
    with pytest.raises(ForkError):
        check_anchored(version(9, b"y" * 32 + b"a" * 32), anchor)


@pytest.mark.parametrize(
    "state",
    [
        AnchorState(0, b"\x00" * 32),  # a cvmstore store's 32-byte digest
        AnchorState(1, bytes(16) + bytes(16) + b"r" * 32),  # counter is not base + generation
        AnchorState(0, bytes(32) + b"r" * 33),  # root field too long
    ],
)
def test_a_state_that_is_not_a_cocoonfs_images_is_refused(state: AnchorState) -> None:
    anchor = MemoryAnchor()
    anchor.advance(VOLUME_ID, None, state)

    with pytest.raises(AnchorError):
        check_and_advance(version(0), anchor)
    with pytest.raises(AnchorError):
        check_anchored(version(0), anchor)


class RacingAnchor(MemoryAnchor):
    """At 3; another process advances it to `theirs` just before our next advance."""

    def __init__(self, theirs: ImageVersion) -> None:
        super().__init__()
        self.theirs: ImageVersion | None = None
        check_and_advance(version(3), self)
        self.theirs = theirs

    def advance(self, volume_id: bytes, expected: AnchorState | None, new: AnchorState) -> None:
        theirs, self.theirs = self.theirs, None
        if theirs is not None:
            check_and_advance(theirs, self)
        super().advance(volume_id, expected, new)


def test_a_concurrent_advance_is_judged_again() -> None:
    same = RacingAnchor(version(5))
    newer = RacingAnchor(version(6))
    older = RacingAnchor(version(4))
    forked = RacingAnchor(version(5, b"t" * 32))

    assert check_and_advance(version(5), same).status is AnchorStatus.CURRENT
    with pytest.raises(RollbackError):
        check_and_advance(version(5), newer)
    with pytest.raises(ForkError, match="root HMAC"):
        check_and_advance(version(5), forked)
    advanced = check_and_advance(version(5), older)
    assert (advanced.status, advanced.anchored_counter, advanced.generation) == (
        AnchorStatus.ADVANCED,
        4,
        2,
    )
    assert [a.advances for a in (same, newer, older, forked)] == [2, 2, 3, 2]


def test_volume_id_and_arguments() -> None:
    assert hashlib.sha256(b"cvmstore cocoonfs anchor v1\x00" + SALT).digest() == VOLUME_ID
    assert volume_id_for_salt(b"") != volume_id_for_salt(b"\x00")
    assert len(volume_id_for_salt(b"s" * 255)) == 32
    anchor = MemoryAnchor()
    assert check_and_advance(version(1), anchor, volume_id=b"v").volume_id == b"v"
    assert anchor.read(b"v") is not None
    assert anchor.read(VOLUME_ID) is None
    with pytest.raises(ValueError, match="1 to 64 bytes"):
        check_and_advance(version(1), anchor, volume_id=b"v" * 65)
    with pytest.raises(ValueError, match="NoAnchor anchors nothing"):
        check_and_advance(version(1), NoAnchor())
    with pytest.raises(ValueError, match="NoAnchor anchors nothing"):
        check_anchored(version(1), NoAnchor())


def test_image_version_reads_the_authenticated_fields(image: Path) -> None:
    state = opened(image)
    assert image_version(state) == ImageVersion(
        SALT, state.update_counter, state.mutable_header.root_hmac
    )


def test_a_volume_with_an_anchor_refuses_an_old_journal_and_advances(tmp_path: Path) -> None:
    """`CocoonFsVolume(anchor=...)`: every commit advances the anchor; a copy restored from
    before the last commit is refused at open, and so is an old pending journal (the host
    keeps a crashed transaction's image and replays it later), before anything is written."""
    anchor = FileAnchor(tmp_path / "state.anchor")
    device = MemoryDevice(2048, 512)
    volume = CocoonFsVolume.mkfs(device, KEY, MkfsOptions(salt=b"an"), anchor=anchor)
    volume.write_file(16, b"one")
    old_copy = device.image()
    crash = CrashDevice(MemoryDevice.from_image(device.image(), 512))
    CocoonFsVolume.open(crash, KEY, anchor=anchor).write_file(16, b"two")
    # The state right after the journal head committed "two": a pending journal.
    pending = None
    for point in crash.crash_points():
        image = next(iter(point.states(bound=1))).image()
        if b"CCFSJRNL" in image[:4096]:
            pending = image
            break
    assert pending is not None
    latest = crash.read(BlockIndex(0), crash.block_count)
    volume = CocoonFsVolume.open(MemoryDevice.from_image(latest, 512), KEY, anchor=anchor)
    volume.write_file(16, b"three")
    for stale in (old_copy, pending):
        device = MemoryDevice.from_image(stale, 512)
        with pytest.raises(RollbackError):
            CocoonFsVolume.open(device, KEY, anchor=anchor)
        assert device.image() == stale  # nothing written, not even the replay
