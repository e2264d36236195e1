"""Image profiles: what QEMU demands of the image file it attaches to the guest.

Checked on this machine against QEMU 7.2 (`tests/qemu/test_qemu_attach.py` keeps it true):

- `pflash` (`-drive if=pflash,format=raw,unit=1`, the OVMF variable store slot): the size must
  be a non-zero multiple of 4 KiB, and on q35 the firmware code image (unit 0) plus this state
  image must not exceed 8 MiB. With a 4 MiB OVMF code file the state image is at most 4 MiB.
- `virtio` (`-drive if=virtio,format=raw`): any non-zero size that is a whole number of blocks.
"""

from __future__ import annotations

import enum
import os

from cvmstore._units import format_size
from cvmstore.errors import DeviceError

__all__ = ["PFLASH_GRANULE", "Q35_FLASH_LIMIT", "ImageProfile", "check_image_size"]

#: pflash images are made of 4 KiB erase sectors; QEMU refuses any other multiple.
PFLASH_GRANULE = 4096
#: q35 maps at most this much flash (code + state) below 4 GiB.
Q35_FLASH_LIMIT = 8 << 20


class ImageProfile(enum.Enum):
    """Which kind of QEMU drive the image is meant for."""

    PFLASH = "pflash"
    VIRTIO = "virtio"


def check_image_size(
    size: int,
    profile: ImageProfile,
    block_size: int,
    firmware_code: str | os.PathLike[str] | None = None,
) -> None:
    """Raise `DeviceError` (with the reason and the limit) if QEMU could not attach the image.

    Args:
        size: the image size in bytes.
        profile: the kind of drive.
        block_size: the block size the image is used with.
        firmware_code: for `pflash`, the firmware code file that will sit beside it as unit 0.
    """
    if size <= 0 or size % block_size:
        raise DeviceError(
            f"image size {size} is not a positive multiple of the {block_size}-byte block size"
        )
    if profile is ImageProfile.VIRTIO:
        return
    if size % PFLASH_GRANULE:
        raise DeviceError(
            f"a pflash image must be a multiple of 4 KiB; {size} bytes is not "
            f"(QEMU would refuse it)"
        )
    code_size = 0
    if firmware_code is not None:
        try:
            code_size = os.stat(firmware_code).st_size
        except OSError as exc:
            raise DeviceError(f"cannot read firmware code file {firmware_code}: {exc}") from exc
    if code_size + size > Q35_FLASH_LIMIT:
        room = Q35_FLASH_LIMIT - code_size
        beside = f" beside the {format_size(code_size)} firmware code {firmware_code}"
        raise DeviceError(
            f"a {format_size(size)} pflash image does not fit"
            f"{beside if firmware_code else ''}: q35 maps at most 8 MiB of flash in all, "
            f"so the state image can be at most {format_size(max(room, 0))}"
        )
