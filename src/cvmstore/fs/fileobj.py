"""Python file objects (`io.RawIOBase`, optionally buffered) over files of a `Filesystem`."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from cvmstore.errors import PathNotFoundError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from cvmstore.fs.filesystem import Filesystem

__all__ = ["FsFile", "open_file"]

DEFAULT_BUFFER = 1 << 20


class FsFile(io.RawIOBase):
    """A file of a `Filesystem`, read and written at a position, like `io.FileIO`.

    The object refers to the file's inode: after the file is removed, it raises
    `PathNotFoundError`. Each `write` is one commit unless a transaction is open.
    """

    def __init__(
        self, fs: Filesystem, ino: int, name: str, mode: str, *, read: bool, write: bool
    ) -> None:
        super().__init__()
        self._fs = fs
        self._ino = ino
        self._serial = fs._serials.get(ino, 0)
        self._read = read
        self._write = write
        self._append = "a" in mode
        self._pos = 0
        self.name = name
        self.mode = mode

    def readable(self) -> bool:
        """True when opened for reading."""
        return self._read

    def writable(self) -> bool:
        """True when opened for writing."""
        return self._write

    def seekable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read into `buffer` from the position; return the bytes read (0 at the end)."""
        self._check(self._read, "reading")
        view = memoryview(buffer).cast("B")
        data = self._fs._read_ino(self._live_ino(), self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        """Read from the position to the end of the file."""
        self._check(self._read, "reading")
        size = self._fs._size_ino(self._live_ino())
        data = self._fs._read_ino(self._ino, self._pos, max(0, size - self._pos))
        self._pos += len(data)
        return data

    def write(self, buffer: ReadableBuffer) -> int:
        """Write at the position (at the end in append mode); one commit unless in a transaction."""
        self._check(self._write, "writing")
        data = bytes(memoryview(buffer).cast("B"))
        if self._append:
            self._pos = self._fs._size_ino(self._live_ino())
        written = self._fs._write_ino(self._live_ino(), self._pos, data)
        self._pos += written
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position; past the end is allowed (a later write leaves a hole)."""
        self._check(True, "seeking")
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._pos + offset
        elif whence == io.SEEK_END:
            position = self._fs._size_ino(self._live_ino()) + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._pos = position
        return position

    def tell(self) -> int:
        """The position."""
        self._check(True, "telling")
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        """Cut or extend the file to `size` (default: the position)."""
        self._check(self._write, "truncating")
        size = self._pos if size is None else size
        if size < 0:
            raise ValueError(f"negative size {size}")
        self._fs._truncate_ino(self._live_ino(), size)
        return size

    def _live_ino(self) -> int:
        """The inode, unless the file was removed and its number given to a new one."""
        if self._fs._serials.get(self._ino, 0) != self._serial:
            raise PathNotFoundError(f"{self.name} was removed")
        return self._ino

    def _check(self, allowed: bool, what: str) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not allowed:
            raise io.UnsupportedOperation(f"file not open for {what}")


def open_file(fs: Filesystem, path: str, mode: str, buffering: int) -> io.IOBase:
    """`Filesystem.open`: parse `mode`, open or create the file, wrap it in a buffer."""
    base = mode.replace("b", "")
    if "t" in base or len(base) not in (1, 2) or base[0] not in "rwax" or base[1:] not in ("", "+"):
        raise ValueError(f"invalid mode {mode!r}: use a binary mode such as 'rb', 'r+b', 'wb'")
    plus = base.endswith("+")
    kind = base[0]
    ino = fs._open_ino(path, create=kind != "r", exclusive=kind == "x", truncate=kind == "w")
    raw = FsFile(fs, ino, path, mode, read=kind == "r" or plus, write=kind != "r" or plus)
    if buffering == 0:
        return raw
    size = DEFAULT_BUFFER if buffering < 0 else buffering
    if raw.readable() and raw.writable():
        return io.BufferedRandom(raw, size)
    if raw.writable():
        return io.BufferedWriter(raw, size)
    return io.BufferedReader(raw, size)
