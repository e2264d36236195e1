"""The SEV-SNP launch digest of IGVM files: the research note's worked example and each rule.

Expected digests come from the research note (§3.3, computed there with a separate parser
and checked against sev-snp-measure's GCTX) or from `chain` here, which packs PAGE_INFO from
the field table of research §2.2 on its own; the oracle test replays the same files into
sev-snp-measure.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Literal

import pytest

from cvmstore.errors import FormatError
from cvmstore.igvm.format import (
    PAGE_SIZE,
    HeaderType,
    IgvmBuilder,
    PageDataFlags,
    PageDataType,
    PlatformType,
    parse_igvm,
)
from cvmstore.igvm.measure import KVM_VMSA_GPA, Measurement, PageType, measure_snp

SNP, NATIVE, TDX = 1, 2, 4
LARGE = 0x20_0000
ZERO_PAGE_SHA384 = (
    "c0e59a3e3ffbd3b5c75428fb36432facabc745944296ff515f737c4fef4efc64"
    "586809f7a16f56354a1eaecf2aa8d774"
)
WORKED_FINAL = (
    "29e88dbc2110a9c6c69d95b8ade811b78de71da0bf98a260d683f216981dff36"
    "41757c22d9fb5e52182d2a6040af2ddf"
)
WORKED_STEP_1 = (
    "432b9a795510fbf3c79647ee3af4147e697431e01873b0a7b4a4a68cd9f0d7e6"
    "49c54bb70b84c23cc3a7c105bf9c8387"
)
# Research §3.3 gives the other steps by their first and last hex digits.
WORKED_STEPS = {
    2: ("3e0d45a1", "24db26"),
    3: ("94ba0abd", "8e7ea9"),
    4: ("b0182dbb", "1664ef"),
    5: ("1fe0d866", "f65970"),
    6: ("b2e5c5c6", "9caf2c"),
    7: ("b2e5c5c6", "9caf2c"),  # a parameter area and its usage measure nothing
    8: ("28716858", "77d854"),
}
WORKED_NATIVE_ZERO = ("c9808cca", "d371de85a")


def worked_vmsa(cr0: int = 0x30) -> bytes:
    """The research note's VMSA: a real-mode reset state at the KVM GPA."""
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<HHIQ", page, 0x10, 0xF000, 0x9B, 0xFFFF, 0xFFFF_0000)  # cs
    struct.pack_into("<Q", page, 0x178, 0xFFF0)  # rip
    struct.pack_into("<Q", page, 0xD0, 0x1000)  # efer
    struct.pack_into("<Q", page, 0x158, cr0)
    struct.pack_into("<Q", page, 0x3B0, 1)  # sev_features: SNP
    struct.pack_into("<Q", page, 0x3E8, 1)  # xcr0
    struct.pack_into("<Q", page, 0x268, 0x0007_0406_0007_0406)  # PAT
    return bytes(page)


def worked_example(steps: int = 9) -> IgvmBuilder:
    """Research §3.3, its first `steps` directives."""
    builder = IgvmBuilder().platform(PlatformType.SEV_SNP, SNP).policy(0x30000, SNP)
    directives: list[Callable[[IgvmBuilder], IgvmBuilder]] = [
        lambda b: b.page(0x1000, b"\x01" * PAGE_SIZE, SNP),
        lambda b: b.page(0x2000, b"\x02" * PAGE_SIZE, SNP),
        lambda b: b.page(0x3000, None, SNP),
        lambda b: b.page(0x4000, None, SNP, flags=PageDataFlags.UNMEASURED),
        lambda b: b.page(0x5000, None, SNP, data_type=PageDataType.SECRETS),
        lambda b: b.page(0x6000, None, SNP, data_type=PageDataType.CPUID_DATA),
        lambda b: b.parameter_area(0, PAGE_SIZE).parameter(HeaderType.VP_COUNT_PARAMETER, 0),
        lambda b: b.insert(0x7000, 0, SNP),
        lambda b: b.vp_context(KVM_VMSA_GPA, worked_vmsa(), SNP),
    ]
    for directive in directives[:steps]:
        directive(builder)
    return builder


def measure(
    builder: IgvmBuilder,
    *,
    style: Literal["igvm", "igvmmeasure"] = "igvm",
    native_zero: bool = False,
    check_kvm: bool = False,
) -> Measurement:
    igvm = parse_igvm(builder.build())
    return measure_snp(igvm, style=style, native_zero=native_zero, check_kvm=check_kvm)


def chain(*pages: tuple[int, int, bytes]) -> bytes:
    """The digest of (gpa, page type, contents digest or b"") pages, PAGE_INFO packed here."""
    digest = bytes(48)
    for gpa, page_type, contents in pages:
        info = digest + (contents or bytes(48))
        info += (0x70).to_bytes(2, "little") + bytes([page_type, 0]) + bytes(4)
        info += gpa.to_bytes(8, "little")
        assert len(info) == 0x70
        digest = hashlib.sha384(info).digest()
    return digest


def sha(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


ZERO = sha(bytes(PAGE_SIZE))


def snp() -> IgvmBuilder:
    return IgvmBuilder().platform(PlatformType.SEV_SNP, SNP)


# ------------------------------------------------------------------------- the worked example


def test_zero_page_digest_constant():
    assert ZERO.hex() == ZERO_PAGE_SHA384
    assert sha(worked_vmsa()).hex().startswith("fabba3b4")
    assert sha(worked_vmsa()).hex().endswith("ca822e79")


def test_page_types_are_the_firmware_codes():
    assert [(t.name, t.value) for t in PageType] == [
        ("NORMAL", 1),
        ("VMSA", 2),
        ("ZERO", 3),
        ("UNMEASURED", 4),
        ("SECRETS", 5),
        ("CPUID", 6),
    ]


def test_worked_example_final_digest():
    result = measure(worked_example())
    assert result.hex == WORKED_FINAL
    assert result.digest == bytes.fromhex(WORKED_FINAL)
    assert result.pages == 8
    assert result.by_type == {"NORMAL": 3, "UNMEASURED": 2, "SECRETS": 1, "CPUID": 1, "VMSA": 1}
    assert result.id_block_ld is None
    # COCONUT-shaped file: the two tools agree, and it passes the KVM rules.
    assert measure(worked_example(), style="igvmmeasure").hex == WORKED_FINAL
    assert measure(worked_example(), check_kvm=True).hex == WORKED_FINAL


def test_worked_example_native_zero():
    result = measure(worked_example(), native_zero=True)
    assert result.hex.startswith(WORKED_NATIVE_ZERO[0])
    assert result.hex.endswith(WORKED_NATIVE_ZERO[1])
    assert result.by_type["ZERO"] == 1
    assert result.by_type["NORMAL"] == 2


def test_worked_example_step_1_in_full():
    assert measure(worked_example(1)).hex == WORKED_STEP_1


@pytest.mark.parametrize("step", list(WORKED_STEPS))
def test_worked_example_each_step(step):
    first, last = WORKED_STEPS[step]
    digest = measure(worked_example(step)).hex
    assert digest.startswith(first)
    assert digest.endswith(last)


def test_worked_example_matches_page_info_packed_here():
    expected = chain(
        (0x1000, 1, sha(b"\x01" * PAGE_SIZE)),
        (0x2000, 1, sha(b"\x02" * PAGE_SIZE)),
        (0x3000, 1, ZERO),
        (0x4000, 4, b""),
        (0x5000, 5, b""),
        (0x6000, 6, b""),
        (0x7000, 4, b""),
        (KVM_VMSA_GPA, 2, sha(worked_vmsa())),
    )
    assert expected.hex() == WORKED_FINAL


def test_an_empty_directive_list_is_the_zero_digest():
    assert measure(snp()).digest == bytes(48)
    assert measure(snp()).pages == 0


# ------------------------------------------------------------------------- style differences


def area_file(pages: int) -> IgvmBuilder:
    return snp().parameter_area(0, pages * PAGE_SIZE).insert(0x10000, 0, SNP)


def test_parameter_insert_igvm_style_measures_every_page():
    result = measure(area_file(3))
    assert result.by_type == {"UNMEASURED": 3}
    assert result.digest == chain((0x10000, 4, b""), (0x11000, 4, b""), (0x12000, 4, b""))


def test_parameter_insert_igvmmeasure_style_measures_one_page():
    result = measure(area_file(3), style="igvmmeasure")
    assert result.by_type == {"UNMEASURED": 1}
    assert result.digest == chain((0x10000, 4, b""))
    # For the one-page areas COCONUT uses, the styles agree.
    assert measure(area_file(1)).digest == measure(area_file(1), style="igvmmeasure").digest


def shared_file(shared: bool) -> IgvmBuilder:
    flags = PageDataFlags.SHARED if shared else 0
    return snp().page(0x1000, b"a", SNP).page(0x2000, b"b", SNP, flags=flags)


def test_shared_page_skipped_in_igvm_style():
    result = measure(shared_file(True))
    assert result.pages == 1
    assert result.digest == measure(snp().page(0x1000, b"a", SNP)).digest
    assert result.digest == chain((0x1000, 1, sha(b"a".ljust(PAGE_SIZE, b"\0"))))


def test_shared_page_measured_in_igvmmeasure_style():
    result = measure(shared_file(True), style="igvmmeasure")
    assert result.pages == 2
    assert result.digest == measure(shared_file(False)).digest
    assert result.digest != measure(shared_file(True)).digest


def test_shared_secrets_page_follows_the_same_rule():
    builder = snp().page(0x1000, None, SNP, data_type=PageDataType.SECRETS, flags=4)
    assert measure(builder).pages == 0
    assert measure(builder, style="igvmmeasure").digest == chain((0x1000, 5, b""))


# ------------------------------------------------------------------------- page kinds


def test_two_mib_page_is_512_measurements():
    result = measure(snp().page(LARGE, None, SNP, flags=PageDataFlags.IS_2MB_PAGE))
    assert result.pages == 512
    assert result.by_type == {"NORMAL": 512}
    assert result.digest == chain(*((LARGE + k * PAGE_SIZE, 1, ZERO) for k in range(512)))


def test_two_mib_page_native_zero_and_unmeasured():
    large = snp().page(LARGE, None, SNP, flags=PageDataFlags.IS_2MB_PAGE)
    result = measure(large, native_zero=True)
    assert result.by_type == {"ZERO": 512}
    assert result.digest == chain(*((LARGE + k * PAGE_SIZE, 3, b"") for k in range(512)))
    flags = PageDataFlags.IS_2MB_PAGE | PageDataFlags.UNMEASURED
    unmeasured = measure(snp().page(0, None, SNP, flags=flags))
    assert unmeasured.by_type == {"UNMEASURED": 512}
    assert unmeasured.digest == chain(*((k * PAGE_SIZE, 4, b"") for k in range(512)))


@pytest.mark.parametrize(
    ("data_type", "flags", "data", "page_type", "contents"),
    [
        (PageDataType.NORMAL, 0, b"\x09" * 100, 1, sha(b"\x09" * 100 + bytes(PAGE_SIZE - 100))),
        (PageDataType.NORMAL, 0, bytes(PAGE_SIZE), 1, ZERO),  # zeros as data: still NORMAL
        (PageDataType.NORMAL, 0, None, 1, ZERO),
        (PageDataType.NORMAL, PageDataFlags.UNMEASURED, b"data ignored", 4, b""),
        (PageDataType.SECRETS, 0, b"data ignored", 5, b""),
        (PageDataType.SECRETS, PageDataFlags.UNMEASURED, None, 5, b""),
        (PageDataType.CPUID_DATA, 0, b"cpuid table", 6, b""),
        (PageDataType.CPUID_XF, 0, None, 6, b""),
    ],
)
def test_each_page_kind(data_type, flags, data, page_type, contents):
    builder = snp().page(0x8000, data, SNP, data_type=data_type, flags=flags)
    assert measure(builder).digest == chain((0x8000, page_type, contents))
    native = measure(builder, native_zero=True).digest
    if data is None and data_type == PageDataType.NORMAL and not flags:
        assert native == chain((0x8000, 3, b""))
    else:
        assert native == chain((0x8000, page_type, contents))


def test_vmsa_digest_is_of_the_stored_page_at_its_gpa():
    vmsa = worked_vmsa(0x31)
    result = measure(snp().vp_context(0x5000, vmsa, SNP))
    assert result.digest == chain((0x5000, 2, sha(vmsa)))
    assert result.by_type == {"VMSA": 1}


def test_directive_order_is_measurement_order():
    ab = measure(snp().page(0x1000, b"a", SNP).page(0x2000, b"b", SNP)).digest
    ba = measure(snp().page(0x2000, b"b", SNP).page(0x1000, b"a", SNP)).digest
    assert ab != ba


# ------------------------------------------------------------------------- masks and ID block


def two_platforms() -> IgvmBuilder:
    return snp().platform(PlatformType.NATIVE, NATIVE).platform(PlatformType.TDX, TDX)


def test_records_for_other_platforms_are_ignored():
    mixed = (
        two_platforms()
        .page(0x1000, b"native", NATIVE)
        .page(0x1000, b"snp", SNP)
        .page(0x2000, b"both", SNP | NATIVE | TDX)
        .page(0x3000, None, TDX, data_type=PageDataType.SECRETS)
        .parameter_area(0, 2 * PAGE_SIZE)
        .insert(0x4000, 0, NATIVE)
        .vp_context(0x9000, worked_vmsa(), NATIVE)
    )
    alone = snp().page(0x1000, b"snp", SNP).page(0x2000, b"both", SNP)
    assert measure(mixed).digest == measure(alone).digest
    assert measure(mixed).pages == 2


def test_snp_on_another_bit():
    builder = (
        IgvmBuilder()
        .platform(PlatformType.NATIVE, 1)
        .platform(PlatformType.SEV_SNP, 2)
        .page(0x1000, b"for native", 1)
        .page(0x2000, b"for snp", 2)
    )
    assert measure(builder).digest == chain((0x2000, 1, sha(b"for snp".ljust(PAGE_SIZE, b"\0"))))


def test_id_block_ld_is_reported():
    ld = bytes(range(48))
    builder = worked_example().add(HeaderType.SNP_ID_BLOCK, compatibility_mask=SNP, ld=ld)
    result = measure(builder)
    assert result.id_block_ld == ld
    assert result.hex == WORKED_FINAL  # the ID block is not measured


def test_id_block_of_another_platform_is_not_reported():
    builder = two_platforms().add(HeaderType.SNP_ID_BLOCK, compatibility_mask=NATIVE, ld=b"x" * 48)
    assert measure(builder).id_block_ld is None


def test_a_file_without_snp_cannot_be_measured():
    builder = IgvmBuilder().platform(PlatformType.TDX, 1).page(0x1000, None, 1)
    with pytest.raises(FormatError, match="no SEV-SNP platform"):
        measure(builder)


# ------------------------------------------------------------------------- --check-kvm


def kvm_refused(builder: IgvmBuilder, index: int, match: str) -> None:
    igvm = parse_igvm(builder.build())
    with pytest.raises(FormatError, match=match) as info:
        measure_snp(igvm, check_kvm=True)
    assert info.value.offset == igvm.headers[index].offset
    assert f"(at offset {info.value.offset:#x})" in str(info.value)
    measure_snp(igvm)  # the same file measures without the KVM rules


def test_check_kvm_two_vmsas():
    builder = worked_example().vp_context(0xFFFF_FFFF_E000, worked_vmsa(), SNP)
    kvm_refused(builder, -1, "more than one VMSA")


def test_check_kvm_vmsa_gpa():
    kvm_refused(snp().vp_context(0xFFFF_FFFF_E000, worked_vmsa(), SNP), 1, "KVM puts it")
    kvm_refused(snp().vp_context(0, worked_vmsa(), SNP), 1, "KVM puts it")


@pytest.mark.parametrize("cr0", [0, 0x11, 0x32, 0x80000031, 0x31 | (1 << 32)])
def test_check_kvm_cr0(cr0):
    kvm_refused(snp().vp_context(KVM_VMSA_GPA, worked_vmsa(cr0), SNP), 1, "CR0")


@pytest.mark.parametrize("cr0", [0x30, 0x31])
def test_check_kvm_accepts_real_and_protected_mode(cr0):
    builder = snp().page(0x1000, b"x", SNP).vp_context(KVM_VMSA_GPA, worked_vmsa(cr0), SNP)
    assert measure(builder, check_kvm=True).digest == measure(builder).digest


def test_check_kvm_page_after_the_vmsa():
    builder = snp().vp_context(KVM_VMSA_GPA, worked_vmsa(), SNP).page(0x1000, None, SNP)
    kvm_refused(builder, 2, "follows the VMSA")
    builder = snp().vp_context(KVM_VMSA_GPA, worked_vmsa(), SNP)
    builder.parameter_area(0, PAGE_SIZE).insert(0x1000, 0, SNP)
    kvm_refused(builder, 3, "follows the VMSA")


def test_check_kvm_ignores_other_platforms_and_non_page_directives():
    builder = (
        two_platforms()
        .vp_context(KVM_VMSA_GPA, worked_vmsa(), SNP)
        .page(0x1000, None, NATIVE)
        .vp_context(0x5000, worked_vmsa(0), NATIVE)
        .add(HeaderType.REQUIRED_MEMORY, gpa=0x10000, compatibility_mask=SNP)
        .add(HeaderType.SNP_ID_BLOCK, compatibility_mask=SNP)
        .parameter_area(0, PAGE_SIZE)
    )
    assert measure(builder, check_kvm=True).by_type == {"VMSA": 1}
