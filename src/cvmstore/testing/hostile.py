"""The hostile host: an image surgeon, and a device that remembers every block version.

The threat model (docs/threat-model.md) lets the host change, drop, reorder and replay any
write, snapshot the whole image and restore an older snapshot, and copy the image to start a
second guest. Tests play that host with these tools:

- `surgeon` functions edit any `BlockDevice` (or an image file) directly: flip a bit, zero,
  swap or overwrite a block, take and restore whole-image snapshots, truncate or clone a file.
- `HostileDevice` wraps a device, keeps every version of every block ever written, and can
  put an older version back (`replay`), or silently drop writes while claiming success
  (`drop_writes`), as a lying host would.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cvmstore._types import BlockIndex
from cvmstore.block.file import fsync_directory
from cvmstore.block.protocol import BlockDevice, blocks_in, check_range
from cvmstore.testing._wrapper import PassThroughDevice

__all__ = [
    "HostileDevice",
    "clone_file",
    "flip_bit",
    "restore",
    "snapshot",
    "swap_blocks",
    "truncate_file",
    "zero_block",
]


def flip_bit(device: BlockDevice, block: int, bit: int) -> None:
    """Invert bit `bit` (0 = least significant bit of the first byte) of `block`."""
    data = bytearray(device.read(BlockIndex(block)))
    if not 0 <= bit < len(data) * 8:
        raise ValueError(f"bit {bit} is outside a {len(data)}-byte block")
    data[bit // 8] ^= 1 << (bit % 8)
    device.write(BlockIndex(block), bytes(data))


def zero_block(device: BlockDevice, block: int) -> None:
    """Overwrite `block` with zeros (what a sparse hole or a discard reads as)."""
    device.write(BlockIndex(block), bytes(device.block_size))


def swap_blocks(device: BlockDevice, a: int, b: int) -> None:
    """Exchange the contents of blocks `a` and `b`."""
    data_a, data_b = device.read(BlockIndex(a)), device.read(BlockIndex(b))
    device.write(BlockIndex(a), data_b)
    device.write(BlockIndex(b), data_a)


def snapshot(device: BlockDevice) -> bytes:
    """Copy the whole device, as the host copies an image file."""
    return device.read(BlockIndex(0), device.block_count)


def restore(device: BlockDevice, image: bytes) -> None:
    """Put a whole-device snapshot back (the whole-image rollback attack)."""
    if len(image) != device.block_count * device.block_size:
        raise ValueError("the snapshot is not the size of the device")
    device.write(BlockIndex(0), image)
    device.flush()


def truncate_file(path: str | os.PathLike[str], size: int) -> None:
    """Cut an image file down to `size` bytes."""
    os.truncate(path, size)


def clone_file(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy an image file, as a host does to start a second guest from it."""
    target = Path(dest)
    shutil.copyfile(source, target)
    fsync_directory(target.resolve().parent)
    return target


class HostileDevice(PassThroughDevice):
    """A `BlockDevice` wrapper that remembers every version of every block written to it.

    Attributes:
        drop_writes: while true, writes are acknowledged and silently discarded.
    """

    def __init__(self, inner: BlockDevice) -> None:
        super().__init__(inner)
        self._history: dict[int, list[bytes]] = {}
        self.drop_writes = False

    def write(self, first: BlockIndex, data: bytes) -> None:
        """Write through (unless dropping), remembering each block's new version."""
        count = blocks_in(self, data)
        check_range(self, first, count)
        bs = self.block_size
        for i in range(count):
            versions = self._history.setdefault(first + i, [])
            if not versions:
                versions.append(self._inner.read(BlockIndex(first + i)))
            versions.append(bytes(data[i * bs : (i + 1) * bs]))
        if not self.drop_writes:
            self._inner.write(first, data)

    def versions(self, block: int) -> list[bytes]:
        """Every version `block` has held since wrapping, oldest first (current last)."""
        return list(self._history.get(block, [self._inner.read(BlockIndex(block))]))

    def written_blocks(self) -> list[int]:
        """The blocks that were written at least once, in block order."""
        return sorted(self._history)

    def replay(self, block: int, version: int = -2) -> bytes:
        """Put an older version of `block` back in place and return it.

        Args:
            block: the block to roll back.
            version: index into `versions(block)`; -2 (the default) is the one before the
                current, 0 the content before the first write.

        Raises:
            ValueError: the block has no such version.
        """
        versions = self.versions(block)
        try:
            old = versions[version]
        except IndexError:
            raise ValueError(f"block {block} has only {len(versions)} version(s)") from None
        self._inner.write(BlockIndex(block), old)
        return old
