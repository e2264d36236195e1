"""Layer 1b, the secure store: confidentiality, integrity, atomic commits, freshness.

`format_store` and `open_store` are the common path. `cvmstore.integrity.tree`,
`.superblock`, `.entry` and `.geometry` are public but low-level: for compatible readers.
"""

from cvmstore.integrity.anchor import Anchor as Anchor
from cvmstore.integrity.anchor import AnchorState as AnchorState
from cvmstore.integrity.anchor import FileAnchor as FileAnchor
from cvmstore.integrity.anchor import MemoryAnchor as MemoryAnchor
from cvmstore.integrity.anchor import NoAnchor as NoAnchor
from cvmstore.integrity.store import AnchorPolicy as AnchorPolicy
from cvmstore.integrity.store import CheckReport as CheckReport
from cvmstore.integrity.store import SecureStore as SecureStore
from cvmstore.integrity.store import StoreInfo as StoreInfo
from cvmstore.integrity.store import StoreState as StoreState

format_store = SecureStore.format
open_store = SecureStore.open

__all__ = [
    "Anchor",
    "AnchorPolicy",
    "AnchorState",
    "CheckReport",
    "FileAnchor",
    "MemoryAnchor",
    "NoAnchor",
    "SecureStore",
    "StoreInfo",
    "StoreState",
    "format_store",
    "open_store",
]
