"""Layer 2, the filesystem: directories and files in a `SecureStore`, atomic transactions.

The common path::

    from cvmstore.fs import make_filesystem, open_filesystem

    with make_filesystem(device, root_secret, FileAnchor("state.anchor")) as fs:
        with fs.transaction():                     # one atomic, durable, anchored commit
            fs.write_file("/uefi/db", db_bytes, parents=True)
            fs.write_file("/uefi/dbx", dbx_bytes)
        with fs.open("/vtpm/nv", "wb") as f:       # a Python file object
            f.write(state)
"""

from __future__ import annotations

import time

from cvmstore.block.protocol import BlockDevice
from cvmstore.fs.filesystem import Clock, DirEntry, Filesystem, Stat, Usage
from cvmstore.fs.fsck import FsckReport
from cvmstore.integrity.anchor import Anchor
from cvmstore.integrity.store import AnchorPolicy, SecureStore

__all__ = [
    "DirEntry",
    "Filesystem",
    "FsckReport",
    "Stat",
    "Usage",
    "make_filesystem",
    "open_filesystem",
]


def make_filesystem(
    device: BlockDevice,
    root_secret: bytes,
    anchor: Anchor,
    *,
    policy: AnchorPolicy | None = None,
    clock: Clock = time.time_ns,
) -> Filesystem:
    """Format a new secure store on `device` and make an empty filesystem in it."""
    store = SecureStore.format(device, root_secret, anchor, policy=policy)
    try:
        return Filesystem.format(store, clock=clock)
    except BaseException:
        store.close()
        raise


def open_filesystem(
    device: BlockDevice,
    root_secret: bytes,
    anchor: Anchor,
    *,
    policy: AnchorPolicy | None = None,
    clock: Clock = time.time_ns,
) -> Filesystem:
    """Open the store on `device` (verifying it against `anchor`) and its filesystem."""
    store = SecureStore.open(device, root_secret, anchor, policy=policy)
    try:
        return Filesystem.mount(store, clock=clock)
    except BaseException:
        store.close()
        raise
