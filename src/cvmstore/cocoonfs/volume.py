"""A writable CocoonFs image on a block device, each change one crash-safe transaction.

Open (replaying a pending journal), read, write and remove files.

Write order of a transaction (section "Journal"; docs/cocoonfs.md, "Writing"):

1. New data, extents lists and index nodes into blocks the current state leaves free; the
   staging copies of every in-place IO Block (mutable header, bitmap blocks); the journal
   log's tail extents. Barrier.
2. The journal log head (`CCFSJRNL`), torn-write protected; a head longer than one device
   block is written tail first, barrier, then its first device block. Barrier. From here on
   the transaction is committed: replay finishes it.
3. The staged IO Blocks at their targets and the rewritten authentication tree nodes. Barrier.
4. Zeros over the head's first IO Block, which ends the journal. Barrier.

A crash before step 2 completes leaves the old state, which never referenced anything
written in step 1; a crash after it leaves a journal that `open` replays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from cvmstore._types import BlockIndex
from cvmstore.block.protocol import BlockDevice
from cvmstore.cocoonfs.anchor import check_anchored, check_and_advance
from cvmstore.cocoonfs.auxmeta import AuxFsMetadata, read_mkfsinfo_aux_metadata
from cvmstore.cocoonfs.auxwrite import fail_safe_write
from cvmstore.cocoonfs.image import (
    FIRST_USER_INODE,
    CocoonFsImage,
    InodeEntry,
    _Opener,
    header_end_of,
    journal_head_extent,
    journal_pending,
)
from cvmstore.cocoonfs.journal import (
    JournalLog,
    decode_journal,
    encode_journal,
    encode_payload,
    tail_count,
    undisguise,
)
from cvmstore.cocoonfs.keys import KeyPurpose, derive_root_key, derive_subkey
from cvmstore.cocoonfs.layout import (
    CHECKSUM_LEN,
    MKFSINFO_MAGIC,
    MkfsInfoHeader,
    MutableHeader,
    StaticHeader,
    align_up,
)
from cvmstore.cocoonfs.mkfs import MkfsOptions, format_layout, mkfs_image, mkfsinfo_backup_offset
from cvmstore.cocoonfs.tree import Extent, TreeGeometry
from cvmstore.cocoonfs.writer import MAX_INODE, Plan, plan
from cvmstore.errors import (
    DeviceFullError,
    FormatError,
    IntegrityError,
    PathNotFoundError,
)
from cvmstore.integrity.anchor import Anchor

__all__ = ["CocoonFsVolume"]


class _Disk:
    """The device seen as bytes: writes go to a view and, in whole device blocks, below."""

    def __init__(self, device: BlockDevice, view: bytearray) -> None:
        self.device = device
        self.view = view
        self.dirty: set[int] = set()

    def write(self, offset: int, payload: bytes | bytearray) -> None:
        self.view[offset : offset + len(payload)] = payload
        bs = self.device.block_size
        self.dirty.update(range(offset // bs, -(-(offset + len(payload)) // bs)))

    def barrier(self) -> None:
        """Write every dirty device block, in runs, then flush."""
        bs = self.device.block_size
        runs: list[list[int]] = []
        for block in sorted(self.dirty):
            if runs and runs[-1][1] == block:
                runs[-1][1] = block + 1
            else:
                runs.append([block, block + 1])
        for first, end in runs:
            self.device.write(BlockIndex(first), bytes(self.view[first * bs : end * bs]))
        self.dirty.clear()
        self.device.flush()


class CocoonFsVolume:
    """A CocoonFs image on a `BlockDevice`, authenticated and writable."""

    def __init__(
        self,
        device: BlockDevice,
        image: CocoonFsImage,
        view: bytearray,
        anchor: Anchor | None = None,
    ) -> None:
        self.device = device
        self.image = image
        self._disk = _Disk(device, view)
        #: Where the update counter and root are kept against rollback (None: nowhere).
        self.anchor = anchor

    @classmethod
    def open(
        cls,
        device: BlockDevice,
        key: bytes,
        *,
        verify_all: bool = False,
        anchor: Anchor | None = None,
    ) -> CocoonFsVolume:
        """Open and authenticate the image on `device`, replaying a pending journal first.

        The headers, the root, the bitmap and the inode index are authenticated here; each
        file's blocks when it is read or replaced. `verify_all` checks every data block and
        tree node before returning (what `fsck` does).

        With an `anchor` (`FileAnchor`, `KbsAnchor`, ...), the image's update counter and
        root are compared with it before anything is written (a pending journal is replayed
        only if its result is not older than the anchor), recorded or advanced after the
        open, and advanced after every commit (`cvmstore.cocoonfs.anchor`).

        Raises:
            NotAnImageError, UnsupportedVersionError, FormatError, WrongKeyError,
            IntegrityError: as `CocoonFsImage.open`; nothing is written unless the journal
                replays to a state that authenticates.
        """
        raw = device.read(BlockIndex(0), device.block_count)
        view = bytearray(raw)
        pending_mkfs = _online_mkfs_source(raw)
        if pending_mkfs is not None:
            return cls._format_from_info(device, key, pending_mkfs, anchor)
        replayed = replay(raw, key)
        if replayed is None:
            opener = _Opener(raw, key, lazy=not verify_all)
            volume = cls(device, opener.run(CocoonFsImage), view, anchor)
            volume._anchor_state()
            return volume
        image, head = replayed
        if anchor is not None:
            check_anchored(image, anchor)  # an old journal must not roll the image back
        volume = cls(device, image, view, anchor)
        disk = volume._disk
        _write_changed(disk, image.data)
        disk.barrier()
        volume._end_journal(head)
        volume._sync_image()
        volume._anchor_state()
        return volume

    @classmethod
    def mkfs(
        cls,
        device: BlockDevice,
        key: bytes,
        options: MkfsOptions,
        *,
        anchor: Anchor | None = None,
    ) -> CocoonFsVolume:
        """Format the whole of `device` and open the result (which authenticates it)."""
        mkfs_image(device, key, options)
        return cls.open(device, key, anchor=anchor)

    def _anchor_state(self) -> None:
        """Record or advance the anchor to the current state (refusing an older one)."""
        if self.anchor is not None:
            check_and_advance(self.image, self.anchor)

    @classmethod
    def _format_from_info(
        cls, device: BlockDevice, key: bytes, view: bytes, anchor: Anchor | None
    ) -> CocoonFsVolume:
        """Online mkfs: format as the keyless `CCFSMKFS` header says, on the first keyed open.

        Section "Filesystem creation info header". The header (and its aux metadata blob) is
        first copied to the backup place near the volume's end, so a crash while the regular
        headers replace it leaves the backup, from which the next open starts again; the
        backup is invalidated once the image is in place. The header is not authenticated:
        whoever supplies the key vouches for the volume.
        """
        info = MkfsInfoHeader.decode(view)
        aux = read_mkfsinfo_aux_metadata(view)
        if info.image_size > len(view):
            raise FormatError("CocoonFs mkfs info header: the volume is smaller than the image")
        layout = info.layout
        header = view[: info.encoded_len]
        blob_len = (
            align_up(CHECKSUM_LEN + info.aux_fs_metadata_len, layout.io_block_size)
            if info.aux_fs_metadata_len
            else 0
        )
        blob = view[info.encoded_len : info.encoded_len + blob_len]
        backup = mkfsinfo_backup_offset(len(view))
        keep = None
        if backup is not None and backup >= blob_len and backup + len(header) <= len(view):
            if view[backup - blob_len : backup + len(header)] != blob + header:
                _write_backup(device, backup, blob, header)
            keep = (backup - blob_len, blob + header)
            # From here the start is no valid header of either kind until the new one is
            # complete: every reader (the Rust tool too) then turns to the backup, rather
            # than to a start header whose blob the new image is overwriting.
            device.write(BlockIndex(0), bytes(device.block_size))
            device.flush()
        format_layout(
            device, key, layout, info.salt, image_size=info.image_size, aux=aux, keep=keep
        )
        if backup is not None and keep is not None:
            bs = device.block_size
            device.write(BlockIndex(backup // bs), bytes(bs))  # the backup has done its job
            device.flush()
        return cls.open(device, key, anchor=anchor)

    # -- reading ----------------------------------------------------------------------------

    def list_files(self) -> list[InodeEntry]:
        """The application inodes, ascending."""
        return self.image.list_files()

    def read_file(self, inode: int) -> bytes:
        """The whole content of `inode` (`PathNotFoundError` if it does not exist)."""
        return self.image.read_file(inode)

    @property
    def update_counter(self) -> int:
        """The 128-bit update counter: +1 per transaction."""
        return self.image.update_counter

    @property
    def root_hmac(self) -> bytes:
        """The authentication tree root HMAC: binds all content, layout and the counter."""
        return self.image.mutable_header.root_hmac

    # -- writing ----------------------------------------------------------------------------

    def write_file(self, inode: int, data: bytes, flags: int = 0) -> None:
        """Create or replace `inode` with `data` (one transaction)."""
        self.commit({inode: (data, flags)})

    def remove_file(self, inode: int) -> None:
        """Remove `inode` (one transaction).

        Raises:
            ValueError: a reserved inode (0-15).
            PathNotFoundError: no such inode (nothing is written).
        """
        if not FIRST_USER_INODE <= inode <= MAX_INODE:
            raise ValueError(f"inode {inode} is reserved or out of range (16..2^64-1)")
        if self.image.entry(inode) is None:
            raise PathNotFoundError(f"CocoonFs inode {inode} does not exist")
        self.commit({inode: None})

    def commit(
        self,
        changes: Mapping[int, tuple[bytes, int] | None],
        *,
        aux: AuxFsMetadata | None = None,
    ) -> None:
        """Apply several writes (inode -> (data, flags)) and removals (None) atomically.

        `aux` also replaces the auxiliary metadata in the same transaction, in update groups
        allocated anew (sized for it and its extra reserve capacity).
        """
        p = plan(self.image, changes, aux=aux)
        self._write_plan(p)

    def set_aux_metadata(self, meta: AuxFsMetadata) -> None:
        """Replace the auxiliary metadata with the key, in one journaled transaction.

        The update groups are allocated anew, so the metadata may outgrow their old room.
        """
        self.commit({}, aux=meta)

    def _write_plan(self, p: Plan) -> None:
        image = self.image
        opened = image._opened
        layout = opened.layout
        io = layout.io_block_size
        io_ab = 1 << layout.io_block_allocation_blocks_log2
        disk = self._disk
        new = p.new

        staging = _take(p.spare, len(p.staged))
        writes = _merge_writes(list(zip(p.staged, staging, strict=True)))
        log = JournalLog(
            opened.tree_extents,
            opened.bitmap_extents,
            p.bitmap_digests,
            writes,
            _runs(p.changed_data_blocks),
            p.image.mutable_header.aux_fs_metadata_heads,  # the new list wins while pending
        )
        payload = encode_payload(log, opened.root_key, layout)
        head = opened.journal_head
        tails = [(k * io_ab, io_ab) for k in _take(p.spare, tail_count(layout, head, len(payload)))]
        head_raw, tail_raws = encode_journal(
            payload, log.aux_heads, opened.root_key, layout, head, tails
        )

        # 1: everything the current state does not reference.
        for k in p.direct:
            disk.write(k * io, new[k * io : (k + 1) * io])
        for target, copy in zip(p.staged, staging, strict=True):
            disk.write(copy * io, new[target * io : (target + 1) * io])
        shift = layout.allocation_block_size_log2
        for (start, _), raw in zip(tails, tail_raws, strict=True):
            disk.write(start << shift, raw)
        disk.barrier()
        # 2: the journal head commits the transaction.
        head_at = head[0] << shift
        first = self.device.block_size
        if len(head_raw) > first:
            disk.write(head_at + first, head_raw[first:])
            disk.barrier()
            disk.write(head_at, head_raw[:first])
        else:
            disk.write(head_at, head_raw)
        disk.barrier()
        # 3: apply.
        for k in [*p.staged, *p.tree]:
            disk.write(k * io, new[k * io : (k + 1) * io])
        disk.barrier()
        self.image = p.image
        self._end_journal(head)
        self._sync_image()
        self._anchor_state()

    def _end_journal(self, head: Extent) -> None:
        """Zero the head's first IO Block: the journal is done (fail-safe protocol step 1)."""
        layout = self.image.layout
        at = head[0] << layout.allocation_block_size_log2
        self._disk.write(
            at, bytes(min(layout.io_block_size, head[1] * layout.allocation_block_size))
        )
        self._disk.barrier()

    def _sync_image(self) -> None:
        """Let the in-memory state hold exactly what the device holds (free space included)."""
        self.image._opened.data = bytes(self._disk.view)


def _take(spare: Iterator[int], count: int) -> list[int]:
    out: list[int] = []
    for _ in range(count):
        block = next(spare, None)
        if block is None:
            raise DeviceFullError("CocoonFs image full: no room for the journal")
        out.append(block)
    return out


def _merge_writes(pairs: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(target, staging) IO Block pairs as (target, staging, count) runs, by target."""
    out: list[tuple[int, int, int]] = []
    for target, staging in sorted(pairs):
        if out and out[-1][0] + out[-1][2] == target and out[-1][1] + out[-1][2] == staging:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((target, staging, 1))
    return out


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def _write_changed(disk: _Disk, data: bytes) -> None:
    """Write every device block whose bytes differ from `data`."""
    bs = disk.device.block_size
    view = disk.view
    for block in range(len(data) // bs):
        part = data[block * bs : (block + 1) * bs]
        if view[block * bs : (block + 1) * bs] != part:
            disk.write(block * bs, part)


def replay(data: bytes, key: bytes) -> tuple[CocoonFsImage, Extent] | None:
    """The state a pending journal commits, authenticated, or None if none is pending.

    Nothing is written here: the caller persists the result only when this returns.

    Raises:
        WrongKeyError: the journal head does not authenticate under `key`.
        IntegrityError: the replayed image does not authenticate.
        FormatError: a malformed journal.
    """
    static = StaticHeader.decode(data)
    layout = static.layout
    head = journal_head_extent(layout, header_end_of(static))
    if not journal_pending(data, layout, head):
        return None
    root_key = derive_root_key(key, layout, static.salt)
    log = decode_journal(data, layout, root_key, head)
    if log is None:
        return None
    io = layout.io_block_size
    io_ab = 1 << layout.io_block_allocation_blocks_log2
    ab = layout.allocation_block_size
    view = bytearray(data)
    last_end = 0
    for target, staging, count in log.writes:
        if (
            target < last_end
            or (target + count) * io > len(data)
            or (staging + count) * io > len(data)
        ):
            raise FormatError("CocoonFs journal: write script out of order or beyond the image")
        last_end = target + count
        if target == staging:
            continue
        block = bytes(data[staging * io : (staging + count) * io])
        if log.disguise is not None:
            block = b"".join(
                undisguise(
                    layout,
                    log.disguise,
                    block[i * ab : (i + 1) * ab],
                    target * io_ab + i,
                    staging * io_ab + i,
                )
                for i in range(count * io_ab)
            )
        view[target * io : (target + count) * io] = block
    _check_bitmap_digests(bytes(view), root_key, log, static)
    try:
        opener = _Opener(bytes(view), key, journal_applied=True)
        image = opener.run(CocoonFsImage)
    except IntegrityError as exc:
        raise IntegrityError(f"CocoonFs journal replay does not authenticate: {exc}") from exc
    return image, head


def _check_bitmap_digests(
    data: bytes, root_key: bytes, log: JournalLog, static: StaticHeader
) -> None:
    """The bitmap blocks replay reads must be the ones the journal vouches for."""
    lay = static.layout
    mutable_at = static.encoded_len
    mutable = MutableHeader.decode(
        data[mutable_at : mutable_at + MutableHeader.encoded_len(lay)], lay
    )
    geometry = TreeGeometry(lay, log.tree_extents, mutable.image_size_allocation_blocks)
    key = derive_subkey(root_key, lay, KeyPurpose.AUTH_DATA, 1, 0)
    per = 1 << geometry.a
    for atdb, digest in log.bitmap_digests:
        index = geometry.data_index(atdb << geometry.a)
        if index is None:
            raise FormatError("CocoonFs journal: a bitmap digest inside the auth tree")
        if geometry.data_digest(key, data, index, [True] * per) != digest:
            raise IntegrityError("CocoonFs journal: a bitmap block does not match its digest")


def _write_backup(device: BlockDevice, offset: int, blob: bytes, header: bytes) -> None:
    """The backup `CCFSMKFS` copy: header invalidated, blob, then header (fail-safe)."""
    bs = device.block_size
    if offset % bs or len(blob) % bs or len(header) % bs:
        raise FormatError("CocoonFs mkfs info header: backup place not in whole device blocks")
    device.write(BlockIndex(offset // bs), bytes(bs))
    device.flush()
    if blob:
        device.write(BlockIndex((offset - len(blob)) // bs), blob)
        device.flush()
    fail_safe_write(device, offset, header)


def _online_mkfs_source(raw: bytes) -> bytes | None:
    """The volume an online mkfs should start (or restart) from, or None.

    A `CCFSMKFS` header with its aux metadata intact at the start; else, when the start
    holds no valid regular header (online mkfs was interrupted and overwrote the start), a
    valid backup copy, put back at the start of the returned bytes.
    """
    if raw[: len(MKFSINFO_MAGIC)] == MKFSINFO_MAGIC:
        try:
            MkfsInfoHeader.decode(raw)
            read_mkfsinfo_aux_metadata(raw)
        except FormatError:
            return _from_backup(raw)
        return raw
    try:
        StaticHeader.decode(raw)
    except FormatError:  # no regular header (NotAnImageError too), or a torn one
        return _from_backup(raw)
    return None


def _from_backup(raw: bytes) -> bytes | None:
    """`raw` with the backup `CCFSMKFS` header and blob at the start, if the backup is valid."""
    backup = mkfsinfo_backup_offset(len(raw))
    if backup is None:
        return None
    try:
        info = MkfsInfoHeader.decode(raw[backup:])
    except FormatError:
        return None
    blob_len = (
        align_up(CHECKSUM_LEN + info.aux_fs_metadata_len, info.layout.io_block_size)
        if info.aux_fs_metadata_len
        else 0
    )
    header = raw[backup : backup + info.encoded_len]
    blob = raw[backup - blob_len : backup]
    rebuilt = header + blob + raw[len(header) + len(blob) :]
    try:
        read_mkfsinfo_aux_metadata(rebuilt)
    except FormatError:
        return None
    return rebuilt
