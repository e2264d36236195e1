"""Auxiliary metadata written by cvmstore (mkfs, online mkfs, keyless edits) reads the same in
the Rust `cocoonfs` tool, and the reverse; a keyless edit interrupted at any crash point
leaves the old or the new metadata for both tools, and the image still opens with the key."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cvmstore._types import BlockIndex
from cvmstore.block.memory import MemoryDevice
from cvmstore.cocoonfs.auxmeta import AuxFsMetadata, read_formatted_aux_metadata
from cvmstore.cocoonfs.auxwrite import update_aux_offline
from cvmstore.cocoonfs.mkfs import MkfsOptions, mkfs_info_header
from cvmstore.cocoonfs.volume import CocoonFsVolume
from cvmstore.errors import DeviceFullError
from cvmstore.testing.crash import CrashDevice
from tests.cocoonfs.conftest import KEY, Tool

BLOCK = 512
WRAPPED = uuid.UUID("5f3c0a1e-8d2b-4c6a-9e7f-0123456789ab")
OTHER = uuid.UUID("0a000000-0000-4000-8000-000000000001")
Entries = list[tuple[uuid.UUID, bytes]]


def _tool_entries(tool: Tool, image: Path) -> Entries:
    listed = tool.run(image, "aux-fs-metadata", "list-entries").decode().split()
    seen: dict[str, int] = {}
    out: Entries = []
    for text in listed:
        index = seen.get(text, 0)
        seen[text] = index + 1
        data = tool.run(image, "aux-fs-metadata", "read-entry", text, str(index))
        out.append((uuid.UUID(text), data))
    return out


def _ours(image: bytes) -> Entries:
    meta = read_formatted_aux_metadata(image)
    return [] if meta is None else list(meta.entries)


def _add(tag: uuid.UUID, data: bytes) -> Callable[[AuxFsMetadata], AuxFsMetadata]:
    def edit(current: AuxFsMetadata) -> AuxFsMetadata:
        return AuxFsMetadata((*current.entries, (tag, data)), current.extra_reserve_capacity)

    return edit


@pytest.mark.parametrize("reserve", [None, 1024, 4096])
def test_mkfs_with_entries_reads_in_the_tool(
    cocoonfs_tool: Tool, tmp_path: Path, reserve: int | None
) -> None:
    entries = ((WRAPPED, b"wrapped key " * 10), (OTHER, b""), (WRAPPED, b"second"))
    device = MemoryDevice(2048, BLOCK)
    CocoonFsVolume.mkfs(
        device,
        KEY,
        MkfsOptions(salt=b"ax", aux_entries=entries, aux_extra_reserve=reserve),
    ).write_file(16, b"data")
    image = tmp_path / "ours.img"
    image.write_bytes(device.image())
    expected = sorted(entries, key=lambda e: e[0].bytes)
    assert _tool_entries(cocoonfs_tool, image) == expected
    assert _ours(device.image()) == expected
    assert cocoonfs_tool.read_file(image, 16) == b"data"


def test_keyless_edits_on_a_tool_image_read_in_the_tool(
    cocoonfs_tool: Tool, tmp_path: Path
) -> None:
    image = tmp_path / "tool.img"
    cocoonfs_tool.mkfs(image, "sha2", "aes", "128", "-s", "1M")
    cocoonfs_tool.write_file(image, 16, b"file")
    device = MemoryDevice.from_image(image.read_bytes(), BLOCK)
    update_aux_offline(device, _add(WRAPPED, b"k" * 300))
    update_aux_offline(device, _add(OTHER, b"o"))
    image.write_bytes(device.image())
    assert _tool_entries(cocoonfs_tool, image) == [(OTHER, b"o"), (WRAPPED, b"k" * 300)]
    # The tool edits on; we read its edit; the key still opens everything in both.
    source = tmp_path / "in"
    source.write_bytes(b"from the tool")
    cocoonfs_tool.run(image, "aux-fs-metadata", "edit", "add-entry", "-i", str(source), str(OTHER))
    assert _ours(image.read_bytes()) == [
        (OTHER, b"o"),
        (OTHER, b"from the tool"),
        (WRAPPED, b"k" * 300),
    ]
    volume = CocoonFsVolume.open(MemoryDevice.from_image(image.read_bytes(), BLOCK), KEY)
    assert volume.read_file(16) == b"file"
    assert cocoonfs_tool.read_file(image, 16) == b"file"


def test_edit_beyond_the_room_or_without_group_1_changes_nothing(
    cocoonfs_tool: Tool, tmp_path: Path
) -> None:
    image = tmp_path / "small.img"
    cocoonfs_tool.mkfs(image, "sha2", "aes", "128", "-s", "1M")
    device = MemoryDevice.from_image(image.read_bytes(), BLOCK)
    before = device.image()
    with pytest.raises(DeviceFullError, match="do not fit"):
        update_aux_offline(device, _add(WRAPPED, b"x" * 5000))
    assert device.image() == before
    disabled = MemoryDevice(2048, BLOCK)
    CocoonFsVolume.mkfs(
        disabled, KEY, MkfsOptions(salt=b"d", aux_entries=((OTHER, b"1"),), aux_extra_reserve=None)
    )
    before = disabled.image()
    with pytest.raises(DeviceFullError, match="offline updates are disabled"):
        update_aux_offline(disabled, _add(WRAPPED, b"x"))
    assert disabled.image() == before


def test_online_mkfs_carries_the_headers_metadata_both_ways(
    cocoonfs_tool: Tool, tmp_path: Path
) -> None:
    ours = tmp_path / "ours.img"
    options = MkfsOptions(salt=b"ab", aux_entries=((WRAPPED, b"wrapped"),))
    ours.write_bytes(mkfs_info_header(options, 1 << 20).ljust(1 << 20, b"\0"))
    cocoonfs_tool.write_file(ours, 16, b"first boot")  # the tool formats it
    assert _tool_entries(cocoonfs_tool, ours) == [(WRAPPED, b"wrapped")]
    theirs = tmp_path / "theirs.img"
    cocoonfs_tool.run(
        theirs, "write-mkfs-info-header", "-H", "sha2", "-C", "aes", "-t", "128", "-I", "ab",
        "-s", "1M",
    )  # fmt: skip
    source = tmp_path / "in"
    source.write_bytes(b"entry")
    cocoonfs_tool.run(theirs, "aux-fs-metadata", "edit", "add-entry", "-i", str(source), str(OTHER))
    device = MemoryDevice.from_image(theirs.read_bytes(), BLOCK)
    CocoonFsVolume.open(device, KEY).write_file(16, b"first boot, ours")  # we format it
    theirs.write_bytes(device.image())
    assert _tool_entries(cocoonfs_tool, theirs) == [(OTHER, b"entry")]
    assert cocoonfs_tool.read_file(theirs, 16) == b"first boot, ours"


def test_keyless_edit_at_every_crash_point(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    cocoonfs_tool.mkfs(base, "sha2", "aes", "128", "-s", "256K")
    cocoonfs_tool.write_file(base, 16, b"file")
    device = MemoryDevice.from_image(base.read_bytes(), BLOCK)
    update_aux_offline(device, _add(WRAPPED, b"old"))
    old = _ours(device.image())
    crash = CrashDevice(MemoryDevice.from_image(device.image(), BLOCK))
    update_aux_offline(crash, _add(OTHER, b"new" * 100))
    new = _ours(crash.read(BlockIndex(0), crash.block_count))
    assert new != old
    copy = tmp_path / "state.img"
    states = olds = news = 0
    for point in crash.crash_points():
        for state in point.states(bound=16):
            states += 1
            image = state.image()
            ours = _ours(image)
            assert ours in (old, new), state.describe()
            copy.write_bytes(image)
            assert _tool_entries(cocoonfs_tool, copy) == ours, state.describe()
            olds += ours == old
            news += ours == new
            assert (
                CocoonFsVolume.open(MemoryDevice.from_image(image, BLOCK), KEY).read_file(16)
                == b"file"
            )
    print(f"{states} crash states of a keyless edit: {olds} old, {news} new")
    assert olds
    assert news
    result = subprocess.run(
        [str(cocoonfs_tool.path), "-i", str(copy), "-f", "read-file", "-K", KEY.hex(), "16"],
        capture_output=True,
        check=False,
    )
    assert result.stdout == b"file"


def test_online_mkfs_at_every_crash_point(cocoonfs_tool: Tool, tmp_path: Path) -> None:
    """A first keyed open that formats a `CCFSMKFS` volume, interrupted anywhere: the next
    open (ours or the tool's) finds the header or its backup, or the finished image, and
    always ends with the header's metadata in a working image."""
    entries = ((WRAPPED, b"wrapped"),)
    header = mkfs_info_header(MkfsOptions(salt=b"on", aux_entries=entries), 1 << 20)
    volume_bytes = header.ljust(1 << 20, b"\0")
    crash = CrashDevice(MemoryDevice.from_image(volume_bytes, BLOCK))
    CocoonFsVolume.open(crash, KEY).write_file(16, b"first boot")
    copy = tmp_path / "state.img"
    states = 0
    for point in crash.crash_points():
        for state in point.states(bound=4):
            states += 1
            image = state.image()
            device = MemoryDevice.from_image(image, BLOCK)
            volume = CocoonFsVolume.open(device, KEY)  # formats again if it must
            assert _ours(device.image()) == list(entries), state.describe()
            files = {e.inode for e in volume.list_files()}
            assert files <= {16}, state.describe()
            copy.write_bytes(image)
            cocoonfs_tool.write_file(copy, 17, b"tool")  # the tool copes with the same state
            assert cocoonfs_tool.read_file(copy, 17) == b"tool", state.describe()
    print(f"{states} crash states of an online mkfs")
    assert states > 20


def test_keyed_edit_grows_the_groups_and_survives_every_crash(
    cocoonfs_tool: Tool, tmp_path: Path
) -> None:
    """With the key, metadata larger than the groups' room goes into groups allocated anew,
    in one journaled transaction; every crash point opens old or new in both tools."""
    base = tmp_path / "base.img"
    cocoonfs_tool.mkfs(base, "sha2", "aes", "128", "-s", "1M")
    cocoonfs_tool.write_file(base, 16, b"file")
    old_entries = _ours(base.read_bytes())
    big = AuxFsMetadata(((WRAPPED, b"w" * 6000), (OTHER, b"o")), 2048)
    with pytest.raises(DeviceFullError):
        update_aux_offline(MemoryDevice.from_image(base.read_bytes(), BLOCK), lambda _: big)
    crash = CrashDevice(MemoryDevice.from_image(base.read_bytes(), BLOCK))
    CocoonFsVolume.open(crash, KEY).set_aux_metadata(big)
    new_entries = list(big.entries)
    new_entries.sort(key=lambda e: e[0].bytes)
    copy = tmp_path / "state.img"
    states = 0
    for point in crash.crash_points():
        for state in point.states(bound=4):
            states += 1
            device = MemoryDevice.from_image(state.image(), BLOCK)
            volume = CocoonFsVolume.open(device, KEY)  # replays a committed journal
            ours = _ours(device.image())
            assert ours in (old_entries, new_entries), state.describe()
            assert volume.read_file(16) == b"file"
            copy.write_bytes(state.image())
            assert cocoonfs_tool.read_file(copy, 16) == b"file"  # the tool replays too
            assert _tool_entries(cocoonfs_tool, copy) == ours, state.describe()
    print(f"{states} crash states of a keyed aux reallocation")
    final = tmp_path / "final.img"
    final.write_bytes(crash.read(BlockIndex(0), crash.block_count))
    assert _tool_entries(cocoonfs_tool, final) == new_entries
    # The new groups keep the reserve: a keyless edit now fits.
    device = MemoryDevice.from_image(final.read_bytes(), BLOCK)
    update_aux_offline(device, _add(OTHER, b"later"))
    final.write_bytes(device.image())
    assert (OTHER, b"later") in _tool_entries(cocoonfs_tool, final)
