"""The write path against the real `cocoonfs` tool, in both directions.

cvmstore writes to images the tool made and the tool reads them back byte for byte; the tool
writes to images cvmstore made (`CocoonFsVolume.mkfs`) and cvmstore reads them back. Every
algorithm combination the tool offers, two geometries (the tool's defaults and one with every
size changed), a multi-level inode index that grows and shrinks, a file scattered over many
extents, the update counter, a full image, bad arguments and a wrong key (nothing written) and a
tampered extent. Crash points of a transaction are `test_crash.py`'s.
"""

from __future__ import annotations

import itertools
import random
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from cvmstore.block.memory import MemoryDevice
from cvmstore.cocoonfs.image import (
    CocoonFsImage,
    _inode_extents,
    header_end_of,
    journal_head_extent,
    journal_pending,
)
from cvmstore.cocoonfs.layout import StaticHeader, decode_extent_ptr
from cvmstore.cocoonfs.mkfs import MkfsOptions, layout_for
from cvmstore.cocoonfs.tree import Extent
from cvmstore.cocoonfs.volume import CocoonFsVolume
from cvmstore.errors import DeviceFullError, IntegrityError, PathNotFoundError, WrongKeyError
from cvmstore.testing.crash import CrashDevice
from tests.cocoonfs.conftest import COMBOS, GEOMETRIES, KEY, Tool

TPM_NVCHIP = (1 << 32) | 0
TPM_MANUFACTURED = (1 << 32) | 1
SALT = bytes.fromhex("c0c00f5eed")  # what `Tool.mkfs` passes with -I
SECTOR = 512
IMAGE_SIZE = 2 << 20
COUNTER_MOD = 1 << 128
MAX_INODE = (1 << 64) - 1

#: inode -> (content, flags): what both tools must list and read.
Model = dict[int, tuple[bytes, int]]

#: The tool's `mkfs` size flags and the `MkfsOptions` field each one sets.
_FLAG_FIELDS = {
    "--allocation-block-size": "allocation_block_size",
    "--io-block-size": "io_block_size",
    "--auth-tree-data-block-size": "auth_tree_data_block_size",
    "--auth-tree-node-size": "auth_tree_node_size",
    "--inode-index-tree-leaf-node-size": "index_leaf_node_size",
    "--inode-index-tree-internal-node-size": "index_internal_node_size",
    "--allocation-bitmap-file-block-size": "bitmap_block_size",
}
_SUFFIX = {"B": 1, "K": 1 << 10, "M": 1 << 20}


def _size(text: str) -> int:
    """A size as cocoonfs-cli 0.1.3 reads it: with a unit, or bare, which it takes as twice
    the number (`--allocation-block-size 256` makes 512 B blocks, `-s 262144` a 512 KiB
    image); `test_cocoonfs_writes_to_a_cvmstore_mkfs` compares the layouts made."""
    if text[-1] in _SUFFIX:
        return int(text[:-1]) * _SUFFIX[text[-1]]
    return 2 * int(text)


def _options(geometry: str, hash_family: str, cipher: str, strength: str) -> MkfsOptions:
    """The `MkfsOptions` equivalent of `Tool.mkfs(..., *GEOMETRIES[geometry])`."""
    flags = GEOMETRIES[geometry]
    sizes: dict[str, int] = {}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        sizes[_FLAG_FIELDS[flag]] = _size(value)
    return MkfsOptions(
        SALT,
        hash_family=hash_family,
        cipher=cipher,
        strength=int(strength),
        allocation_block_size=sizes.get("allocation_block_size", 128),
        io_block_size=sizes.get("io_block_size"),
        auth_tree_data_block_size=sizes.get("auth_tree_data_block_size"),
        auth_tree_node_size=sizes.get("auth_tree_node_size"),
        index_leaf_node_size=sizes.get("index_leaf_node_size"),
        index_internal_node_size=sizes.get("index_internal_node_size"),
        bitmap_block_size=sizes.get("bitmap_block_size"),
    )


def _rng(*seed: object) -> random.Random:
    """Reproducible content per test case."""
    return random.Random(repr(seed))


def _advanced(counter: int, steps: int) -> int:
    return (counter + steps) % COUNTER_MOD


def _apply(model: Model, changes: Mapping[int, tuple[bytes, int] | None]) -> None:
    for inode, change in changes.items():
        if change is None:
            del model[inode]
        else:
            model[inode] = change


def _open(image: bytes) -> tuple[MemoryDevice, CocoonFsVolume]:
    device = MemoryDevice.from_image(image, SECTOR)
    return device, CocoonFsVolume.open(device, KEY)


def _assert_cvmstore_holds(volume: CocoonFsVolume, model: Model) -> None:
    assert [(e.inode, e.flags) for e in volume.list_files()] == [
        (n, model[n][1]) for n in sorted(model)
    ]
    for inode, (data, _) in model.items():
        assert volume.read_file(inode) == data, f"inode {inode}"


def _assert_tool_holds(tool: Tool, image: Path, model: Model, read_every: int = 1) -> None:
    """The tool lists exactly `model` and reads every file (every `read_every`-th, and the
    largest, when there are hundreds: each read is a process)."""
    assert tool.list_files(image) == [(n, model[n][1]) for n in sorted(model)]
    chosen = set(sorted(model)[::read_every]) | {max(model, key=lambda n: len(model[n][0]))}
    for inode in sorted(chosen):
        assert tool.read_file(image, inode) == model[inode][0], f"inode {inode}"


def _assert_both_hold(tool: Tool, image: Path, model: Model, read_every: int = 1) -> CocoonFsVolume:
    """Both tools read `model` from the image file; returns cvmstore's fresh view of it."""
    _assert_tool_holds(tool, image, model, read_every)
    _, volume = _open(image.read_bytes())
    _assert_cvmstore_holds(volume, model)
    return volume


def _tool_remove(tool: Tool, image: Path, inode: int) -> None:
    tool.run(image, "remove-file", "-K", KEY.hex(), str(inode))


def _tool_status(tool: Tool, image: Path, *args: str) -> int:
    """The tool's exit status (`Tool.run` insists on 0)."""
    result = subprocess.run(
        [str(tool.path), "-i", str(image), "-f", *args],
        capture_output=True,
        check=False,
        timeout=120,
    )
    return result.returncode


def _indirect(volume: CocoonFsVolume, inode: int) -> bool:
    entry = volume.image.entry(inode)
    assert entry is not None
    ptr = decode_extent_ptr(entry.extent_ptr)
    assert ptr is not None
    return ptr[2]


def _extent_bytes_at(volume: CocoonFsVolume, inode: int) -> tuple[int, int]:
    """(byte offset, byte length) of the extent an inode's index entry points at."""
    entry = volume.image.entry(inode)
    assert entry is not None
    ptr = decode_extent_ptr(entry.extent_ptr)
    assert ptr is not None
    shift = volume.image.layout.allocation_block_size_log2
    return ptr[0] << shift, ptr[1] << shift


def _extents_of(volume: CocoonFsVolume, inode: int) -> tuple[list[Extent], list[Extent]]:
    """An inode's data extents and the links of its chained extents list."""
    entry = volume.image.entry(inode)
    assert entry is not None
    links: list[Extent] = []
    image = volume.image
    extents = _inode_extents(image.data, image.layout, image._opened.root_key, entry, None, links)
    return extents, links


def _index_node_count(image: bytes) -> int:
    """Nodes of the inode index B+-tree, as a fresh open walks them."""
    return len(CocoonFsImage.open(image, KEY)._opened.index_nodes)


def _pending_journal(image: bytes) -> bool:
    static = StaticHeader.decode(image)
    head = journal_head_extent(static.layout, header_end_of(static))
    return journal_pending(image, static.layout, head)


def _made_by(
    origin: str,
    tool: Tool,
    image: Path,
    geometry: str = "default",
    combo: tuple[str, str, str] = ("sha2", "aes", "128"),
    size: int = IMAGE_SIZE,
) -> None:
    """A fresh, empty image file made by the tool's `mkfs` or by `CocoonFsVolume.mkfs`."""
    if origin == "tool":
        tool.mkfs(image, *combo, "-s", f"{size}B", *GEOMETRIES[geometry])
        return
    device = MemoryDevice(size // SECTOR, SECTOR)
    CocoonFsVolume.mkfs(device, KEY, _options(geometry, *combo))
    image.write_bytes(device.image())


# -- 1. cvmstore writes to images the tool made -----------------------------------------------


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize(("hash_family", "cipher", "strength"), COMBOS)
def test_cvmstore_writes_what_cocoonfs_reads(
    cocoonfs_tool: Tool, tmp_path: Path, hash_family: str, cipher: str, strength: str, geometry: str
) -> None:
    """Tool mkfs and files; cvmstore writes every file shape, overwrites, removes, batches;
    the tool reads it all exactly, writes and removes more, and cvmstore reads that back."""
    tool = cocoonfs_tool
    rng = _rng(hash_family, cipher, strength, geometry)
    image = tmp_path / "state.img"
    tool.mkfs(image, hash_family, cipher, strength, "-s", "2M", *GEOMETRIES[geometry])
    model: Model = {
        16: (rng.randbytes(5000), 0x03),
        17: (rng.randbytes(300), 0x00),
        18: (rng.randbytes(20_000), 0x10),
        19: (b"written by the tool", 0x20),
    }
    for inode, (data, flags) in model.items():
        tool.write_file(image, inode, data, flags)

    device, volume = _open(image.read_bytes())
    _assert_cvmstore_holds(volume, model)
    start = volume.update_counter
    ab = volume.image.layout.allocation_block_size
    writes: Model = {
        20: (b"", 0x7F),
        21: (rng.randbytes(100), 0x01),
        22: (rng.randbytes(64 * ab + 100), 0x02),  # over 64 Allocation Blocks
        TPM_NVCHIP: (rng.randbytes(16384), 0x01),
        TPM_MANUFACTURED: (b"COCONUT-SVSM", 0x80),
        17: (rng.randbytes(7000), 0xFF),  # overwrites a tool file
        MAX_INODE: (b"the last inode", 0x55),
    }
    for inode, (data, flags) in writes.items():
        volume.write_file(inode, data, flags)
    _apply(model, writes)
    volume.remove_file(19)  # a tool file
    del model[19]
    batch: dict[int, tuple[bytes, int] | None] = {
        16: None,
        18: (rng.randbytes(999), 0x44),
        23: (rng.randbytes(3000), 0x05),
        TPM_MANUFACTURED: (b"COCONUT-SVSM manufactured", 0x81),
    }
    volume.commit(batch)
    _apply(model, batch)

    assert volume.update_counter == _advanced(start, len(writes) + 2)
    assert _indirect(volume, 22)
    assert not _indirect(volume, 20)
    assert not _indirect(volume, 23)
    _assert_cvmstore_holds(volume, model)
    image.write_bytes(device.image())
    reopened = _assert_both_hold(tool, image, model)
    assert reopened.root_hmac == volume.root_hmac
    assert reopened.update_counter == volume.update_counter

    more: Model = {
        24: (rng.randbytes(2500), 0x09),
        22: (rng.randbytes(1234), 0x0A),  # cvmstore's extents-list file, now direct
    }
    for inode, (data, flags) in more.items():
        tool.write_file(image, inode, data, flags)
    _apply(model, more)
    for inode in (20, TPM_NVCHIP):  # cvmstore's empty file and an extents-list file
        _tool_remove(tool, image, inode)
        del model[inode]

    after = _assert_both_hold(tool, image, model)
    assert after.update_counter == _advanced(volume.update_counter, 4)
    # cvmstore carries on from the tool's state, and the tool from cvmstore's.
    device, volume = _open(image.read_bytes())
    volume.write_file(25, b"after the tool", 0x06)
    model[25] = (b"after the tool", 0x06)
    image.write_bytes(device.image())
    _assert_both_hold(tool, image, model)


# -- 2. the tool writes to images cvmstore made -------------------------------------------------


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize(("hash_family", "cipher", "strength"), COMBOS)
def test_cocoonfs_writes_to_a_cvmstore_mkfs(
    cocoonfs_tool: Tool, tmp_path: Path, hash_family: str, cipher: str, strength: str, geometry: str
) -> None:
    """cvmstore mkfs (same static header as the tool's for the same flags); the tool lists,
    writes and removes; cvmstore reads the tool's changes and writes; the tool reads those."""
    tool = cocoonfs_tool
    combo = (hash_family, cipher, strength)
    rng = _rng(*combo, geometry, "mkfs")
    options = _options(geometry, *combo)
    device = MemoryDevice(IMAGE_SIZE // SECTOR, SECTOR)
    volume = CocoonFsVolume.mkfs(device, KEY, options)
    assert volume.list_files() == []
    image = tmp_path / "ours.img"
    image.write_bytes(device.image())
    reference = tmp_path / "tool.img"
    tool.mkfs(reference, *combo, "-s", "2M", *GEOMETRIES[geometry])
    ours, theirs = image.read_bytes(), reference.read_bytes()
    static = StaticHeader.decode(theirs)
    assert static.layout == layout_for(options)
    assert StaticHeader.decode(ours) == static
    assert (
        volume.image.mutable_header.image_size_allocation_blocks
        == CocoonFsImage.open(theirs, KEY).mutable_header.image_size_allocation_blocks
    )

    assert tool.list_files(image) == []
    ab = volume.image.layout.allocation_block_size
    model: Model = {
        16: (rng.randbytes(700), 0x01),
        17: (rng.randbytes(64 * ab + 500), 0x02),
        18: (b"", 0xFF),
        TPM_NVCHIP: (rng.randbytes(16384), 0x00),
        TPM_MANUFACTURED: (b"COCONUT-SVSM", 0x00),
    }
    for inode, (data, flags) in model.items():
        tool.write_file(image, inode, data, flags)
    _tool_remove(tool, image, 18)
    del model[18]

    device, volume = _open(image.read_bytes())
    _assert_cvmstore_holds(volume, model)
    counter = volume.update_counter
    changes: dict[int, tuple[bytes, int] | None] = {
        17: (rng.randbytes(4000), 0x12),  # the tool's extents-list file, overwritten
        19: (rng.randbytes(64 * ab + 1), 0x13),
        16: None,
    }
    volume.commit(changes)
    _apply(model, changes)
    volume.write_file(20, b"", 0x00)
    model[20] = (b"", 0x00)
    assert volume.update_counter == _advanced(counter, 2)
    image.write_bytes(device.image())
    _assert_tool_holds(tool, image, model)

    for inode in (19, TPM_NVCHIP):
        _tool_remove(tool, image, inode)
        del model[inode]
    tool.write_file(image, 21, b"tool again", 0x21)
    model[21] = (b"tool again", 0x21)
    after = _assert_both_hold(tool, image, model)
    assert after.update_counter == _advanced(counter, 5)


# -- 3. a multi-level inode index, grown and shrunk -------------------------------------------


@pytest.mark.parametrize("origin", ["tool", "cvmstore"])
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_multi_level_index_grows_and_shrinks(
    cocoonfs_tool: Tool, tmp_path: Path, geometry: str, origin: str
) -> None:
    """60 inodes written by cvmstore, so the index B+-tree needs internal nodes (128 B leaves
    hold 5 entries in the default geometry); the tool reads and edits that tree; cvmstore
    removes most of them, the index shrinks, and both still agree."""
    tool = cocoonfs_tool
    rng = _rng(geometry, origin, "index")
    image = tmp_path / "index.img"
    _made_by(origin, tool, image, geometry)
    device, volume = _open(image.read_bytes())
    model: Model = {16 + 7 * i: (rng.randbytes(i * 13), i & 0xFF) for i in range(60)}
    inodes = sorted(model)
    for inode in inodes[:40]:
        volume.write_file(inode, *model[inode])
    volume.commit({n: model[n] for n in inodes[40:]})
    image.write_bytes(device.image())
    grown = _index_node_count(image.read_bytes())
    layout = volume.image.layout
    leaves = -(-(len(model) + 3) // ((layout.index_leaf_node_size - 28) // 20))  # + inodes 1-3
    assert leaves >= 2
    assert grown > leaves  # some internal nodes above the leaves
    _assert_both_hold(tool, image, model)

    # The tool edits cvmstore's tree: removes from and inserts into several leaves.
    for inode in inodes[1:12:3]:
        _tool_remove(tool, image, inode)
        del model[inode]
    for inode in (17, 16 + 7 * 30 + 1, 1 << 40):
        model[inode] = (rng.randbytes(50), 0x33)
        tool.write_file(image, inode, *model[inode])
    _assert_both_hold(tool, image, model)

    device, volume = _open(image.read_bytes())
    survivors = sorted(model)[::20]
    doomed = [n for n in sorted(model) if n not in survivors]
    for inode in doomed[:30]:
        volume.remove_file(inode)
    volume.commit(dict.fromkeys(doomed[30:]))
    for inode in doomed:
        del model[inode]
    image.write_bytes(device.image())
    assert len(model) == len(survivors) <= 4
    assert _index_node_count(image.read_bytes()) < grown
    _assert_both_hold(tool, image, model)
    # And the shrunk tree takes new entries from the tool.
    model[1 << 41] = (b"grow again", 0x44)
    tool.write_file(image, 1 << 41, b"grow again", 0x44)
    _assert_both_hold(tool, image, model)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_fragmented_file_many_extents(cocoonfs_tool: Tool, tmp_path: Path, geometry: str) -> None:
    """A file scattered over the holes left by removing every other file: an extents list of
    hundreds of extents over two chained links (default geometry), written by cvmstore for
    the tool; then the tool scatters one for cvmstore."""
    tool = cocoonfs_tool
    rng = _rng(geometry, "fragmented")
    image = tmp_path / "fragmented.img"
    tool.mkfs(image, "sha3", "aes", "192", "-s", "1M", *GEOMETRIES[geometry])
    device, volume = _open(image.read_bytes())
    io = volume.image.layout.io_block_size
    model: Model = {}
    inode = 1000
    for batch in (20, 1):  # fill the image with one-IO-Block files
        while True:
            changes = {inode + i: (rng.randbytes(io - 32), 0) for i in range(batch)}
            try:
                volume.commit(changes)
            except DeviceFullError:
                break
            _apply(model, changes)
            inode += batch
    holes = dict.fromkeys(sorted(model)[::2])
    volume.commit(holes)
    _apply(model, holes)
    size = (len(holes) // 2) * io - 32
    model[1 << 63] = (rng.randbytes(size), 0x01)
    volume.write_file(1 << 63, *model[1 << 63])

    extents, links = _extents_of(volume, 1 << 63)
    assert len(extents) > 50
    assert len(links) == (2 if geometry == "default" else 1)
    image.write_bytes(device.image())
    _assert_both_hold(tool, image, model, read_every=40)

    _tool_remove(tool, image, 1 << 63)
    # The tool's own writer takes far less than cvmstore here: at most 32 239 B of the 390
    # holes (default geometry), 13 807 B of the 54 (large); both fit 12 KiB.
    model[1 << 62] = (rng.randbytes(12 * 1024 - 32), 0x02)
    tool.write_file(image, 1 << 62, *model[1 << 62])
    del model[1 << 63]
    _assert_both_hold(tool, image, model, read_every=40)


# -- 4. the update counter --------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["tool", "cvmstore"])
def test_update_counter_one_per_transaction(
    cocoonfs_tool: Tool, tmp_path: Path, origin: str
) -> None:
    """+1 per cvmstore transaction (a batch is one), none for a refused one; the tool's
    writes continue the same count, and cvmstore continues the tool's."""
    tool = cocoonfs_tool
    image = tmp_path / "counter.img"
    _made_by(origin, tool, image, combo=("sha3", "camellia", "256"))
    device, volume = _open(image.read_bytes())
    seen = [volume.update_counter]

    volume.write_file(16, b"one")
    seen.append(volume.update_counter)
    volume.write_file(16, b"one, again", 1)
    seen.append(volume.update_counter)
    volume.commit({17: (b"two", 0), 18: (b"three", 0), 16: None})
    seen.append(volume.update_counter)
    volume.remove_file(17)
    seen.append(volume.update_counter)
    with pytest.raises(PathNotFoundError):
        volume.remove_file(17)
    with pytest.raises(ValueError, match="flags"):
        volume.write_file(19, b"x", 0x100)
    assert volume.update_counter == seen[-1]
    assert [b - a for a, b in itertools.pairwise(seen)] == [1, 1, 1, 1]
    image.write_bytes(device.image())
    assert _open(image.read_bytes())[1].update_counter == seen[-1]

    tool.write_file(image, 19, b"tool")
    tool.write_file(image, 20, b"tool")
    _tool_remove(tool, image, 18)
    device, volume = _open(image.read_bytes())
    assert volume.update_counter == _advanced(seen[-1], 3)
    volume.write_file(21, b"cvmstore")
    assert volume.update_counter == _advanced(seen[-1], 4)
    image.write_bytes(device.image())
    tool.write_file(image, 22, b"tool")
    assert _open(image.read_bytes())[1].update_counter == _advanced(seen[-1], 5)


# -- 5. a full image --------------------------------------------------------------------------


def _full_base(origin: str, tool: Tool, image: Path, model: Model) -> bytes:
    """A 256 KiB image holding `model` (written by the tool), as bytes."""
    _made_by(origin, tool, image, size=256 << 10)
    for inode, (data, flags) in model.items():
        tool.write_file(image, inode, data, flags)
    return image.read_bytes()


def _largest_fit(base: bytes, inode: int) -> int:
    """The largest file cvmstore writes to `base` as `inode` in one transaction (bisection);
    every refused size leaves the device exactly as it was."""

    def fits(size: int) -> bool:
        device, volume = _open(base)
        try:
            volume.write_file(inode, bytes(size))
        except DeviceFullError:
            assert device.image() == base
            return False
        return True

    low, high = 0, len(base)
    assert fits(low)
    assert not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


@pytest.mark.parametrize("origin", ["tool", "cvmstore"])
def test_image_full_changes_nothing(cocoonfs_tool: Tool, tmp_path: Path, origin: str) -> None:
    """A write that does not fit raises DeviceFullError and leaves every byte as it was, at
    the exact size boundary too; the tool still reads the image, before and after filling."""
    tool = cocoonfs_tool
    rng = _rng(origin, "full")
    image = tmp_path / "small.img"
    model: Model = {16: (rng.randbytes(3000), 0x01)}
    base = _full_base(origin, tool, image, model)
    low = _largest_fit(base, 17)

    device, volume = _open(base)
    counter = volume.update_counter
    with pytest.raises(DeviceFullError):
        volume.write_file(17, rng.randbytes(len(base)), 0x02)
    with pytest.raises(DeviceFullError):
        volume.write_file(17, rng.randbytes(low + 1), 0x02)
    with pytest.raises(DeviceFullError):  # one batch: the small part is not written either
        volume.commit({18: (b"small", 0), 17: (rng.randbytes(low + 1), 0)})
    assert device.image() == base
    assert volume.update_counter == counter
    assert volume.list_files() == CocoonFsImage.open(base, KEY).list_files()
    _assert_tool_holds(tool, image, model)

    # The same volume still writes after the refusals: exactly the boundary size fits.
    model[17] = (rng.randbytes(low), 0x02)
    volume.write_file(17, *model[17])
    image.write_bytes(device.image())
    _assert_both_hold(tool, image, model)
    full = device.image()
    with pytest.raises(DeviceFullError):
        volume.write_file(18, rng.randbytes(8192))
    assert device.image() == full
    _assert_both_hold(tool, image, model)

    # Small files, one transaction each, until the image refuses one.
    del model[17]
    device, volume = _open(base)
    inode = 100
    while True:
        before = device.image()
        data = rng.randbytes(4096)
        try:
            volume.write_file(inode, data, inode & 0xFF)
        except DeviceFullError:
            assert device.image() == before
            break
        model[inode] = (data, inode & 0xFF)
        inode += 1
    assert len(model) > 10
    image.write_bytes(device.image())
    _assert_both_hold(tool, image, model)


def _tool_largest_fit(tool: Tool, base: bytes, inode: int, scratch: Path) -> int:
    """The largest file `cocoonfs write-file` writes to `base` as `inode` (bisection)."""

    def fits(size: int) -> bool:
        scratch.write_bytes(base)
        source = scratch.with_suffix(".in")
        source.write_bytes(bytes(size))
        args = ("write-file", "-K", KEY.hex(), "-i", str(source), str(inode), "0")
        return _tool_status(tool, scratch, *args) == 0

    low, high = 0, len(base)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def _removals(tool: Tool, image: Path, full: bytes, inode: int) -> tuple[str, str]:
    """Remove `inode` from the image `full` with cvmstore and (on its own copy) the tool."""
    image.write_bytes(full)
    status = _tool_status(tool, image, "remove-file", "-K", KEY.hex(), str(inode))
    device, volume = _open(full)
    try:
        volume.remove_file(inode)
    except DeviceFullError as exc:
        assert device.image() == full
        ours = f"DeviceFullError({exc})"
    else:
        ours = "removed"
    return ours, "removed" if status == 0 else f"exit {status}"


@pytest.mark.parametrize("origin", ["tool", "cvmstore"])
def test_full_image_still_allows_removal(cocoonfs_tool: Tool, tmp_path: Path, origin: str) -> None:
    """Filled by its largest accepted write, an image must still let a file be removed. The
    tool's own write-file stops short of that point, and both tools remove from an image it
    filled; after the largest write cvmstore accepts, neither can, so the image is stuck:
    nothing more fits and nothing can be freed."""
    tool = cocoonfs_tool
    image = tmp_path / "removable.img"
    model: Model = {16: (_rng(origin, "removable").randbytes(3000), 0x01)}
    base = _full_base(origin, tool, image, model)

    tool_limit = _tool_largest_fit(tool, base, 17, tmp_path / "scratch.img")
    image.write_bytes(base)
    tool.write_file(image, 17, bytes(tool_limit))
    assert _removals(tool, image, image.read_bytes(), 17) == ("removed", "removed")

    our_limit = _largest_fit(base, 17)
    device, volume = _open(base)
    volume.write_file(17, bytes(our_limit))
    removals = _removals(tool, image, device.image(), 17)
    assert removals == ("removed", "removed"), (
        f"after cvmstore's largest write ({our_limit} B; the tool's is {tool_limit} B), "
        f"removing it: cvmstore {removals[0]}, cocoonfs {removals[1]}"
    )


# -- 6. bad arguments and a wrong key write nothing -------------------------------------------


def test_bad_arguments_change_nothing(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    tool = cocoonfs_tool
    image = tmp_path / "args.img"
    tool.mkfs(image, "sha2", "sm4", "128", "-s", "1M")
    model: Model = {16: (b"kept", 0x01)}
    tool.write_file(image, 16, *model[16])
    device, volume = _open(image.read_bytes())
    base = device.image()
    counter = volume.update_counter

    for inode in range(16):
        with pytest.raises(ValueError, match="reserved"):
            volume.write_file(inode, b"x")
        with pytest.raises(ValueError, match="reserved"):
            volume.commit({inode: (b"x", 0)})
        # Absent reserved inodes are refused as absent, present ones (1-3) as reserved.
        with pytest.raises((ValueError, PathNotFoundError)):
            volume.remove_file(inode)
    for inode in (-1, 1 << 64):
        with pytest.raises(ValueError, match="out of range"):
            volume.write_file(inode, b"x")
    for flags in (0x100, 0xFFFF_FFFF, -1):
        with pytest.raises(ValueError, match="flags"):
            volume.write_file(17, b"x", flags)
    with pytest.raises(ValueError, match="flags"):  # the valid part of a batch is not written
        volume.commit({17: (b"fine", 0), 18: (b"x", 0x1FF)})
    with pytest.raises(PathNotFoundError):
        volume.remove_file(17)

    assert device.image() == base
    assert volume.update_counter == counter
    assert _open(base)[1].root_hmac == volume.root_hmac
    # Nothing was half-done: the same volume object still writes, and the tool reads that.
    volume.write_file(17, b"after the refusals", 0x02)
    model[17] = (b"after the refusals", 0x02)
    image.write_bytes(device.image())
    _assert_both_hold(tool, image, model)


def test_wrong_key_writes_nothing(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    """A wrong key is refused before anything is written, also when a journal is pending
    (open would replay it)."""
    tool = cocoonfs_tool
    image = tmp_path / "key.img"
    tool.mkfs(image, "sm3", "sm4", "128", "-s", "1M")
    tool.write_file(image, 16, b"tool")
    base = image.read_bytes()
    # Not KEY + b"\x00": HMAC pads a short key with zeros, so both tools accept that one.
    wrong_keys = [bytes(reversed(KEY)), KEY[:-1], KEY[:-1] + bytes([KEY[-1] ^ 1]), bytes(24)]
    for key in wrong_keys:
        device = MemoryDevice.from_image(base, SECTOR)
        with pytest.raises(WrongKeyError):
            CocoonFsVolume.open(device, key)
        assert device.image() == base

    crash = CrashDevice(MemoryDevice.from_image(base, SECTOR))
    CocoonFsVolume.open(crash, KEY).commit({16: None, 17: (b"new", 1)})
    pending = [
        state.image()
        for point in crash.crash_points()
        if point.after == "flush"
        for state in point.states()
        if _pending_journal(state.image())
    ]
    assert pending
    for state in pending:
        for key in wrong_keys:
            device = MemoryDevice.from_image(state, SECTOR)
            with pytest.raises(WrongKeyError):
                CocoonFsVolume.open(device, key)
            assert device.image() == state


# -- 7. tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hash_family", "cipher", "strength"),
    [("sha2", "aes", "128"), ("sha3", "camellia", "256"), ("sm3", "sm4", "128")],
)
@pytest.mark.parametrize("target", ["direct-file", "extents-list"])
def test_flipped_byte_in_new_extent_refused_by_both(
    cocoonfs_tool: Tool,
    tmp_path: Path,
    hash_family: str,
    cipher: str,
    strength: str,
    target: str,
) -> None:
    tool = cocoonfs_tool
    image = tmp_path / "tamper.img"
    tool.mkfs(image, hash_family, cipher, strength, "-s", "1M")
    tool.write_file(image, 16, b"tool file", 0x01)
    device, volume = _open(image.read_bytes())
    inode = 17
    volume.write_file(inode, _rng(target).randbytes(1000 if target == "direct-file" else 20_000))
    assert _indirect(volume, inode) == (target == "extents-list")
    at, length = _extent_bytes_at(volume, inode)
    image.write_bytes(device.image())
    assert tool.read_file(image, inode) == volume.read_file(inode)

    raw = bytearray(device.image())
    raw[at + length // 2] ^= 0x01
    image.write_bytes(bytes(raw))

    _assert_both_refuse(tool, image, inode)


def _assert_both_refuse(tool: Tool, image: Path, inode: int) -> None:
    """Neither tool hands out `inode` of this image: cvmstore raises IntegrityError when it
    opens the image or, if it checks file blocks lazily, when it reads them."""
    with pytest.raises(IntegrityError):
        CocoonFsVolume.open(MemoryDevice.from_image(image.read_bytes(), SECTOR), KEY).read_file(
            inode
        )
    assert _tool_status(tool, image, "read-file", "-K", KEY.hex(), str(inode)) != 0


def test_transaction_next_to_a_tampered_block_refused(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    """A flipped byte in a tool file that shares an Authentication Tree Data Block with an
    index node cvmstore frees: the transaction that re-digests that block must check it
    first, refuse (IntegrityError) and write nothing, not seal the flip into a new root."""
    tool = cocoonfs_tool
    image = tmp_path / "neighbour.img"
    tool.mkfs(image, "sha2", "aes", "128", "-s", "256K")
    rng = _rng("neighbour")
    for i in range(6):  # odd sizes, so files and index nodes share data blocks
        tool.write_file(image, 16 + i, rng.randbytes(100 + 150 * i))
    _, volume = _open(image.read_bytes())
    opened = volume.image._opened
    per_block = 1 << volume.image.layout.auth_tree_data_block_allocation_blocks_log2
    owner: dict[int, int] = {}
    for entry in volume.list_files():
        for start, length in _extents_of(volume, entry.inode)[0]:
            owner.update(dict.fromkeys(range(start, start + length), entry.inode))
    shared = [
        (block, owner[block])
        for start, _ in opened.index_nodes
        for block in range(start - start % per_block, start - start % per_block + per_block)
        if block in owner
    ]
    assert shared, "no index node shares a data block with a file: change the file sizes"
    block, victim = shared[0]
    raw = bytearray(image.read_bytes())
    raw[(block << volume.image.layout.allocation_block_size_log2) + 50] ^= 0x01
    tampered = bytes(raw)
    image.write_bytes(tampered)

    device = MemoryDevice.from_image(tampered, SECTOR)
    with pytest.raises(IntegrityError):
        CocoonFsVolume.open(device, KEY).write_file(99, b"unrelated")
    assert device.image() == tampered
    _assert_both_refuse(tool, image, victim)
