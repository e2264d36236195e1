"""`SecureStore`: a trusted block store over an untrusted `BlockDevice`.

It keeps every block confidential (AES-256-GCM), detects any change, swap or replay of any
block (an authenticated tree whose root is in a MACed superblock), makes the writes between
two commits atomic and durable, and detects rollback and forks of the whole device by
comparing its newest commit with a trusted anchor.

Commit protocol (docs/format.md has the byte-level detail):

1. Data writes go to free data-area blocks as they happen (copy-on-write; never over a block
   the committed state references).
2. `commit()`: apply the frees to the bitmap; write the changed bitmap blocks and tree nodes,
   bottom up, each to the slot its committed entry does not use; **flush**.
3. Write the new superblock record (generation + 1, root entry, digest of the previous
   record, the anchored state it builds on) to the slot that does not hold the current
   record; **flush**.
4. Advance the anchor from the anchored state to the new one by compare-and-swap (strict
   mode: every commit; batched: every K commits or T seconds); then return.

Open: pick the valid superblock slot with the highest generation, then reconcile with the
anchor: equal → open; the image one step ahead of what it records as anchored and the anchor
still there → a crash fell between steps 3 and 4, so finish step 4; behind → `RollbackError`;
same generation with another digest, or a descent from another anchored state →
`ForkError`.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Self

from cvmstore._types import BlockIndex
from cvmstore.block.protocol import BlockDevice
from cvmstore.crypto.keys import (
    GenerationCipher,
    UnlockKeys,
    VolumeKeys,
    derive_unlock_keys,
    new_volume_key,
)
from cvmstore.errors import (
    AnchorError,
    CvmstoreError,
    DeviceError,
    DeviceFullError,
    ForkError,
    FormatError,
    IntegrityError,
    NotAnImageError,
    RollbackError,
    StateError,
    UnsupportedVersionError,
    WrongKeyError,
)
from cvmstore.integrity.alloc import Allocator
from cvmstore.integrity.anchor import Anchor, AnchorState
from cvmstore.integrity.entry import EMPTY, Entry, pack_entry, raw_entries
from cvmstore.integrity.geometry import ENTRY_SIZE, SUPERBLOCKS, Geometry, plan
from cvmstore.integrity.superblock import SLOT_SIZE, Algorithms, SuperblockSlot
from cvmstore.integrity.tree import Kind, NodeCache, aad

__all__ = ["AnchorPolicy", "CheckReport", "SecureStore", "StoreInfo", "StoreState"]

log = logging.getLogger("cvmstore.integrity")

Rng = Callable[[int], bytes]
Clock = Callable[[], float]
_ZERO_DIGEST = bytes(32)
_ZERO_RESERVED = bytes(4)
_INDEX_GEN = struct.Struct("<QQ")  # the tail of a block's associated data (tree.aad)


class StoreState(enum.Enum):
    """Lifecycle of a store object; FAILED is final (reopen to resume from the last commit).

    A store fails after an integrity failure, or an I/O or anchor failure in the middle of a
    write or commit.
    """

    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AnchorPolicy:
    """When commits are anchored.

    Attributes:
        every_commits: anchor at least every this many commits (1 = strict mode).
        every_seconds: in batched mode, also anchor once this much time has passed since
            the last anchored commit (checked at each commit).
    """

    every_commits: int = 1
    every_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.every_commits < 1:
            raise ValueError("every_commits must be at least 1")

    @property
    def strict(self) -> bool:
        """Every commit is anchored before it returns."""
        return self.every_commits == 1


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What `info()` reports (no secrets)."""

    volume_id: str
    generation: int
    anchored_generation: int | None
    rollback_window_commits: int
    rollback_window_seconds: float
    block_size: int
    logical_blocks: int
    physical_blocks: int
    used_blocks: int
    metadata_blocks: int
    tree_depth: int
    anchor: str


@dataclass(slots=True)
class CheckReport:
    """The result of `check()`: every problem found, with counts of what was verified."""

    problems: list[str] = field(default_factory=list)
    nodes: int = 0
    data_blocks: int = 0
    bitmap_blocks: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def _select_slot(
    device: BlockDevice, root_secret: bytes, rng: Rng
) -> tuple[SuperblockSlot, int, VolumeKeys, bool]:
    """Decode both slots, check key and MAC; return the newest valid one.

    Returns (slot, its index, keys, whether the other slot is a valid older commit or the
    same one). A read error is raised, never skipped: picking the older slot because the
    newer one could not be read would let the next commit overwrite what the newer one uses.
    """
    decoded: list[tuple[int, SuperblockSlot]] = []
    errors: list[CvmstoreError] = []
    for index in range(SUPERBLOCKS):
        raw = device.read(BlockIndex(index))
        try:
            decoded.append((index, SuperblockSlot.decode(raw[:SLOT_SIZE])))
        except FormatError as exc:
            errors.append(exc)
    if not decoded:
        for kind in (UnsupportedVersionError, NotAnImageError):
            if all(isinstance(e, kind) for e in errors):
                raise errors[0]
        raise FormatError(f"neither superblock slot can be read: {errors[0]}")
    valid: list[tuple[SuperblockSlot, int, VolumeKeys]] = []
    key_matched = False
    unlock_cache: dict[tuple[bytes, bytes], UnlockKeys] = {}
    for index, slot in decoded:
        unlock = unlock_cache.get((slot.salt, slot.volume_id))
        if unlock is None:
            unlock = derive_unlock_keys(root_secret, slot.salt, slot.volume_id)
            unlock_cache[(slot.salt, slot.volume_id)] = unlock
        if unlock.kcv != slot.kcv:
            continue
        key_matched = True
        volume_key = unlock.unwrap(slot.wrapped_key)
        if volume_key is None:
            continue
        keys = VolumeKeys(volume_key, slot.salt, slot.volume_id, rng)
        if keys.mac(slot.body()) == slot.mac:
            valid.append((slot, index, keys))
    if not key_matched:
        raise WrongKeyError("the key does not open this image (key check value differs)")
    if not valid:
        raise IntegrityError(
            "no superblock slot passes authentication", location="superblock slots A and B"
        )
    slot, index, keys = max(valid, key=lambda found: found[0].generation)
    other_ok = any(
        i != index and (s.generation < slot.generation or s.encode() == slot.encode())
        for s, i, _ in valid
    )
    return slot, index, keys, other_ok


class SecureStore:
    """A trusted block store. Use `format` or `open`; not thread-safe; single writer."""

    def __init__(
        self,
        device: BlockDevice,
        slot: SuperblockSlot,
        slot_index: int,
        keys: VolumeKeys,
        anchor: Anchor,
        policy: AnchorPolicy,
        cache_bytes: int,
        clock: Clock,
    ) -> None:
        self._device = device
        self._slot = slot
        self._slot_index = slot_index
        self._keys = keys
        self._anchor = anchor
        self._policy = policy
        self._clock = clock
        self._id = slot.volume_id
        self._geo = plan(slot.physical_blocks, slot.block_size)
        self._data_range = range(self._geo.data_start, self._geo.data_start + self._geo.data_blocks)
        self._root = slot.root
        self._nodes = NodeCache(
            device, self._geo, keys, self._id, lambda: self._root, cache_bytes // slot.block_size
        )
        self._alloc = Allocator(self._geo, self._load_bitmap, slot.cursor, slot.used_blocks)
        self._anchored: AnchorState | None = None
        self._anchored_at = clock()
        self._stale_other_slot = False
        self.state = StoreState.OPEN
        self.nonces_used: list[tuple[int, bytes]] | None = None  # set to a list to record

    # ---------------------------------------------------------------- format and open

    @classmethod
    def format(
        cls,
        device: BlockDevice,
        root_secret: bytes,
        anchor: Anchor,
        *,
        policy: AnchorPolicy | None = None,
        cache_bytes: int = 8 << 20,
        rng: Rng = os.urandom,
        clock: Clock = time.monotonic,
    ) -> Self:
        """Make a new, empty store on `device` and anchor its first commit.

        Only the two superblock blocks are written: the tree starts empty, so formatting
        takes the same time for 64 KiB and 64 GiB.

        Raises:
            DeviceError: the device is too small, or cannot be written.
            AnchorError: the anchor is unusable (for example a `FileAnchor` file that belongs
                to another volume); nothing is written then.
        """
        geo = plan(device.block_count, device.block_size)
        volume_id, salt, volume_key = rng(16), rng(32), new_volume_key(rng)
        if anchor.read(volume_id) is not None:  # also fails early on an unusable anchor
            raise AnchorError(f"the anchor already holds volume {volume_id.hex()}")
        unlock = derive_unlock_keys(root_secret, salt, volume_id)
        keys = VolumeKeys(volume_key, salt, volume_id, rng)
        slot = SuperblockSlot(
            algorithms=Algorithms(),
            block_size=geo.block_size,
            volume_id=volume_id,
            salt=salt,
            physical_blocks=geo.physical,
            logical_blocks=geo.logical,
            data_blocks=geo.data_blocks,
            kcv=unlock.kcv,
            wrapped_key=unlock.wrap(volume_key),
            generation=0,
            root=EMPTY,
            cursor=0,
            used_blocks=0,
            previous_digest=_ZERO_DIGEST,
            anchored_generation=0,
            anchored_digest=_ZERO_DIGEST,
        )
        slot = replace(slot, mac=keys.mac(slot.body()))
        block = slot.encode().ljust(geo.block_size, b"\0")
        device.write(BlockIndex(0), block + block)
        device.flush()
        store = cls(device, slot, 1, keys, anchor, policy or AnchorPolicy(), cache_bytes, clock)
        new = AnchorState(0, slot.digest())
        anchor.advance(volume_id, None, new)
        store._anchored = new
        return store

    @classmethod
    def open(
        cls,
        device: BlockDevice,
        root_secret: bytes,
        anchor: Anchor,
        *,
        policy: AnchorPolicy | None = None,
        cache_bytes: int = 8 << 20,
        rng: Rng = os.urandom,
        clock: Clock = time.monotonic,
    ) -> Self:
        """Open an existing store; verify it against the anchor first.

        Reads the two superblock slots and nothing else (the tree is verified lazily).

        Raises:
            NotAnImageError: the device holds no cvmstore image.
            UnsupportedVersionError: a format version or algorithm this code cannot read.
            WrongKeyError: the root secret does not open this image.
            IntegrityError: the superblocks fail authentication or the image is truncated.
            RollbackError: the image is older than the anchor.
            ForkError: the image diverged from the anchored history (a clone advanced).
        """
        slot, index, keys, other_ok = _select_slot(device, root_secret, rng)
        geo = plan(slot.physical_blocks, slot.block_size)
        if (geo.logical, geo.data_blocks) != (slot.logical_blocks, slot.data_blocks):
            raise FormatError("the recorded geometry does not match its plan", offset=80)
        if slot.block_size != device.block_size or slot.physical_blocks != device.block_count:
            raise IntegrityError(
                f"the image has {device.block_count} blocks of {device.block_size} bytes but "
                f"its header says {slot.physical_blocks} of {slot.block_size}: truncated or "
                f"resized",
                location="image size",
            )
        store = cls(device, slot, index, keys, anchor, policy or AnchorPolicy(), cache_bytes, clock)
        store._reconcile()
        store._stale_other_slot = not other_ok
        return store

    def _reconcile(self) -> None:
        slot = self._slot
        if not self._anchor.enforcing:
            log.warning(
                "volume %s opened without an anchor: restoring an older copy of the whole "
                "image, or running a clone of it, cannot be detected",
                self._id.hex(),
            )
            return
        anchored = self._anchor.read(self._id)
        generation, digest = slot.generation, slot.digest()
        if anchored is None:
            raise AnchorError(
                f"the anchor has no record of volume {self._id.hex()}: it was formatted "
                f"against another anchor"
            )
        if generation < anchored.generation:
            raise RollbackError(
                f"the image is at generation {generation} but the anchor holds generation "
                f"{anchored.generation}: an older copy of the image was restored",
                location="superblock",
            )
        if generation == anchored.generation:
            if digest != anchored.digest:
                raise ForkError(
                    f"generation {generation} on the image differs from the anchored one: "
                    f"another copy of this image advanced it",
                    location="superblock",
                )
            self._anchored = anchored
            return
        base = AnchorState(slot.anchored_generation, slot.anchored_digest)
        if base != anchored:
            raise ForkError(
                f"the image (generation {generation}) does not descend from the anchored "
                f"generation {anchored.generation}: another copy of this image advanced it",
                location="superblock",
            )
        # The image is ahead of the anchor by commits that were durable but not yet anchored
        # (a crash between writing a commit and anchoring it, or a batched window): finish.
        new = AnchorState(generation, digest)
        self._anchor.advance(self._id, anchored, new)
        self._anchored = new

    # ---------------------------------------------------------------- properties

    @property
    def block_size(self) -> int:
        """Bytes per logical block."""
        return self._geo.block_size

    @property
    def block_count(self) -> int:
        """Logical blocks."""
        return self._geo.logical

    @property
    def geometry(self) -> Geometry:
        """The on-device layout."""
        return self._geo

    @property
    def generation(self) -> int:
        """The newest committed generation."""
        return self._slot.generation

    @property
    def volume_id(self) -> bytes:
        """The volume's random 16-byte id."""
        return self._id

    @property
    def free_blocks(self) -> int:
        """Data-area blocks this commit can still take for new copies.

        A rewrite of a committed block needs a free block too: the old copy is freed only
        when the commit lands.
        """
        return self._alloc.free_count

    def rollback_window(self) -> tuple[int, float]:
        """(commits, seconds) not yet anchored: how far back the host could roll us."""
        if not self._anchor.enforcing:
            return (self._slot.generation, float("inf"))
        anchored = self._anchored.generation if self._anchored else 0
        behind = self._slot.generation - anchored
        return behind, (self._clock() - self._anchored_at) if behind else 0.0

    def info(self) -> StoreInfo:
        """A summary of the store (no secrets)."""
        self._check_open()
        commits, seconds = self.rollback_window()
        return StoreInfo(
            volume_id=self._id.hex(),
            generation=self._slot.generation,
            anchored_generation=self._anchored.generation if self._anchored else None,
            rollback_window_commits=commits,
            rollback_window_seconds=seconds,
            block_size=self._geo.block_size,
            logical_blocks=self._geo.logical,
            physical_blocks=self._geo.physical,
            used_blocks=self._alloc.used,
            metadata_blocks=self._geo.metadata_blocks,
            tree_depth=self._geo.depth,
            anchor=type(self._anchor).__name__,
        )

    # ---------------------------------------------------------------- reads and writes

    def _check_open(self) -> None:
        if self.state is not StoreState.OPEN:
            raise StateError(f"the store is {self.state.value}")

    def _failing(self, exc: CvmstoreError) -> CvmstoreError:
        # After an integrity failure, or an I/O or anchor failure in the middle of a change,
        # the in-memory state can no longer be trusted to match the image: reopen instead.
        self.state = StoreState.FAILED
        return exc

    def _before_change(self) -> None:
        """Before the first write: make the other superblock slot a copy of ours if needed.

        When the other slot is torn, damaged, or claims to be newer without being the one we
        trust, a later open could pick it up after our next commit has reused the copies it
        points at. Overwriting it first prevents that; read-only use never writes.
        """
        self._check_open()
        if self._stale_other_slot:
            block = self._slot.encode().ljust(self._geo.block_size, b"\0")
            self._device.write(BlockIndex(1 - self._slot_index), block)
            self._device.flush()
            self._stale_other_slot = False

    def _check_range(self, first: int, count: int) -> None:
        if count < 1 or first < 0 or first + count > self._geo.logical:
            raise ValueError(
                f"blocks {first}..{first + count - 1} are outside the store "
                f"(0..{self._geo.logical - 1})"
            )

    def read(self, index: int) -> bytes:
        """Return logical block `index`, verified. Never-written blocks read as zeros.

        Raises:
            IntegrityError: the block or a tree node on its path fails authentication.
        """
        return self.read_blocks(index, 1)

    def read_blocks(self, first: int, count: int) -> bytes:
        """Return `count` logical blocks from `first`, each verified.

        Blocks that lie in consecutive physical blocks are read with one device call.

        Raises:
            IntegrityError: a block or a tree node on a path fails authentication.
        """
        self._check_open()
        self._check_range(first, count)
        out: list[bytes] = []
        try:
            self._read_rows(first, self._leaf_rows(first, count), out)
            return b"".join(out)
        except IntegrityError as exc:
            raise self._failing(exc) from None

    def _read_rows(
        self, first: int, rows: list[tuple[int, int, bytes, bytes, bytes]], out: list[bytes]
    ) -> None:
        """Read and verify data blocks `first ..` whose leaf entries are `rows`.

        The hot path of every read, kept flat on purpose: it checks each entry as
        `_open_leaf` does and hands anything unusual to `_open_leaf` for the precise error.
        """
        bs = self._geo.block_size
        lo, hi = self._data_range.start, self._data_range.stop
        newest = self._slot.generation + 1
        prefix = self._id + bytes((Kind.DATA, 0))
        ciphers: dict[int, GenerationCipher] = {}
        k, n = 0, len(rows)
        while k < n:
            physical = rows[k][0]
            run = 1
            if physical == 0:
                while k + run < n and rows[k + run][0] == 0:
                    run += 1
                out.append(bytes(run * bs))
                k += run
                continue
            while k + run < n and rows[k + run][0] == physical + run:
                run += 1
            data = self._device.read(BlockIndex(physical), run)
            for j in range(k, k + run):
                phys, generation, nonce, tag, reserved = rows[j]
                block = data[(j - k) * bs : (j - k + 1) * bs]
                plain = None
                if reserved == _ZERO_RESERVED and lo <= phys < hi and generation <= newest:
                    cipher = ciphers.get(generation)
                    if cipher is None:
                        cipher = ciphers[generation] = self._keys.cipher(generation)
                    plain = cipher.decrypt(
                        nonce, block, tag, prefix + _INDEX_GEN.pack(first + j, generation)
                    )
                if plain is None:  # raises the precise error
                    plain = self._open_leaf(Kind.DATA, first + j, Entry.from_row(rows[j]), block)
                out.append(plain)
            k += run

    def _read_leaf(self, kind: Kind, index: int, entry: Entry) -> bytes:
        if entry.empty:
            return bytes(self._geo.block_size)
        return self._open_leaf(kind, index, entry, self._device.read(BlockIndex(entry.physical)))

    def _open_leaf(self, kind: Kind, index: int, entry: Entry, data: bytes) -> bytes:
        """Check where the entry points, then authenticate and decrypt the block."""
        if kind is Kind.DATA:
            placed = entry.physical in self._data_range
        else:
            placed = entry.physical in self._geo.bitmap_slots(index)
        if not placed:
            raise IntegrityError(
                f"entry points outside the {kind.name.lower()} area",
                location=_where(kind, index, entry),
            )
        if entry.generation > self._slot.generation + 1:
            raise IntegrityError(
                "entry is from a future generation", location=_where(kind, index, entry)
            )
        plain = self._keys.cipher(entry.generation).decrypt(
            entry.nonce, data, entry.tag, aad(self._id, kind, 0, index, entry.generation)
        )
        if plain is None:
            raise IntegrityError(
                f"{kind.name.lower()} block fails authentication",
                location=_where(kind, index, entry),
            )
        return plain

    def _load_bitmap(self, index: int) -> bytes:
        virtual = self._geo.logical + index
        return self._read_leaf(Kind.BITMAP, index, self._nodes.leaf(virtual))

    def _seal(
        self, kind: Kind, level: int, index: int, data: bytes, physical: int
    ) -> tuple[bytes, Entry]:
        generation = self._slot.generation + 1
        nonce = self._keys.next_nonce()
        if self.nonces_used is not None:
            self.nonces_used.append((generation, nonce))
        cipher = self._keys.cipher(generation)
        sealed, tag = cipher.encrypt(nonce, data, aad(self._id, kind, level, index, generation))
        return sealed, Entry(physical, generation, nonce, tag)

    def write(self, index: int, data: bytes) -> None:
        """Write logical block `index` (atomic and durable at the next `commit`).

        Raises:
            DeviceFullError: this commit holds as many new blocks as the spare allows;
                nothing was changed.
        """
        self.write_blocks(index, data)

    def write_blocks(self, first: int, data: bytes) -> None:
        """Write whole logical blocks from `first` (atomic and durable at the next `commit`).

        New copies are allocated in runs and written with one device call per run.

        Raises:
            DeviceFullError: the commit would need more new blocks than are free; nothing
                was changed.
        """
        self._before_change()
        bs = self._geo.block_size
        count, rest = divmod(len(data), bs)
        if rest or not count:
            raise ValueError(f"a write takes whole blocks of {bs} bytes, got {len(data)}")
        self._check_range(first, count)
        alloc = self._alloc
        try:
            rows = self._leaf_rows(first, count)
            fresh = sum(1 for row in rows if not row[0] or not alloc.is_pending(row[0]))
            if fresh > alloc.free_count:
                raise alloc.full_error()
            generation = self._slot.generation + 1
            cipher = self._keys.cipher(generation)
            prefix = self._id + bytes((Kind.DATA, 0))
            physicals: list[int] = []
            sealed: list[bytes] = []
            packed: list[bytes] = []
            for k, row in enumerate(rows):
                old = row[0]
                if old and alloc.is_pending(old):
                    physical = old  # written earlier in this commit: reuse in place
                else:
                    physical = alloc.allocate()
                    if old:
                        alloc.free(old)
                nonce = self._keys.next_nonce()
                if self.nonces_used is not None:
                    self.nonces_used.append((generation, nonce))
                block, tag = cipher.encrypt(
                    nonce,
                    data[k * bs : (k + 1) * bs],
                    prefix + _INDEX_GEN.pack(first + k, generation),
                )
                physicals.append(physical)
                sealed.append(block)
                packed.append(pack_entry(physical, generation, nonce, tag))
            start = 0
            for k in range(1, count + 1):
                if k == count or physicals[k] != physicals[k - 1] + 1:
                    self._device.write(BlockIndex(physicals[start]), b"".join(sealed[start:k]))
                    start = k
            self._nodes.set_leaf_run(first, b"".join(packed))
        except DeviceFullError:
            raise  # refused before anything changed
        except (IntegrityError, DeviceError) as exc:
            raise self._failing(exc) from None

    def _leaf_rows(self, first: int, count: int) -> list[tuple[int, int, bytes, bytes, bytes]]:
        """The raw leaf entries of logical blocks `first .. first+count-1`."""
        fanout = self._geo.fanout
        rows: list[tuple[int, int, bytes, bytes, bytes]] = []
        position, end = first, first + count
        while position < end:
            index, slot = divmod(position, fanout)
            take = min(end - position, fanout - slot)
            rows += raw_entries(self._nodes.node(0, index), slot * ENTRY_SIZE, take)
            position += take
        return rows

    def discard(self, index: int) -> None:
        """Forget logical block `index`: it reads as zeros and its space is freed."""
        self._before_change()
        self._check_range(index, 1)
        try:
            old = self._nodes.leaf(index)
            if old.empty:
                return
            if self._alloc.is_pending(old.physical):
                self._alloc.release(old.physical)
            else:
                self._alloc.free(old.physical)
            self._nodes.set_leaf(index, EMPTY)
        except IntegrityError as exc:
            raise self._failing(exc) from None

    # ---------------------------------------------------------------- commit

    @property
    def dirty(self) -> bool:
        """Whether there are uncommitted changes."""
        return self._nodes.dirty_count > 0 or self._alloc.changed

    def commit(self) -> int:
        """Make every write since the last commit atomic and durable; return the generation.

        With nothing to commit, returns the current generation and writes nothing.

        Raises:
            ForkError: another copy of the image advanced the anchor (the store fails).
        """
        self._check_open()
        if not self.dirty:
            return self._slot.generation
        try:
            return self._commit()
        except CvmstoreError as exc:
            raise self._failing(exc) from None

    def _commit(self, rewrap: tuple[bytes, bytes] | None = None) -> int:
        geo = self._geo
        for index, bitmap in self._alloc.prepare_commit().items():
            virtual = geo.logical + index
            target = _other(self._nodes.leaf(virtual).physical, geo.bitmap_slots(index))
            sealed, entry = self._seal(Kind.BITMAP, 0, index, bitmap, target)
            self._device.write(BlockIndex(target), sealed)
            self._nodes.set_leaf(virtual, entry)
        root = self._root
        for level in range(geo.depth):
            for index in self._nodes.dirty_at(level):
                target = _other(
                    self._nodes.child_entry(level, index).physical, geo.node_slots(level, index)
                )
                plain = bytes(self._nodes.dirty_node(level, index))
                sealed, entry = self._seal(Kind.NODE, level, index, plain, target)
                self._device.write(BlockIndex(target), sealed)
                if level == geo.depth - 1:
                    root = entry
                else:
                    self._nodes.set_child(level + 1, index, entry)
        self._device.flush()
        anchored = self._anchored or AnchorState(0, _ZERO_DIGEST)
        slot = replace(
            self._slot,
            generation=self._slot.generation + 1,
            root=root,
            cursor=self._alloc.cursor,
            used_blocks=self._alloc.used,
            previous_digest=self._slot.digest(),
            anchored_generation=anchored.generation,
            anchored_digest=anchored.digest,
        )
        if rewrap is not None:
            slot = replace(slot, kcv=rewrap[0], wrapped_key=rewrap[1])
        slot = replace(slot, mac=self._keys.mac(slot.body()))
        target = 1 - self._slot_index
        self._device.write(BlockIndex(target), slot.encode().ljust(geo.block_size, b"\0"))
        self._device.flush()
        self._slot, self._slot_index, self._root = slot, target, root
        self._nodes.mark_clean()
        self._alloc.committed()
        if self._due_for_anchor():
            self.anchor_now()
        return slot.generation

    def _due_for_anchor(self) -> bool:
        commits, seconds = self.rollback_window()
        every = self._policy.every_seconds
        return commits >= self._policy.every_commits or (every is not None and seconds >= every)

    def anchor_now(self) -> None:
        """Advance the anchor to the newest commit (closes the batched rollback window).

        Raises:
            ForkError: another copy of the image advanced the anchor (the store fails).
        """
        self._check_open()
        new = AnchorState(self._slot.generation, self._slot.digest())
        if self._anchored == new or not self._anchor.enforcing:
            return
        try:
            self._anchor.advance(self._id, self._anchored, new)
        except ForkError as exc:
            raise self._failing(exc) from None
        self._anchored = new
        self._anchored_at = self._clock()

    def abort(self) -> None:
        """Drop every change since the last commit."""
        self._check_open()
        self._nodes.forget()
        self._alloc = Allocator(
            self._geo, self._load_bitmap, self._slot.cursor, self._slot.used_blocks
        )

    def rekey(self, new_root_secret: bytes) -> None:
        """Move the store to a new root secret, crash-safely.

        The volume key is rewrapped under the new secret in two commits, one per superblock
        slot, so afterwards neither slot opens with the old secret. A crash in between
        leaves a store that opens with the new secret, or with the old one at the previous
        generation (which the anchor then reports as a rollback, as it is one).
        """
        self._before_change()
        if self.dirty:
            self.commit()
        unlock = derive_unlock_keys(new_root_secret, self._slot.salt, self._id)
        rewrap = (unlock.kcv, unlock.wrap(self._keys.volume_key))
        try:
            for _ in range(SUPERBLOCKS):
                self._commit(rewrap)
        except CvmstoreError as exc:
            raise self._failing(exc) from None
        self.anchor_now()  # also in batched mode: the old secret must not open a newer state

    def close(self) -> None:
        """Anchor any batched commits, then release the store (does not commit)."""
        if self.state is StoreState.OPEN:
            try:
                self.anchor_now()
            finally:
                self.state = StoreState.CLOSED

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- check

    def check(self, progress: Callable[[int, int], None] | None = None) -> CheckReport:
        """Verify every reachable node, data block and bitmap block, and the allocation.

        Reads everything from the device again (not from the cache) and reports every
        problem with its location instead of stopping at the first. `progress` gets
        (leaf nodes done, leaf nodes in all) as the data is verified.
        """
        self._check_open()
        report = CheckReport()
        geo = self._geo
        referenced: dict[int, int] = {}
        bitmap_leaves: dict[int, Entry] = {}
        try:
            nodes = list(self._nodes.walk())
        except IntegrityError as exc:
            report.problems.append(str(exc))
            return report
        leaves = sum(1 for level, _, _ in nodes if level == 0)
        done = 0
        for level, index, entry in nodes:
            report.nodes += 1
            if level != 0:
                continue
            done += 1
            if progress is not None:
                progress(done, leaves)
            try:
                buf = self._nodes.load_verified(0, index, entry)
            except IntegrityError as exc:
                report.problems.append(str(exc))
                continue
            for slot in range(geo.fanout):
                virtual = index * geo.fanout + slot
                if virtual >= geo.virtual:
                    break
                leaf = Entry.decode(buf, slot * ENTRY_SIZE)
                if leaf.empty:
                    continue
                if virtual >= geo.logical:
                    bitmap_leaves[virtual - geo.logical] = leaf
                    continue
                try:
                    self._read_leaf(Kind.DATA, virtual, leaf)
                    report.data_blocks += 1
                except IntegrityError as exc:
                    report.problems.append(str(exc))
                if leaf.physical in referenced:
                    report.problems.append(
                        f"block {leaf.physical} is used by logical blocks "
                        f"{referenced[leaf.physical]} and {virtual}"
                    )
                referenced[leaf.physical] = virtual
        marked: set[int] = set()
        for index in range(geo.bitmap_blocks):
            try:
                bits = self._read_leaf(Kind.BITMAP, index, bitmap_leaves.get(index, EMPTY))
            except IntegrityError as exc:
                report.problems.append(str(exc))
                continue
            report.bitmap_blocks += 1
            base = index * geo.block_size * 8
            for byte_index, byte in enumerate(bits):
                if byte:
                    for bit in range(8):
                        if byte >> bit & 1:
                            marked.add(geo.data_start + base + byte_index * 8 + bit)
        if not self.dirty:
            unmarked = sorted(set(referenced) - marked)
            leaked = sorted(marked - set(referenced))
            if unmarked:
                report.problems.append(f"blocks in use but free in the bitmap: {unmarked[:10]}")
            if leaked:
                report.problems.append(f"blocks marked used but unreferenced: {leaked[:10]}")
            if len(referenced) != self._slot.used_blocks:
                report.problems.append(
                    f"superblock counts {self._slot.used_blocks} used blocks, the tree "
                    f"references {len(referenced)}"
                )
        return report


def _where(kind: Kind, index: int, entry: Entry) -> str:
    """The location named in an integrity error (built only when one is raised)."""
    what = "logical block" if kind is Kind.DATA else "bitmap block"
    return f"{what} {index} at block {entry.physical}"


def _other(current: int, slots: tuple[int, int]) -> int:
    """The slot a new copy goes to: the one the committed entry does not point at."""
    return slots[1] if current == slots[0] else slots[0]
