"""`MemoryDevice`: a block device in a `bytearray`, for tests, crash states and demos."""

from __future__ import annotations

from cvmstore._types import BlockIndex
from cvmstore.block.protocol import SECTOR_SIZE, blocks_in, check_range
from cvmstore.errors import StateError

__all__ = ["MemoryDevice"]


class MemoryDevice:
    """A `BlockDevice` held in memory. `flush` is a no-op: every write is 'durable' at once."""

    def __init__(
        self, block_count: int, block_size: int = 4096, *, data: bytes | None = None
    ) -> None:
        if block_size <= 0 or block_size % SECTOR_SIZE:
            raise ValueError(f"block size must be a positive multiple of {SECTOR_SIZE}")
        if block_count <= 0:
            raise ValueError("a device needs at least one block")
        size = block_count * block_size
        if data is not None and len(data) != size:
            raise ValueError(f"initial data is {len(data)} bytes, the device {size}")
        self._block_size = block_size
        self._block_count = block_count
        self._buf: bytearray | None = bytearray(data) if data is not None else bytearray(size)

    @classmethod
    def from_image(cls, image: bytes, block_size: int = 4096) -> MemoryDevice:
        """Make a device holding a copy of `image` (its length a multiple of `block_size`)."""
        if not image or len(image) % block_size:
            raise ValueError(f"image length {len(image)} is not a multiple of {block_size}")
        return cls(len(image) // block_size, block_size, data=image)

    @property
    def block_size(self) -> int:
        """Bytes per block."""
        return self._block_size

    @property
    def block_count(self) -> int:
        """Number of blocks."""
        return self._block_count

    def _live(self) -> bytearray:
        if self._buf is None:
            raise StateError("the memory device is closed")
        return self._buf

    def read(self, first: BlockIndex, count: int = 1) -> bytes:
        """Read `count` blocks starting at `first`."""
        buf = self._live()
        check_range(self, first, count)
        start = first * self._block_size
        return bytes(buf[start : start + count * self._block_size])

    def write(self, first: BlockIndex, data: bytes) -> None:
        """Write whole blocks starting at `first`."""
        buf = self._live()
        check_range(self, first, blocks_in(self, data))
        start = first * self._block_size
        buf[start : start + len(data)] = data

    def flush(self) -> None:
        """No-op barrier (memory is as durable as it gets)."""
        self._live()

    def close(self) -> None:
        """Drop the contents."""
        self._buf = None

    def image(self) -> bytes:
        """Return a copy of the whole device, as a host would see the image file."""
        return bytes(self._live())
