"""`FileDevice`: a block device on a raw image file, the file QEMU attaches to the guest.

The image is created sparse (`ftruncate`), so a 64 GiB virtio image costs nothing until
written. I/O is positional (`pread`/`pwrite`), so no shared file offset can be raced.
Creation is durable: the file and its directory are fsynced before `create` returns, so a
crash right after mkfs cannot leave an image that vanishes. `flush` is `fdatasync`: the size
never changes after creation, so the data is all there is to sync.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from cvmstore._types import BlockIndex
from cvmstore.block.profile import ImageProfile, check_image_size
from cvmstore.block.protocol import SECTOR_SIZE
from cvmstore.errors import DeviceError, StateError

__all__ = ["FileDevice", "fsync_directory"]


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileDevice:
    """A `BlockDevice` on a raw image file."""

    def __init__(self, fd: int, path: Path, block_size: int, block_count: int) -> None:
        self._fd = fd
        self._path = path
        self._block_size = block_size
        self._block_count = block_count
        self._size = block_size * block_count

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        size: int,
        *,
        profile: ImageProfile = ImageProfile.VIRTIO,
        block_size: int = 4096,
        firmware_code: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
    ) -> Self:
        """Create a zero-filled, sparse image of `size` bytes and open it.

        Raises:
            DeviceError: the size does not suit the profile, the file exists (and `overwrite`
                is false), or the file cannot be created.
        """
        _check_block_size(block_size)
        check_image_size(size, profile, block_size, firmware_code)
        image = Path(path)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(image, flags, 0o600)
        except FileExistsError as exc:
            raise DeviceError(f"{image} already exists (refusing to overwrite it)") from exc
        except OSError as exc:
            raise DeviceError(f"cannot create {image}: {exc.strerror}") from exc
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
            fsync_directory(image.resolve().parent)
        except OSError as exc:
            os.close(fd)
            raise DeviceError(f"cannot size {image} to {size} bytes: {exc.strerror}") from exc
        return cls(fd, image, block_size, size // block_size)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        profile: ImageProfile = ImageProfile.VIRTIO,
        block_size: int = 4096,
        firmware_code: str | os.PathLike[str] | None = None,
        read_only: bool = False,
    ) -> Self:
        """Open an existing image; its size must suit the profile and block size.

        Raises:
            DeviceError: the file is missing, unreadable, or of a size the profile refuses.
        """
        _check_block_size(block_size)
        image = Path(path)
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(image, flags)
        except OSError as exc:
            raise DeviceError(f"cannot open {image}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            check_image_size(size, profile, block_size, firmware_code)
        except OSError as exc:
            os.close(fd)
            raise DeviceError(f"cannot stat {image}: {exc.strerror}") from exc
        except DeviceError as exc:
            os.close(fd)
            raise DeviceError(f"{image}: {exc}") from None
        return cls(fd, image, block_size, size // block_size)

    @property
    def path(self) -> Path:
        """The image file."""
        return self._path

    @property
    def block_size(self) -> int:
        """Bytes per block."""
        return self._block_size

    @property
    def block_count(self) -> int:
        """Number of blocks."""
        return self._block_count

    def read(self, first: BlockIndex, count: int = 1) -> bytes:
        """Read `count` blocks starting at `first`."""
        # The hot path, kept flat on purpose (`cvmstore bench block` measures it): a closed
        # device has fd -1, which pread refuses with EBADF, so no separate check is needed.
        bs = self._block_size
        length = count * bs
        if count < 1 or first < 0 or (first + count) * bs > self._size:
            raise ValueError(f"blocks {first}+{count} are outside the device")
        try:
            data = os.pread(self._fd, length, first * bs)
        except OSError as exc:
            raise self._io_error("read", first, exc) from exc
        if len(data) != length:
            raise DeviceError(
                f"{self._path} ends before block {first + len(data) // bs}: "
                f"the image was truncated behind our back"
            )
        return data

    def write(self, first: BlockIndex, data: bytes) -> None:
        """Write whole blocks starting at `first` (durable after `flush`)."""
        bs = self._block_size
        length = len(data)
        if length % bs or not length or first < 0 or first * bs + length > self._size:
            raise ValueError(f"a write of {length} bytes at block {first} does not fit the device")
        try:
            written = os.pwrite(self._fd, data, first * bs)
            while written < length:  # pwrite may write less than asked; finish the rest
                written += os.pwrite(self._fd, memoryview(data)[written:], first * bs + written)
        except OSError as exc:
            raise self._io_error("write", first, exc) from exc

    def _io_error(self, what: str, first: int, exc: OSError) -> StateError | DeviceError:
        if self._fd < 0:
            return StateError(f"{self._path} is closed")
        return DeviceError(f"{what} of block {first} of {self._path} failed: {exc.strerror}")

    def flush(self) -> None:
        """`fdatasync` the image: every earlier write is durable when this returns."""
        if self._fd < 0:
            raise StateError(f"{self._path} is closed")
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise self._io_error("flush", 0, exc) from exc

    def close(self) -> None:
        """Close the file (idempotent, does not flush)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_block_size(block_size: int) -> None:
    if block_size <= 0 or block_size % SECTOR_SIZE:
        raise ValueError(f"block size must be a positive multiple of {SECTOR_SIZE}")
