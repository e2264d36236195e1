"""The SEV-SNP launch digest of an IGVM file: the PAGE_INFO chain the secure processor hashes.

For each 4 KiB page the launch imports, in directive order, the firmware computes
`digest = SHA-384(PAGE_INFO)`, where PAGE_INFO (0x70 bytes) is the previous digest (48
bytes, zeros at first), the page's contents digest (48 bytes: SHA-384 of the page for normal
and VMSA pages, zeros for the other types), the length 0x70 (u16), the page type (u8), the
IMI flag (u8), four bytes of reserved/VMPL permissions (zero), and the page's GPA (u64).

Two tools compute this from an IGVM file and differ in corner cases (docs/igvm.md):

| case | `igvm` crate (default here) | `igvmmeasure` (`style="igvmmeasure"`) |
|---|---|---|
| a parameter insert | one UNMEASURED page per page of the area | one UNMEASURED page |
| a page with the `shared` flag | not measured | measured as if not shared |
| a page without data | NORMAL page of zeros (QEMU's path) | the same; ZERO with `native_zero` |

With `check_kvm`, igvmmeasure's QEMU/KVM rules apply: one VMSA at GPA 0xFFFFFFFFF000, CR0
0x31 or 0x30, and no page after it.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Literal

from cvmstore.errors import FormatError
from cvmstore.igvm.format import (
    LARGE_PAGE,
    PAGE_SIZE,
    Header,
    HeaderType,
    IgvmFile,
    PageDataFlags,
    PageDataType,
    PlatformType,
)

__all__ = ["KVM_VMSA_GPA", "Measurement", "PageType", "measure_snp"]

KVM_VMSA_GPA = 0xFFFF_FFFF_F000
_PAGE_INFO = struct.Struct("<48s48sHBB4sQ")
_ZERO48 = bytes(48)
_VMSA_CR0 = 0x158
Style = Literal["igvm", "igvmmeasure"]


class PageType(enum.IntEnum):
    """PAGE_INFO.PAGE_TYPE (SNP firmware ABI)."""

    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


@dataclass(slots=True)
class Measurement:
    """The launch digest and how it was reached."""

    digest: bytes
    pages: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    id_block_ld: bytes | None = None  # the digest an SNP ID block in the file expects

    @property
    def hex(self) -> str:
        """The digest as lower-case hex (96 digits)."""
        return self.digest.hex()


class _Chain:
    def __init__(self) -> None:
        self.digest = _ZERO48
        self.counts = [0] * 7  # pages by PageType value

    def page(self, gpa: int, kind: int, contents: bytes = _ZERO48) -> None:
        info = _PAGE_INFO.pack(self.digest, contents, 0x70, kind, 0, _ZERO4, gpa)
        self.digest = _sha384(info).digest()
        self.counts[kind] += 1

    def result(self, id_block_ld: bytes | None) -> Measurement:
        by_type = {PageType(k).name: n for k, n in enumerate(self.counts) if n}
        return Measurement(self.digest, sum(self.counts), by_type, id_block_ld)


def measure_snp(
    igvm: IgvmFile,
    *,
    style: Style = "igvm",
    native_zero: bool = False,
    check_kvm: bool = False,
) -> Measurement:
    """The SEV-SNP launch digest of `igvm` (see the module docstring for the options).

    Raises:
        FormatError: the file supports no SEV-SNP platform, or breaks a `check_kvm` rule.
    """
    mask = igvm.platform_mask(PlatformType.SEV_SNP)
    if mask is None:
        raise FormatError("the file has no SEV-SNP platform to measure")
    chain = _Chain()
    areas: dict[int, int] = {}
    vmsas = 0
    id_block_ld: bytes | None = None
    pack, sha384 = _PAGE_INFO.pack, _sha384
    for header in igvm.directives():
        kind = header.kind
        if kind is _PAGE_DATA and not vmsas:
            fields = header.fields
            if (
                not fields["flags"]
                and fields["data_type"] == _NORMAL
                and header.data
                and int(fields["compatibility_mask"]) & mask == mask
            ):  # a plain page with data, the bulk of any file: inlined
                contents = sha384(header.data).digest()
                info = pack(chain.digest, contents, 0x70, _PT_NORMAL, 0, _ZERO4, fields["gpa"])
                chain.digest = sha384(info).digest()
                chain.counts[_PT_NORMAL] += 1
                continue
            if header.applies_to(mask):
                _page_data(chain, header, style=style, native_zero=native_zero)
            continue
        if kind is _PARAMETER_AREA:
            areas[header.number("parameter_area_index")] = header.number("number_of_bytes")
            continue
        if not header.applies_to(mask):
            continue
        if (
            check_kvm
            and vmsas
            and header.kind in (HeaderType.PAGE_DATA, HeaderType.PARAMETER_INSERT)
        ):
            raise FormatError("--check-kvm: a page follows the VMSA", offset=header.offset)
        if header.kind is HeaderType.PAGE_DATA:
            _page_data(chain, header, style=style, native_zero=native_zero)
        elif header.kind is HeaderType.PARAMETER_INSERT:
            gpa = header.number("gpa")
            size = areas.get(header.number("parameter_area_index"), PAGE_SIZE)
            count = 1 if style == "igvmmeasure" else size // PAGE_SIZE
            for k in range(count):
                chain.page(gpa + k * PAGE_SIZE, PageType.UNMEASURED)
        elif header.kind is HeaderType.VP_CONTEXT:
            vmsa = header.data or b""
            vmsas += 1
            if check_kvm:
                _check_kvm_vmsa(header, vmsa, vmsas)
            chain.page(header.number("gpa"), PageType.VMSA, hashlib.sha384(vmsa).digest())
        elif header.kind is HeaderType.SNP_ID_BLOCK:
            ld = header.fields["ld"]
            id_block_ld = ld if isinstance(ld, bytes) else None
    return chain.result(id_block_ld)


def _page_data(chain: _Chain, header: Header, *, style: Style, native_zero: bool) -> None:
    fields = header.fields
    flags = int(fields["flags"])
    gpa = int(fields["gpa"])
    data_type = int(fields["data_type"])
    if flags & _SHARED and style == "igvm":
        return  # host-visible: not part of the launch measurement
    size = LARGE_PAGE if flags & _LARGE else PAGE_SIZE
    for k in range(size // PAGE_SIZE):
        at = gpa + k * PAGE_SIZE
        if data_type == PageDataType.SECRETS:
            chain.page(at, PageType.SECRETS)
        elif data_type in (PageDataType.CPUID_DATA, PageDataType.CPUID_XF):
            chain.page(at, PageType.CPUID)
        elif flags & PageDataFlags.UNMEASURED:
            chain.page(at, PageType.UNMEASURED)
        elif header.data and k == 0:
            chain.page(at, PageType.NORMAL, hashlib.sha384(header.data).digest())
        elif native_zero:
            chain.page(at, PageType.ZERO)
        else:
            chain.page(at, PageType.NORMAL, _ZERO_PAGE_SHA384)


def _check_kvm_vmsa(header: Header, vmsa: bytes | memoryview, count: int) -> None:
    if count > 1:
        raise FormatError("--check-kvm: more than one VMSA", offset=header.offset)
    if header.number("gpa") != KVM_VMSA_GPA:
        raise FormatError(
            f"--check-kvm: the VMSA is at {header.number('gpa'):#x}, KVM puts it at "
            f"{KVM_VMSA_GPA:#x}",
            offset=header.offset,
        )
    (cr0,) = struct.unpack_from("<Q", vmsa, _VMSA_CR0)
    if cr0 not in (0x31, 0x30):
        raise FormatError(
            f"--check-kvm: VMSA CR0 {cr0:#x} is not 0x31 or 0x30", offset=header.offset
        )


_ZERO_PAGE_SHA384 = hashlib.sha384(bytes(PAGE_SIZE)).digest()
_ZERO4 = bytes(4)
_sha384 = hashlib.sha384
# Members bound once: attribute access on an enum class costs more than it looks, per page.
_PAGE_DATA = HeaderType.PAGE_DATA
_PARAMETER_AREA = HeaderType.PARAMETER_AREA
_NORMAL = int(PageDataType.NORMAL)
_PT_NORMAL = int(PageType.NORMAL)
_SHARED = int(PageDataFlags.SHARED)
_LARGE = int(PageDataFlags.IS_2MB_PAGE)
