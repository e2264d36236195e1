"""Layer 0, untrusted storage: the `BlockDevice` seam and its backends.

Nothing here protects anything: a device is the host's, and the secure store above assumes it
may lose, tear, change, swap or replay any block (see docs/threat-model.md).
"""

from cvmstore.block.file import FileDevice as FileDevice
from cvmstore.block.memory import MemoryDevice as MemoryDevice
from cvmstore.block.profile import ImageProfile as ImageProfile
from cvmstore.block.profile import check_image_size as check_image_size
from cvmstore.block.protocol import SECTOR_SIZE as SECTOR_SIZE
from cvmstore.block.protocol import BlockDevice as BlockDevice

__all__ = [
    "SECTOR_SIZE",
    "BlockDevice",
    "FileDevice",
    "ImageProfile",
    "MemoryDevice",
    "check_image_size",
]
