"""cvmstore: trusted persistent storage for confidential VMs.

The common path (the "recipe" API)::

    from cvmstore import FileAnchor, format_store, open_store
    from cvmstore.block import FileDevice

    with FileDevice.create("state.img", 4 << 20) as device:
        store = format_store(device, root_secret, FileAnchor("state.anchor"))
        store.write(0, block)          # one logical block of store.block_size bytes
        store.commit()                 # atomic, durable, anchored

Layers, each a package whose imports point only down (docs/architecture.md): `block`
(untrusted devices), `crypto` (low-level), `integrity` (the secure store: confidentiality,
integrity, atomic commits, rollback and fork detection through an anchor), and `testing`
(crash enumeration and a hostile host). Guarantees and their tests: docs/guarantees.md.
Errors all derive from `cvmstore.errors.CvmstoreError`.
"""

__version__ = "0.1.0"

from cvmstore.integrity import AnchorPolicy as AnchorPolicy
from cvmstore.integrity import FileAnchor as FileAnchor
from cvmstore.integrity import NoAnchor as NoAnchor
from cvmstore.integrity import SecureStore as SecureStore
from cvmstore.integrity import format_store as format_store
from cvmstore.integrity import open_store as open_store

__all__ = [
    "AnchorPolicy",
    "FileAnchor",
    "NoAnchor",
    "SecureStore",
    "__version__",
    "format_store",
    "open_store",
]
