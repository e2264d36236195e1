"""Small shared value types: `NewType`s for numbers and bytes that must not be confused."""

from __future__ import annotations

from typing import NewType

__all__ = ["BlockIndex"]

#: A block number on a `BlockDevice` (counted from 0, in units of the device's block size).
BlockIndex = NewType("BlockIndex", int)
