"""Low-level cryptography for the secure store (the "hazmat" layer).

Low-level: use `cvmstore.integrity.format_store` / `open_store` unless you are implementing a
compatible reader. Every primitive comes from `cryptography`; this package only fixes how keys
are derived and separated, and how nonces are formed, so that the argument in
docs/format.md ("Keys and nonces") holds.
"""

from cvmstore.crypto.keys import GenerationCipher as GenerationCipher
from cvmstore.crypto.keys import VolumeKeys as VolumeKeys
from cvmstore.crypto.keys import derive_unlock_keys as derive_unlock_keys
from cvmstore.crypto.keys import new_volume_key as new_volume_key

__all__ = ["GenerationCipher", "VolumeKeys", "derive_unlock_keys", "new_volume_key"]
