"""Products and TCB versions: the 8-byte TCB_VERSION layout differs between CPU generations.

Milan and Genoa: byte 0 boot loader, 1 TEE, 2-5 reserved, 6 SNP, 7 microcode.
Turin and later: byte 0 FMC, 1 boot loader, 2 TEE, 3 SNP, 4-6 reserved, 7 microcode.
(AMD SEV-SNP ABI specification 56860, TCB_VERSION.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Product", "TcbVersion", "product_from_cpuid"]


class Product(enum.Enum):
    """The AMD EPYC generation that signed a report (its ARK and TCB layout follow)."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def turin_layout(self) -> bool:
        """Whether TCB values use the Turin layout (with an FMC component)."""
        return self is Product.TURIN


def product_from_cpuid(family: int, model: int) -> Product | None:
    """The product for a report's CPUID_FAM_ID and CPUID_MOD_ID (v3+), None if unknown."""
    if family == 0x19 and model <= 0x0F:
        return Product.MILAN
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return Product.GENOA
    if family == 0x1A and model <= 0x11:
        return Product.TURIN
    return None


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """One TCB version: the security patch level of each firmware component.

    `fmc` is None in the Milan/Genoa layout, which has no FMC component. `raw` keeps the
    8 bytes as stored, so a report re-encodes exactly.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None
    raw: bytes

    @classmethod
    def decode(cls, raw: bytes, *, turin: bool) -> TcbVersion:
        """Decode 8 stored bytes in the Milan/Genoa or the Turin layout."""
        if len(raw) != 8:
            raise ValueError("a TCB version is 8 bytes")
        if turin:
            return cls(raw[1], raw[2], raw[3], raw[7], raw[0], bytes(raw))
        return cls(raw[0], raw[1], raw[6], raw[7], None, bytes(raw))

    @classmethod
    def make(
        cls, *, bootloader: int, tee: int, snp: int, microcode: int, fmc: int | None = None
    ) -> TcbVersion:
        """Build a TCB version (Turin layout when `fmc` is given)."""
        if fmc is None:
            raw = bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode])
        else:
            raw = bytes([fmc, bootloader, tee, snp, 0, 0, 0, microcode])
        return cls.decode(raw, turin=fmc is not None)

    @property
    def reserved_ok(self) -> bool:
        """Whether the reserved bytes of the layout are zero."""
        reserved = self.raw[4:7] if self.fmc is not None else self.raw[2:6]
        return not any(reserved)

    def components(self) -> dict[str, int]:
        """Component name -> security patch level (the names policies and VCEKs use)."""
        parts = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            parts["fmc"] = self.fmc
        return parts

    def __str__(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.components().items())
