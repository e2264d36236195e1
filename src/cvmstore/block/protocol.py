"""The `BlockDevice` seam: fixed-size block storage that the host controls.

Everything above this layer treats a device as untrusted: it may lose writes that were not
flushed, tear a write at sector granularity, change, swap or replay blocks, or be restored
to an older copy. The secure store turns it into something trustworthy; this layer only moves
bytes.

Contract (checked for every implementation by `cvmstore.testing.check_block_device`):

- `read(first, count)` returns exactly `count * block_size` bytes; blocks never written
  read as zeros.
- `write(first, data)` takes a whole number of blocks (`len(data) % block_size == 0`, not
  empty). It may be buffered: only `flush` makes it durable.
- `flush()` is a durability barrier: when it returns, every earlier write is persistent.
- A range outside `[0, block_count)` raises `ValueError` (a caller bug, not host input);
  a failure of the storage below raises `DeviceError`; use after `close` raises
  `StateError`. `close` is idempotent and does not flush.
"""

from __future__ import annotations

from typing import Protocol

from cvmstore._types import BlockIndex

__all__ = ["SECTOR_SIZE", "BlockDevice", "check_range"]

#: The unit in which real disks tear a write, and in which crash tests tear one.
SECTOR_SIZE = 512


class BlockDevice(Protocol):
    """Fixed-size block storage. Untrusted: it may lose, reorder, tear or alter writes."""

    @property
    def block_size(self) -> int:
        """Bytes per block (a multiple of 512)."""
        ...

    @property
    def block_count(self) -> int:
        """Number of blocks on the device."""
        ...

    def read(self, first: BlockIndex, count: int = 1) -> bytes:
        """Read `count` blocks starting at `first`."""
        ...

    def write(self, first: BlockIndex, data: bytes) -> None:
        """Write whole blocks starting at `first` (not yet durable)."""
        ...

    def flush(self) -> None:
        """Durability barrier: every earlier write is persistent when this returns."""
        ...

    def close(self) -> None:
        """Release the device; idempotent; does not flush."""
        ...


def check_range(device: BlockDevice, first: int, count: int) -> None:
    """Raise `ValueError` unless `count >= 1` blocks from `first` lie on the device."""
    if count < 1 or first < 0 or first + count > device.block_count:
        raise ValueError(
            f"blocks {first}..{first + count - 1} are outside the device "
            f"(0..{device.block_count - 1})"
        )


def blocks_in(device: BlockDevice, data: bytes) -> int:
    """Return how many whole blocks `data` holds; `ValueError` if not a whole number."""
    count, rest = divmod(len(data), device.block_size)
    if rest or not count:
        raise ValueError(
            f"a write takes whole blocks of {device.block_size} bytes, got {len(data)} bytes"
        )
    return count
