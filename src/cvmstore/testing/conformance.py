"""The `BlockDevice` contract, written once and run against every implementation.

`check_block_device(make)` exercises one implementation through a factory that returns a new,
zero-filled device of the given geometry. It needs no test framework: a broken contract
raises `AssertionError` naming the clause. Integrators run it on their own devices too.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cvmstore._types import BlockIndex
from cvmstore.block.protocol import BlockDevice
from cvmstore.errors import StateError

__all__ = ["DeviceFactory", "check_block_device"]

DeviceFactory = Callable[[int, int], BlockDevice]


def _expect_raises(kind: type[Exception], clause: str, action: Callable[[], object]) -> None:
    try:
        action()
    except kind:
        return
    except Exception as exc:
        raise AssertionError(f"{clause}: raised {type(exc).__name__}, not {kind.__name__}") from exc
    raise AssertionError(f"{clause}: nothing was raised")


def _check(condition: bool, clause: str) -> None:
    if not condition:
        raise AssertionError(clause)


def check_block_device(make: DeviceFactory, *, block_size: int = 4096) -> int:
    """Run the contract against devices from `make(block_count, block_size)`.

    Returns:
        The number of clauses checked.
    """
    clauses = 0

    def clause(condition: bool, text: str) -> None:
        nonlocal clauses
        clauses += 1
        _check(condition, text)

    dev = make(16, block_size)
    clause(dev.block_size == block_size, "block_size is the requested size")
    clause(dev.block_count == 16, "block_count is the requested count")
    clause(dev.read(BlockIndex(0), 16) == bytes(16 * block_size), "a new device reads as zeros")

    one = os.urandom(block_size)
    dev.write(BlockIndex(3), one)
    clause(dev.read(BlockIndex(3)) == one, "a written block reads back")
    clause(dev.read(BlockIndex(2)) == bytes(block_size), "a write touches only its blocks")
    clause(dev.read(BlockIndex(4)) == bytes(block_size), "a write touches only its blocks")

    many = os.urandom(5 * block_size)
    dev.write(BlockIndex(11), many)
    clause(dev.read(BlockIndex(11), 5) == many, "a multi-block write reads back whole")
    clause(dev.read(BlockIndex(13)) == many[2 * block_size : 3 * block_size], "blocks split")
    last = os.urandom(block_size)
    dev.write(BlockIndex(15), last)
    clause(dev.read(BlockIndex(15)) == last, "the last block is writable")
    dev.write(BlockIndex(3), many[:block_size])
    clause(dev.read(BlockIndex(3)) == many[:block_size], "an overwrite replaces the block")
    dev.flush()
    clause(dev.read(BlockIndex(15)) == last, "flush keeps the contents")

    for text, action in [
        ("reading past the end", lambda: dev.read(BlockIndex(16))),
        ("reading across the end", lambda: dev.read(BlockIndex(14), 3)),
        ("reading a negative block", lambda: dev.read(BlockIndex(-1))),
        ("reading zero blocks", lambda: dev.read(BlockIndex(0), 0)),
        ("writing past the end", lambda: dev.write(BlockIndex(16), one)),
        ("writing across the end", lambda: dev.write(BlockIndex(15), many)),
        ("writing a partial block", lambda: dev.write(BlockIndex(0), one[:-1])),
        ("writing nothing", lambda: dev.write(BlockIndex(0), b"")),
    ]:
        clauses += 1
        _expect_raises(ValueError, f"{text} raises ValueError", action)
    clause(dev.read(BlockIndex(15)) == last, "a refused write changes nothing")

    dev.close()
    dev.close()
    clauses += 1
    _expect_raises(
        StateError, "read after close raises StateError", lambda: dev.read(BlockIndex(0))
    )
    clauses += 1
    _expect_raises(
        StateError, "write after close raises StateError", lambda: dev.write(BlockIndex(0), one)
    )
    clauses += 1
    _expect_raises(StateError, "flush after close raises StateError", dev.flush)
    return clauses
