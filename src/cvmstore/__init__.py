"""cvmstore: trusted persistent storage for confidential VMs.

Layers, each a package whose imports point only down (docs/architecture.md):

- `cvmstore.block`: untrusted block devices (image files QEMU attaches, memory).
- `cvmstore.testing`: public test devices: crash enumeration, a hostile host.

Errors all derive from `cvmstore.errors.CvmstoreError`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
