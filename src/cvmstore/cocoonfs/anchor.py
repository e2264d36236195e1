"""Rollback anchoring of CocoonFs images: their update counter and root HMAC in an `Anchor`.

A CocoonFs v1 image carries a 128-bit update counter (section "Filesystem update counter" of
`cocoonfs-format.md`, crate cocoon-tpm-storage 0.1.5). mkfs starts it at a random value, and
every update adds 1 modulo 2^128. The root HMAC authenticates it together with the whole image.
Nothing in the format compares the counter with anything, so a restored older copy of an image
opens fine. This module compares it with a trusted anchor (`cvmstore.integrity.anchor`:
`FileAnchor`, `MemoryAnchor`, or the KBS ledger `cvmstore.kbs.anchor.KbsAnchor`). The anchor
keeps the newest (counter, root) it has seen, so an older image is refused, and so is another
root under the same counter.

The spec's order is modular: the values in [x + 2^127, x - 1] (mod 2^128) come before x, and
those in [x + 1, x + 2^127 - 1] come after it (`counter_delta`).

How an image's state is kept in an `AnchorState` (the KBS ledger takes a generation in
[0, 2^63) and a digest of 16 to 64 bytes, and generations may only go up):

| digest bytes | field                                                                |
|--------------|----------------------------------------------------------------------|
| 0..16        | base counter, BE128: the image's counter when first anchored         |
| 16..32       | anchored counter, BE128: always base + generation (mod 2^128)        |
| 32..         | root HMAC, cut to 32 bytes when longer (SHA-384/512)                 |

generation = (anchored counter - base counter) mod 2^128, so the generation goes up by one
per update of the image. The volume id is SHA-256 over a label and the image's salt (its
filesystem id), 32 bytes, which the KBS ledger accepts as a store id.

Anchoring catches only what was anchored. The SVSM and the Rust tool update images without
knowing about the anchor, so every update between two runs of `check_and_advance` can be
rolled back without detection. A copy that was updated further than the anchor is accepted,
and from then on it is the anchored history.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from dataclasses import dataclass

from cvmstore.cocoonfs.image import CocoonFsImage
from cvmstore.errors import AnchorError, ForkError, RollbackError
from cvmstore.integrity.anchor import Anchor, AnchorState

__all__ = [
    "MAX_GENERATION",
    "AnchorOutcome",
    "AnchorStatus",
    "ImageVersion",
    "check_anchored",
    "check_and_advance",
    "counter_delta",
    "decode_anchor_state",
    "encode_anchor_state",
    "image_version",
    "volume_id_for_salt",
]

_COUNTER_BITS = 128
_MODULUS = 1 << _COUNTER_BITS
_HALF = 1 << (_COUNTER_BITS - 1)
_COUNTER_BYTES = _COUNTER_BITS // 8
#: The KBS ledger's digest holds at most 64 bytes: two counters leave 32 for the root.
_ROOT_BYTES = 32
#: The largest generation the KBS ledger keeps (SQLite and PostgreSQL store an int64).
MAX_GENERATION = (1 << 63) - 1
#: Domain separation: the volume id of a CocoonFs salt is never a cvmstore store's id.
_VOLUME_LABEL = b"cvmstore cocoonfs anchor v1\x00"
#: The KBS ledger takes a store id of 1 to 64 bytes.
_VOLUME_ID_LEN = range(1, 65)


class AnchorStatus(enum.Enum):
    """What `check_and_advance` or `check_anchored` found, and what the anchor holds now."""

    RECORDED = "recorded"
    """First use: the anchor held nothing for the volume, and now holds the image."""
    CURRENT = "current"
    """The anchor already held exactly this image."""
    ADVANCED = "advanced"
    """The image was updated since it was anchored; the anchor now holds it."""
    UNANCHORED = "unanchored"
    """Check only: the anchor holds nothing for the volume (nothing was written)."""
    AHEAD = "ahead"
    """Check only: the image is newer than the anchor (nothing was written)."""


#: What check_anchored reports where check_and_advance would have written.
_UNWRITTEN = {
    AnchorStatus.RECORDED: AnchorStatus.UNANCHORED,
    AnchorStatus.ADVANCED: AnchorStatus.AHEAD,
}


@dataclass(frozen=True, slots=True)
class ImageVersion:
    """The part of an opened image that anchoring compares."""

    salt: bytes
    counter: int
    root_hmac: bytes


@dataclass(frozen=True, slots=True)
class AnchorOutcome:
    """The result of anchoring, or checking, one image.

    Attributes:
        status: what was found (and done).
        volume_id: the id the anchor keeps the image under.
        counter: the image's update counter.
        anchored_counter: the counter the anchor held before, None when it held nothing.
        generation: the anchor generation of the image's counter (0 on first use).
        updates: how many updates the image is past `anchored_counter` (0 when the same or
            unanchored).
    """

    status: AnchorStatus
    volume_id: bytes
    counter: int
    anchored_counter: int | None
    generation: int
    updates: int

    @property
    def written(self) -> bool:
        """Whether the anchor was advanced by this call."""
        return self.status in (AnchorStatus.RECORDED, AnchorStatus.ADVANCED)


@dataclass(frozen=True, slots=True)
class _Anchored:
    """An `AnchorState`, decoded."""

    base: int
    counter: int
    root: bytes
    generation: int


def counter_delta(counter: int, reference: int) -> int:
    """How many updates `counter` is after `reference`, negative when before it.

    The spec's modular order: the result is in [-2^127, 2^127 - 1], so the counter exactly
    2^127 away comes before, as the spec's interval [x + 2^127, x - 1] says.
    """
    for name, value in (("counter", counter), ("reference", reference)):
        if not 0 <= value < _MODULUS:
            raise ValueError(f"{name} {value} is not a 128-bit update counter")
    delta = (counter - reference) % _MODULUS
    return delta - _MODULUS if delta >= _HALF else delta


def volume_id_for_salt(salt: bytes) -> bytes:
    """The volume id of a CocoonFs filesystem: SHA-256 of a label and its salt (32 bytes)."""
    return hashlib.sha256(_VOLUME_LABEL + salt).digest()


def image_version(image: CocoonFsImage) -> ImageVersion:
    """The salt, update counter and root HMAC of an opened (so authenticated) image."""
    return ImageVersion(
        image.static_header.salt, image.update_counter, image.mutable_header.root_hmac
    )


def _updates(count: int) -> str:
    return "1 update" if count == 1 else f"{count} updates"


def _root_field(root_hmac: bytes) -> bytes:
    # A truncated HMAC still tells two roots apart, except with chance 2^-256.
    return root_hmac[:_ROOT_BYTES]


def encode_anchor_state(base: int, counter: int, root_hmac: bytes) -> AnchorState:
    """The `AnchorState` of an image at `counter`, anchored first at `base`.

    Raises:
        AnchorError: `counter` is more updates past `base` than a generation holds
            (`MAX_GENERATION`).
        ValueError: a counter out of range, or a root HMAC shorter than 16 bytes.
    """
    generation = counter_delta(counter, base) % _MODULUS
    if generation > MAX_GENERATION:
        raise AnchorError(
            f"update counter {counter} is {generation} updates past the first anchored counter "
            f"{base}: more than the {MAX_GENERATION} generations an anchor holds. No updated "
            "copy of the anchored filesystem gets there; a filesystem made again with the same "
            "salt (a new random counter) does"
        )
    if len(root_hmac) < 16:
        raise ValueError(f"a root HMAC of {len(root_hmac)} bytes is too short to anchor")
    digest = (
        base.to_bytes(_COUNTER_BYTES, "big")
        + counter.to_bytes(_COUNTER_BYTES, "big")
        + _root_field(root_hmac)
    )
    return AnchorState(generation, digest)


def decode_anchor_state(state: AnchorState) -> tuple[int, int, bytes]:
    """(base counter, anchored counter, root field) of an `AnchorState` this module wrote.

    Raises:
        AnchorError: the state is not a CocoonFs image's: wrong length, or its counter does
            not follow from its base and generation.
    """
    anchored = _decode(state)
    return anchored.base, anchored.counter, anchored.root


def _decode(state: AnchorState) -> _Anchored:
    digest = state.digest
    root = digest[2 * _COUNTER_BYTES :]
    if not 16 <= len(root) <= _ROOT_BYTES or not 0 <= state.generation <= MAX_GENERATION:
        raise AnchorError(
            f"the anchor holds generation {state.generation} with a {len(digest)}-byte digest: "
            "not the state of a CocoonFs image (another kind of volume under this volume id?)"
        )
    base = int.from_bytes(digest[:_COUNTER_BYTES], "big")
    counter = int.from_bytes(digest[_COUNTER_BYTES : 2 * _COUNTER_BYTES], "big")
    if (base + state.generation) % _MODULUS != counter:
        raise AnchorError(
            f"the anchor holds generation {state.generation} and counter {counter}, which do "
            f"not follow from its base counter {base}: it is inconsistent"
        )
    return _Anchored(base, counter, root, state.generation)


def _judge(
    version: ImageVersion, volume_id: bytes, anchored: AnchorState | None
) -> tuple[AnchorOutcome, AnchorState | None]:
    """What the image is against the anchor, and the state to advance to (None: nothing).

    Raises:
        RollbackError: the image's counter is before the anchored one.
        ForkError: the same counter as the anchored one, another root.
        AnchorError: the anchor is not a CocoonFs image's, or the image's counter is too far
            ahead of it.
    """
    if anchored is None:
        new = encode_anchor_state(version.counter, version.counter, version.root_hmac)
        outcome = AnchorOutcome(AnchorStatus.RECORDED, volume_id, version.counter, None, 0, 0)
        return outcome, new
    held = _decode(anchored)
    delta = counter_delta(version.counter, held.counter)
    if delta < 0:
        raise RollbackError(
            f"the image's update counter {version.counter} is {_updates(-delta)} older than the "
            f"anchored counter {held.counter}: an older copy of the image was restored",
            location="update counter",
        )
    if delta == 0:
        if _root_field(version.root_hmac) != held.root:
            raise ForkError(
                f"the image's update counter {version.counter} is the anchored one, but its "
                "root HMAC is not: another state of the filesystem under the same counter (a "
                "copy updated separately, or another filesystem with the same salt)",
                location="root HMAC",
            )
        outcome = AnchorOutcome(
            AnchorStatus.CURRENT,
            volume_id,
            version.counter,
            held.counter,
            held.generation,
            0,
        )
        return outcome, None
    new = encode_anchor_state(held.base, version.counter, version.root_hmac)
    outcome = AnchorOutcome(
        AnchorStatus.ADVANCED,
        volume_id,
        version.counter,
        held.counter,
        new.generation,
        delta,
    )
    return outcome, new


def _volume_id(version: ImageVersion, volume_id: bytes | None) -> bytes:
    if volume_id is None:
        return volume_id_for_salt(version.salt)
    if len(volume_id) not in _VOLUME_ID_LEN:
        raise ValueError(f"a volume id is 1 to 64 bytes, not {len(volume_id)}")
    return volume_id


def _enforcing(anchor: Anchor) -> None:
    if not anchor.enforcing:
        raise ValueError(f"{type(anchor).__name__} anchors nothing: pass an enforcing anchor")


def _prepare(
    image: CocoonFsImage | ImageVersion, anchor: Anchor, volume_id: bytes | None
) -> tuple[ImageVersion, bytes]:
    """The image's version and the volume id to anchor it under.

    A non-enforcing anchor is refused (`ValueError`).
    """
    version = image if isinstance(image, ImageVersion) else image_version(image)
    target = _volume_id(version, volume_id)
    _enforcing(anchor)
    return version, target


def check_and_advance(
    image: CocoonFsImage | ImageVersion, anchor: Anchor, *, volume_id: bytes | None = None
) -> AnchorOutcome:
    """Compare an opened image with its anchor, and anchor it if it is newer (or the first).

    Nothing anchored yet: the image is recorded. The anchored counter and root: nothing to
    do. A newer counter (the image was updated since, by us, the Rust tool or the SVSM): the
    anchor is advanced by compare-and-swap from the state read. If another process moved the
    anchor meanwhile, the image is judged once more against what it holds now.

    Args:
        image: an image `CocoonFsImage.open` authenticated (or its `image_version`).
        anchor: any enforcing `Anchor` (`FileAnchor`, `MemoryAnchor`, `KbsAnchor`).
        volume_id: the id to anchor under; default `volume_id_for_salt` of the image's salt.

    Raises:
        RollbackError: the image is older than the anchor (a restored copy).
        ForkError: the image has the anchored counter but another root (a clone), or the
            anchor kept moving while we advanced it.
        AnchorError: the anchor is unreadable or holds no CocoonFs state, or the image's
            counter is too far ahead of it.
        KbsError: the KBS ledger refused or could not be reached.
        ValueError: `anchor` does not enforce (`NoAnchor`), or a bad `volume_id`.
    """
    version, target = _prepare(image, anchor, volume_id)
    anchored = anchor.read(target)
    outcome, new = _judge(version, target, anchored)
    if new is None:
        return outcome
    try:
        anchor.advance(target, anchored, new)
    except ForkError:
        # Someone else moved the anchor since we read it (a concurrent run that anchored this
        # same image, or another copy). Judge the image again against what it holds now.
        anchored = anchor.read(target)
        outcome, new = _judge(version, target, anchored)
        if new is None:
            return outcome
        anchor.advance(target, anchored, new)
    return outcome


def check_anchored(
    image: CocoonFsImage | ImageVersion, anchor: Anchor, *, volume_id: bytes | None = None
) -> AnchorOutcome:
    """Compare an opened image with its anchor without writing anything.

    The status is CURRENT, AHEAD (the image is newer; `check_and_advance` would advance the
    anchor) or UNANCHORED (nothing to compare with). Arguments as `check_and_advance`.

    Raises:
        RollbackError: the image is older than the anchor (a restored copy).
        ForkError: the image has the anchored counter but another root (a clone).
        AnchorError: the anchor is unreadable or holds no CocoonFs state, or the image's
            counter is too far ahead of it.
        KbsError: the KBS ledger refused or could not be reached.
        ValueError: `anchor` does not enforce (`NoAnchor`), or a bad `volume_id`.
    """
    version, target = _prepare(image, anchor, volume_id)
    outcome, _ = _judge(version, target, anchor.read(target))
    return dataclasses.replace(outcome, status=_UNWRITTEN.get(outcome.status, outcome.status))
