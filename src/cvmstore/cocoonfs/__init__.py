"""CocoonFs format v1, the encrypted and authenticated filesystem COCONUT-SVSM keeps its state in.

Read path only: `CocoonFsImage.open` authenticates a whole image made by the Rust `cocoonfs`
tool, lists its files and reads them; `cvmstore.cocoonfs.auxmeta` reads the keyless (and
unauthenticated) auxiliary metadata. See docs/cocoonfs.md for what is implemented, what is
not, and the specification version followed.
"""

from cvmstore.cocoonfs.image import CocoonFsImage as CocoonFsImage
from cvmstore.cocoonfs.image import InodeEntry as InodeEntry

__all__ = ["CocoonFsImage", "InodeEntry"]
