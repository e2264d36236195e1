"""Early attestation at boot: unlock and anchor a volume through the KBS (`boot`).

from cvmstore.guest import GuestConfig, boot

config = GuestConfig(url, "vtpm", evidence, kbs_key=thumbprint)
with boot(FileDevice.open("vtpm.img"), config) as booted:
    booted.fs.write_file("/nv", state)
"""

from cvmstore.guest.boot import BootReport as BootReport
from cvmstore.guest.boot import GuestConfig as GuestConfig
from cvmstore.guest.boot import boot as boot

__all__ = ["BootReport", "GuestConfig", "boot"]
