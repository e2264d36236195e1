"""A pass-through `BlockDevice` wrapper: the base of the recording and hostile test devices."""

from __future__ import annotations

from cvmstore._types import BlockIndex
from cvmstore.block.protocol import BlockDevice

__all__ = ["PassThroughDevice"]


class PassThroughDevice:
    """Forwards every call to the wrapped device; subclasses intercept what they need."""

    def __init__(self, inner: BlockDevice) -> None:
        self._inner = inner

    @property
    def block_size(self) -> int:
        """Bytes per block of the wrapped device."""
        return self._inner.block_size

    @property
    def block_count(self) -> int:
        """Blocks of the wrapped device."""
        return self._inner.block_count

    @property
    def inner(self) -> BlockDevice:
        """The wrapped device."""
        return self._inner

    def read(self, first: BlockIndex, count: int = 1) -> bytes:
        """Read through."""
        return self._inner.read(first, count)

    def write(self, first: BlockIndex, data: bytes) -> None:
        """Write through."""
        self._inner.write(first, data)

    def flush(self) -> None:
        """Flush through."""
        self._inner.flush()

    def close(self) -> None:
        """Close the wrapped device."""
        self._inner.close()
