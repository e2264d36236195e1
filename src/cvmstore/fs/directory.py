"""A directory in memory: its name index, and which of its blocks changed.

A directory is a file of directory blocks (layout.encode_dir_block). Loading one reads all
its blocks once and builds a dict, so lookups cost a dict probe however many entries it has.
A new entry goes to a block with room (else a new block at the end), a removed one leaves
room behind; only the blocks that changed are encoded again, at commit.
"""

from __future__ import annotations

from cvmstore.errors import FsCorruptError
from cvmstore.fs.layout import Kind, decode_dir_block, dir_capacity, record_size

__all__ = ["Directory"]


class Directory:
    """The entries of one directory inode, and its block bookkeeping."""

    def __init__(self, ino: int, block_size: int) -> None:
        self.ino = ino
        self._capacity = dir_capacity(block_size)
        self.blocks: list[dict[bytes, tuple[int, Kind]]] = []  # entries per directory block
        self._where: dict[bytes, int] = {}  # name -> directory block position
        self._room: list[int] = []
        self._hint = 0
        self.changed: set[int] = set()  # positions to encode again

    @classmethod
    def from_blocks(cls, ino: int, block_size: int, contents: list[bytes]) -> Directory:
        """Build the index from the directory's blocks, in file order."""
        directory = cls(ino, block_size)
        for position, block in enumerate(contents):
            entries = decode_dir_block(block, f"directory inode {ino}, block {position}")
            directory.blocks.append(entries)
            directory._room.append(directory._capacity - sum(record_size(name) for name in entries))
            for name in entries:
                if name in directory._where:
                    raise FsCorruptError(f"directory inode {ino}: name {name!r} appears twice")
                directory._where[name] = position
        return directory

    def __len__(self) -> int:
        return len(self._where)

    def lookup(self, name: bytes) -> tuple[int, Kind] | None:
        """(inode, kind) of `name`, or None."""
        position = self._where.get(name)
        return None if position is None else self.blocks[position][name]

    def names(self) -> list[bytes]:
        """Every name, in storage order."""
        return [name for entries in self.blocks for name in entries]

    def items(self) -> list[tuple[bytes, int, Kind]]:
        """Every (name, inode, kind), in storage order."""
        return [(n, i, k) for entries in self.blocks for n, (i, k) in entries.items()]

    def add(self, name: bytes, ino: int, kind: Kind) -> bool:
        """Add an entry; True when it needs a new block at the end (call `grow` first)."""
        need = record_size(name)
        position = self._find_room(need)
        if position is None:
            return True
        self.blocks[position][name] = (ino, kind)
        self._room[position] -= need
        self._where[name] = position
        self.changed.add(position)
        return False

    def grow(self) -> None:
        """Append an empty block (the caller has given the directory file one more block)."""
        self.blocks.append({})
        self._room.append(self._capacity)
        self._hint = len(self.blocks) - 1

    def _find_room(self, need: int) -> int | None:
        if self._hint < len(self._room) and self._room[self._hint] >= need:
            return self._hint
        for position, room in enumerate(self._room):
            if room >= need:
                self._hint = position
                return position
        return None

    def remove(self, name: bytes) -> None:
        """Drop an entry (it must exist)."""
        position = self._where.pop(name)
        del self.blocks[position][name]
        self._room[position] += record_size(name)
        self.changed.add(position)
        if position < self._hint:
            self._hint = position

    def trailing_empty(self) -> int:
        """How many blocks at the end hold nothing (the caller may shrink the file)."""
        count = 0
        for entries in reversed(self.blocks):
            if entries:
                break
            count += 1
        return count

    def shrink(self, count: int) -> None:
        """Forget the last `count` blocks (all empty)."""
        for _ in range(count):
            self.blocks.pop()
            self._room.pop()
            self.changed.discard(len(self.blocks))
        self._hint = min(self._hint, max(len(self.blocks) - 1, 0))
