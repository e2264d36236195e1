"""IGVM v1 files: every header type round-trips, and every malformation is refused.

The byte layouts are checked against the offsets of research note §1.5 (a table kept here,
independent of `format.py`'s struct table), so a field swapped in both the writer and the
reader still fails. Refusals assert the offset the `FormatError` names. Files for the
refusals come from `IgvmBuilder` (which writes whatever it is told) or from `assemble` here,
with `reseal` fixing the total size and CRC so the intended check is the one reached.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvmstore.errors import FormatError, NotAnImageError, UnsupportedVersionError
from cvmstore.igvm.format import (
    FIXED_HEADER_SIZE,
    OPTIONAL_BIT,
    PAGE_SIZE,
    HeaderType,
    IgvmBuilder,
    IgvmFile,
    PageDataFlags,
    PageDataType,
    PlatformType,
    parse_igvm,
)
from cvmstore.igvm.measure import measure_snp

SNP, NATIVE, TDX, VSM, CCA = 1, 2, 4, 8, 16
LARGE = 0x20_0000
PARAMETER_USAGES = (
    HeaderType.VP_COUNT_PARAMETER,
    HeaderType.SRAT,
    HeaderType.MADT,
    HeaderType.MMIO_RANGES,
    HeaderType.MEMORY_MAP,
    HeaderType.COMMAND_LINE,
    HeaderType.SLIT,
    HeaderType.PPTT,
    HeaderType.DEVICE_TREE,
    HeaderType.ENVIRONMENT_INFO_PARAMETER,
)

# Research §1.4/§1.5: the body size of each type and (field, body offset, struct code).
BODY_SIZE = {
    HeaderType.SUPPORTED_PLATFORM: 16,
    HeaderType.GUEST_POLICY: 16,
    HeaderType.RELOCATABLE_REGION: 48,
    HeaderType.PAGE_TABLE_RELOCATION_REGION: 32,
    HeaderType.CORIM_DOCUMENT: 16,
    HeaderType.CORIM_SIGNATURE: 16,
    HeaderType.CCA_POLICY: 32,
    HeaderType.PARAMETER_AREA: 16,
    HeaderType.PAGE_DATA: 24,
    HeaderType.PARAMETER_INSERT: 16,
    HeaderType.VP_CONTEXT: 20,
    HeaderType.REQUIRED_MEMORY: 24,
    HeaderType.SNP_ID_BLOCK: 696,
    HeaderType.ERROR_RANGE: 16,
    HeaderType.VBS_MEASUREMENT: 864,
    **dict.fromkeys(PARAMETER_USAGES, 8),
}
_CORIM = [("compatibility_mask", 0, "I"), ("file_offset", 4, "I"), ("size_bytes", 8, "I")]
LAYOUT: dict[HeaderType, list[tuple[str, int, str]]] = {
    HeaderType.SUPPORTED_PLATFORM: [
        ("compatibility_mask", 0, "I"),
        ("highest_vtl", 4, "B"),
        ("platform_type", 5, "B"),
        ("platform_version", 6, "H"),
        ("shared_gpa_boundary", 8, "Q"),
    ],
    HeaderType.GUEST_POLICY: [("policy", 0, "Q"), ("compatibility_mask", 8, "I")],
    HeaderType.RELOCATABLE_REGION: [
        ("compatibility_mask", 0, "I"),
        ("vp_index", 4, "H"),
        ("vtl", 6, "B"),
        ("flags", 7, "B"),
        ("relocation_alignment", 8, "Q"),
        ("relocation_region_gpa", 16, "Q"),
        ("relocation_region_size", 24, "Q"),
        ("minimum_relocation_gpa", 32, "Q"),
        ("maximum_relocation_gpa", 40, "Q"),
    ],
    HeaderType.PAGE_TABLE_RELOCATION_REGION: [
        ("compatibility_mask", 0, "I"),
        ("vp_index", 4, "H"),
        ("vtl", 6, "B"),
        ("gpa", 8, "Q"),
        ("size", 16, "Q"),
        ("used_size", 24, "Q"),
    ],
    HeaderType.CORIM_DOCUMENT: _CORIM,
    HeaderType.CORIM_SIGNATURE: _CORIM,
    HeaderType.CCA_POLICY: [
        ("compatibility_mask", 0, "I"),
        ("required_zeroes", 8, "Q"),
        ("required_ones", 16, "Q"),
        ("hash_algorithm", 24, "B"),
        ("lfa_policy", 25, "B"),
    ],
    HeaderType.PARAMETER_AREA: [
        ("number_of_bytes", 0, "Q"),
        ("parameter_area_index", 8, "I"),
        ("file_offset", 12, "I"),
    ],
    HeaderType.PAGE_DATA: [
        ("gpa", 0, "Q"),
        ("compatibility_mask", 8, "I"),
        ("file_offset", 12, "I"),
        ("flags", 16, "I"),
        ("data_type", 20, "H"),
    ],
    HeaderType.PARAMETER_INSERT: [
        ("gpa", 0, "Q"),
        ("compatibility_mask", 8, "I"),
        ("parameter_area_index", 12, "I"),
    ],
    HeaderType.VP_CONTEXT: [
        ("gpa", 0, "Q"),
        ("compatibility_mask", 8, "I"),
        ("file_offset", 12, "I"),
        ("vp_index", 16, "H"),
    ],
    HeaderType.REQUIRED_MEMORY: [
        ("gpa", 0, "Q"),
        ("compatibility_mask", 8, "I"),
        ("number_of_bytes", 12, "I"),
        ("flags", 16, "I"),
    ],
    HeaderType.SNP_ID_BLOCK: [
        ("compatibility_mask", 0, "I"),
        ("author_key_enabled", 4, "B"),
        ("ld", 8, "48s"),
        ("family_id", 56, "16s"),
        ("image_id", 72, "16s"),
        ("version", 88, "I"),
        ("guest_svn", 92, "I"),
        ("id_key_algorithm", 96, "I"),
        ("author_key_algorithm", 100, "I"),
        ("id_key_signature", 104, "144s"),
        ("id_public_key", 248, "152s"),
        ("author_key_signature", 400, "144s"),
        ("author_public_key", 544, "152s"),
    ],
    HeaderType.ERROR_RANGE: [
        ("gpa", 0, "Q"),
        ("compatibility_mask", 8, "I"),
        ("size_bytes", 12, "I"),
    ],
    HeaderType.VBS_MEASUREMENT: [
        ("compatibility_mask", 0, "I"),
        ("version", 4, "I"),
        ("product_id", 8, "I"),
        ("module_id", 12, "I"),
        ("security_version", 16, "I"),
        ("policy_flags", 20, "I"),
        ("boot_digest_algo", 24, "I"),
        ("signing_algo", 28, "I"),
        ("boot_measurement_digest", 32, "64s"),
        ("signature", 96, "256s"),
        ("public_key", 352, "512s"),
    ],
    **{
        kind: [("parameter_area_index", 0, "I"), ("byte_offset", 4, "I")]
        for kind in PARAMETER_USAGES
    },
}


# ------------------------------------------------------------------------- helpers


def reseal(data: bytes | bytearray, *, size: int | None = None) -> bytes:
    """Set the total size (the real one unless `size`) and a correct CRC-32."""
    out = bytearray(data)
    struct.pack_into("<II", out, 0x10, len(out) if size is None else size, 0)
    vh_offset, vh_size = struct.unpack_from("<II", out, 8)
    struct.pack_into("<I", out, 0x14, zlib.crc32(bytes(out[: vh_offset + vh_size])))
    return bytes(out)


def patch(data: bytes, at: int, fmt: str, *values: int | bytes) -> bytes:
    """`data` with `values` packed at `at`, resealed."""
    out = bytearray(data)
    struct.pack_into(fmt, out, at, *values)
    return reseal(out)


def tlv(kind: int, body: bytes, *, length: int | None = None, pad: bytes | None = None) -> bytes:
    """One variable-header record: type, length, body, padding to 8."""
    length = len(body) if length is None else length
    pad = bytes(-len(body) % 8) if pad is None else pad
    return struct.pack("<II", kind, length) + body + pad


def assemble(
    records: list[bytes], file_data: bytes = bytes(8), *, vh_offset: int = FIXED_HEADER_SIZE
) -> bytes:
    """A sealed file: fixed header, `vh_offset - 24` zero bytes, the records, `file_data`."""
    vh = b"".join(records)
    fixed = struct.pack("<4sIII", b"IGVM", 1, vh_offset, len(vh)) + bytes(8)
    return reseal(fixed + bytes(vh_offset - FIXED_HEADER_SIZE) + vh + file_data)


def walk(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, length) of each record, read straight from the bytes."""
    vh_offset, vh_size = struct.unpack_from("<II", data, 8)
    at, out = vh_offset, []
    while at < vh_offset + vh_size:
        kind, length = struct.unpack_from("<II", data, at)
        out.append((at, kind, length))
        at += 8 + (length + 7) // 8 * 8
    return out


def split(data: bytes) -> list[bytes]:
    """The raw records of a file (which must hold no file data that they point to)."""
    return [data[at : at + 8 + (length + 7) // 8 * 8] for at, _, length in walk(data)]


def snp() -> IgvmBuilder:
    return IgvmBuilder().platform(PlatformType.SEV_SNP, SNP)


def vmsa(cr0: int = 0x31) -> bytes:
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<Q", page, 0x158, cr0)
    return bytes(page)


def refused(
    data: bytes, offset: int, error: type[FormatError] = FormatError, match: str | None = None
) -> FormatError:
    with pytest.raises(error, match=match) as info:
        parse_igvm(data)
    assert info.value.offset == offset
    assert f"(at offset {offset:#x})" in str(info.value)
    return info.value


# ------------------------------------------------------------------------- layout, round trip


def test_layout_table_covers_every_type():
    assert set(BODY_SIZE) == set(HeaderType)
    assert set(LAYOUT) == set(HeaderType)


@pytest.mark.parametrize("kind", list(HeaderType), ids=lambda k: k.name)
def test_body_layout_matches_the_spec(kind):
    """Each field, set to its own value, lands at the spec's offset, and the body has its size."""
    values: dict[str, int | bytes] = {}
    for number, (name, _, code) in enumerate(LAYOUT[kind], start=1):
        if code.endswith("s"):
            values[name] = bytes([number]) * int(code[:-1])
        else:
            values[name] = (0x0102030405060708 * number) & ((1 << (8 * struct.calcsize(code))) - 1)
    data = IgvmBuilder().add(kind, None, **values).build()
    (offset, type_code, length), *_ = walk(data)
    assert (type_code, length) == (kind, BODY_SIZE[kind])
    body = data[offset + 8 : offset + 8 + length]
    for name, where, code in LAYOUT[kind]:
        assert struct.unpack_from("<" + code, body, where)[0] == values[name], name


Spec = tuple[HeaderType, bytes | None, dict[str, int | bytes]]


def spec(kind: HeaderType, data: bytes | None = None, **fields: int | bytes) -> Spec:
    return kind, data, fields


def every_type_file() -> tuple[bytes, list[Spec]]:
    """A valid file holding every header type (and every parameter usage), and its specs."""
    page = bytes(range(256)) * 16
    specs: list[Spec] = [
        (
            HeaderType.SUPPORTED_PLATFORM,
            None,
            {
                "compatibility_mask": SNP,
                "highest_vtl": 2,
                "platform_type": PlatformType.SEV_SNP,
                "platform_version": 1,
                "shared_gpa_boundary": 1 << 46,
            },
        ),
        *(
            spec(
                HeaderType.SUPPORTED_PLATFORM,
                compatibility_mask=mask,
                platform_type=ptype,
                platform_version=1,
            )
            for mask, ptype in (
                (NATIVE, PlatformType.NATIVE),
                (TDX, PlatformType.TDX),
                (VSM, PlatformType.VSM_ISOLATION),
                (CCA, PlatformType.CCA),
            )
        ),
        (HeaderType.GUEST_POLICY, None, {"policy": 0x30000, "compatibility_mask": SNP}),
        (HeaderType.GUEST_POLICY, None, {"policy": 0x3, "compatibility_mask": TDX}),
        (
            HeaderType.RELOCATABLE_REGION,
            None,
            {
                "compatibility_mask": VSM,
                "vp_index": 3,
                "vtl": 2,
                "flags": 7,
                "relocation_alignment": LARGE,
                "relocation_region_gpa": 0x40_0000,
                "relocation_region_size": 0x10_0000,
                "minimum_relocation_gpa": 0x20_0000,
                "maximum_relocation_gpa": 0x1_0000_0000,
            },
        ),
        (
            HeaderType.PAGE_TABLE_RELOCATION_REGION,
            None,
            {
                "compatibility_mask": VSM,
                "vp_index": 1,
                "vtl": 2,
                "gpa": 0x80_0000,
                "size": 0x8000,
                "used_size": 0x3000,
            },
        ),
        (
            HeaderType.CORIM_DOCUMENT,
            b"corim document \x01\x02",
            {"compatibility_mask": SNP, "size_bytes": 17},
        ),
        (HeaderType.CORIM_SIGNATURE, b"cose-sign1", {"compatibility_mask": SNP, "size_bytes": 10}),
        (
            HeaderType.CCA_POLICY,
            None,
            {
                "compatibility_mask": CCA,
                "required_zeroes": 0xF0,
                "required_ones": 0x0F,
                "hash_algorithm": 2,
                "lfa_policy": 1,
            },
        ),
        (
            HeaderType.PARAMETER_AREA,
            b"initial area".ljust(2 * PAGE_SIZE, b"\x7f"),
            {"number_of_bytes": 2 * PAGE_SIZE, "parameter_area_index": 0},
        ),
        *(
            spec(kind, parameter_area_index=0, byte_offset=8 * n)
            for n, kind in enumerate(PARAMETER_USAGES)
        ),
        (
            HeaderType.PARAMETER_INSERT,
            None,
            {"gpa": 0x10_0000, "compatibility_mask": SNP | NATIVE, "parameter_area_index": 0},
        ),
        (
            HeaderType.PARAMETER_AREA,
            None,
            {"number_of_bytes": PAGE_SIZE, "parameter_area_index": 7},
        ),
        (HeaderType.VP_COUNT_PARAMETER, None, {"parameter_area_index": 7, "byte_offset": 4}),
        (
            HeaderType.PARAMETER_INSERT,
            None,
            {"gpa": 0x11_0000, "compatibility_mask": TDX, "parameter_area_index": 7},
        ),
        (HeaderType.PAGE_DATA, page, {"gpa": 0x1000, "compatibility_mask": SNP | NATIVE | TDX}),
        (
            HeaderType.PAGE_DATA,
            None,
            {"gpa": 0x2000, "compatibility_mask": SNP, "flags": PageDataFlags.UNMEASURED},
        ),
        (
            HeaderType.PAGE_DATA,
            None,
            {"gpa": 0x3000, "compatibility_mask": SNP, "data_type": PageDataType.SECRETS},
        ),
        (
            HeaderType.PAGE_DATA,
            b"cpuid",
            {"gpa": 0x4000, "compatibility_mask": SNP, "data_type": PageDataType.CPUID_DATA},
        ),
        (
            HeaderType.PAGE_DATA,
            None,
            {"gpa": 0x5000, "compatibility_mask": SNP, "data_type": PageDataType.CPUID_XF},
        ),
        (
            HeaderType.PAGE_DATA,
            None,
            {"gpa": 0x6000, "compatibility_mask": SNP, "flags": PageDataFlags.SHARED},
        ),
        (
            HeaderType.PAGE_DATA,
            None,
            {"gpa": LARGE, "compatibility_mask": SNP, "flags": PageDataFlags.IS_2MB_PAGE},
        ),
        (
            HeaderType.REQUIRED_MEMORY,
            None,
            {
                "gpa": 0x100_0000,
                "compatibility_mask": SNP,
                "number_of_bytes": 0x10_0000,
                "flags": 1,
            },
        ),
        (
            HeaderType.SNP_ID_BLOCK,
            None,
            {
                "compatibility_mask": SNP,
                "author_key_enabled": 1,
                "ld": bytes(range(48)),
                "family_id": b"F" * 16,
                "image_id": b"I" * 16,
                "version": 1,
                "guest_svn": 5,
                "id_key_algorithm": 1,
                "author_key_algorithm": 1,
                "id_key_signature": b"s" * 144,
                "id_public_key": b"k" * 152,
                "author_key_signature": b"S" * 144,
                "author_public_key": b"K" * 152,
            },
        ),
        (
            HeaderType.ERROR_RANGE,
            None,
            {"gpa": 0x200_0000, "compatibility_mask": SNP, "size_bytes": 0x1000},
        ),
        (
            HeaderType.VBS_MEASUREMENT,
            None,
            {
                "compatibility_mask": VSM,
                "version": 1,
                "product_id": 2,
                "module_id": 3,
                "security_version": 4,
                "policy_flags": 5,
                "boot_digest_algo": 1,
                "signing_algo": 1,
                "boot_measurement_digest": b"d" * 64,
                "signature": b"g" * 256,
                "public_key": b"p" * 512,
            },
        ),
        (
            HeaderType.VP_CONTEXT,
            vmsa(),
            {"gpa": 0xFFFF_FFFF_F000, "compatibility_mask": SNP, "vp_index": 0},
        ),
        (
            HeaderType.VP_CONTEXT,
            b"\x01" * 80,
            {"gpa": 0x9000, "compatibility_mask": CCA, "vp_index": 1},
        ),
    ]
    builder = IgvmBuilder()
    for kind, data, fields in specs:
        builder.add(kind, data, **fields)
    return builder.build(), specs


def test_every_header_type_round_trips():
    data, specs = every_type_file()
    igvm = parse_igvm(data)
    assert igvm.version == 1
    assert igvm.file_size == len(data)
    assert igvm.skipped == []
    assert {h.kind for h in igvm.headers} == set(HeaderType)
    assert len(igvm.headers) == len(specs)
    for header, (kind, blob, fields), (offset, _, _) in zip(
        igvm.headers, specs, walk(data), strict=True
    ):
        assert header.kind is kind
        assert header.offset == offset
        for name, value in header.fields.items():
            if name in fields:
                assert value == fields[name], (kind.name, name)
            elif name == "file_offset":
                assert (value != 0) == (blob is not None), kind.name
            else:
                assert value in (0, bytes(len(value) if isinstance(value, bytes) else 0)), name
        if blob is None:
            assert header.data in (None, b""), kind.name
        elif kind in (HeaderType.PAGE_DATA, HeaderType.VP_CONTEXT):
            assert header.data == blob.ljust(PAGE_SIZE, b"\0")
        else:
            assert header.data == blob
    assert igvm.platform_mask(PlatformType.SEV_SNP) == SNP
    assert igvm.platform_mask(PlatformType.CCA) == CCA
    assert igvm.platform_mask(PlatformType.SEV) is None
    assert [h.number("platform_type") for h in igvm.platforms()] == [2, 0, 3, 1, 6]
    first_directive = next(igvm.directives())
    assert first_directive.kind is HeaderType.PARAMETER_AREA


def test_vp_context_body_is_20_bytes_padded_to_24():
    data = snp().vp_context(0x1000, vmsa(), SNP).page(0x2000, None, SNP).build()
    (_, _, _), (vp_at, kind, length), (next_at, next_kind, _) = walk(data)
    assert (kind, length) == (HeaderType.VP_CONTEXT, 20)
    assert next_at == vp_at + 8 + 24
    assert next_kind == HeaderType.PAGE_DATA
    assert data[vp_at + 28 : vp_at + 32] == bytes(4)
    igvm = parse_igvm(data)
    assert igvm.headers[1].number("gpa") == 0x1000
    assert igvm.headers[2].offset == next_at
    refused(patch(data, vp_at + 28, "<B", 1), vp_at + 28, match="padding")


def test_identical_pages_share_one_file_offset():
    one, two = b"\xaa" * PAGE_SIZE, b"\xbb"
    data = (
        snp()
        .page(0x1000, one, SNP)
        .page(0x2000, two, SNP)
        .page(0x3000, one, SNP)
        .page(0x4000, two.ljust(PAGE_SIZE, b"\0"), SNP)
        .build()
    )
    pages = parse_igvm(data).headers[1:]
    offsets = [p.number("file_offset") for p in pages]
    assert offsets[0] == offsets[2]
    assert offsets[1] == offsets[3]  # dedup after padding to a page
    assert offsets[0] != offsets[1]
    assert len(data) == FIXED_HEADER_SIZE + 8 + 16 + 4 * (8 + 24) + 2 * PAGE_SIZE
    assert [p.data for p in pages] == [one, two.ljust(PAGE_SIZE, b"\0")] * 2


def test_parameter_area_initial_data_is_padded_to_its_size():
    """A short initial area followed by more file data still reads back as the area alone."""
    data = snp().parameter_area(0, 2 * PAGE_SIZE, b"ab").page(0x1000, b"\x01", SNP).build()
    area = parse_igvm(data).headers[1]
    assert area.data == b"ab".ljust(2 * PAGE_SIZE, b"\0")


def test_crc_does_not_cover_the_file_data():
    data = bytearray(snp().page(0x1000, b"\x01" * PAGE_SIZE, SNP).build())
    data[-1] ^= 0xFF
    assert parse_igvm(bytes(data)).headers[1].data == b"\x01" * (PAGE_SIZE - 1) + b"\xfe"


def test_variable_headers_may_start_after_24():
    records = split(snp().page(0x1000, None, SNP).build())
    data = assemble(records, vh_offset=32)
    igvm = parse_igvm(data)
    assert [h.offset for h in igvm.headers] == [32, 32 + 24]
    gap = bytearray(data)
    gap[24] = 1
    refused(bytes(gap), 0x14, match="CRC")  # the gap is covered by the CRC


def test_same_gpa_on_different_platforms_is_no_overlap():
    data = (
        snp()
        .platform(PlatformType.NATIVE, NATIVE)
        .page(0x1000, b"a", SNP)
        .page(0x1000, b"b", NATIVE)
        .build()
    )
    assert len(parse_igvm(data).headers) == 4


def test_last_page_stored_short_is_zero_padded():
    data = snp().page(0x1000, b"\x05" * PAGE_SIZE, SNP).build()
    short = reseal(data[: -PAGE_SIZE + 16])
    assert parse_igvm(short).headers[1].data == b"\x05" * 16 + bytes(PAGE_SIZE - 16)


# ------------------------------------------------------------------------- optional records


def test_unknown_optional_records_are_skipped():
    records = split(snp().policy(0x30000, SNP).page(0x1000, None, SNP).build())
    unknown = [
        tlv(OPTIONAL_BIT | 0x050, b"platform"),
        tlv(OPTIONAL_BIT | 0x150, b"init-odd"[:7]),
        tlv(OPTIONAL_BIT | 0x3F0, b"directive body!!"),
    ]
    data = assemble([records[0], unknown[0], records[1], unknown[1], records[2], unknown[2]])
    igvm = parse_igvm(data)
    assert [h.kind for h in igvm.headers] == [
        HeaderType.SUPPORTED_PLATFORM,
        HeaderType.GUEST_POLICY,
        HeaderType.PAGE_DATA,
    ]
    assert [(h.kind, h.body, h.fields) for h in igvm.skipped] == [
        (OPTIONAL_BIT | 0x050, b"platform", {}),
        (OPTIONAL_BIT | 0x150, b"init-od", {}),
        (OPTIONAL_BIT | 0x3F0, b"directive body!!", {}),
    ]
    offsets = [offset for offset, _, _ in walk(data)]
    assert [h.offset for h in igvm.skipped] == [offsets[1], offsets[3], offsets[5]]
    assert igvm.skipped[0].name == "UNKNOWN_0x80000050"
    assert [h.name for h in igvm.headers] == ["SUPPORTED_PLATFORM", "GUEST_POLICY", "PAGE_DATA"]
    # A skipped directive-section record still ends the earlier sections.
    late = assemble([records[0], unknown[2], records[1]])
    refused(late, walk(late)[2][0], match="after the directive section")


@pytest.mark.parametrize("code", [0x050, 0x150, 0x3F0, 0x306])
def test_unknown_records_without_the_optional_bit_are_refused(code):
    records = split(snp().build())
    data = assemble([*records, tlv(code, bytes(8))])
    refused(data, walk(data)[1][0], match="without the optional bit")


@pytest.mark.parametrize("code", [0x000, 0x201, 0x2FF, 0x401, OPTIONAL_BIT | 0x250])
def test_record_types_outside_every_section_are_refused(code):
    data = assemble([*split(snp().build()), tlv(code, bytes(8))])
    refused(data, walk(data)[1][0], match="no section")


# ------------------------------------------------------------------------- refusals


def test_short_files_are_refused_at_offset_0():
    for length in (0, 1, FIXED_HEADER_SIZE - 1):
        refused(snp().build()[:length], 0, match="at least 24")


def test_wrong_magic_is_not_an_image():
    data = snp().build()
    refused(b"MVGI" + data[4:], 0, NotAnImageError)
    refused(bytes(64), 0, NotAnImageError)


@pytest.mark.parametrize("version", [0, 2, 3, 0xFFFF_FFFF])
def test_other_versions_are_unsupported(version):
    refused(patch(snp().build(), 4, "<I", version), 4, UnsupportedVersionError)


def test_total_size_must_be_the_file_size():
    data = snp().page(0x1000, b"x", SNP).build()
    refused(data[:-1], 0x10, match="header says")  # truncated
    refused(data + b"\0", 0x10, match="header says")  # extended
    refused(reseal(data, size=len(data) + 8), 0x10, match="header says")  # CRC right, size wrong


def test_crc_must_match():
    data = snp().page(0x1000, None, SNP).build()
    bad = bytearray(data)
    bad[0x14] ^= 1
    refused(bytes(bad), 0x14, match="CRC")
    bad = bytearray(data)
    bad[walk(data)[1][0] + 8] ^= 0x10  # the page's GPA, in the covered headers
    refused(bytes(bad), 0x14, match="CRC")
    bad = bytearray(data)
    bad[0xC] = 0  # the fixed header itself is covered: this says no variable headers
    refused(bytes(bad), 0x14, match="CRC")


@pytest.mark.parametrize("vh_offset", [0, 16, 20, 25, 28, 36])
def test_variable_header_offset_must_be_aligned_and_after_the_header(vh_offset):
    data = snp().build()
    refused(patch(data, 8, "<I", vh_offset), 8, match="misaligned")


def test_variable_headers_must_end_before_the_file():
    records = split(snp().build())
    refused(assemble(records, b""), 0xC, match="past the end")
    data = snp().build()
    refused(patch(data, 0xC, "<I", len(data)), 0xC, match="past the end")


def test_record_header_running_past_the_section():
    records = split(snp().build())
    data = assemble([*records, struct.pack("<I", HeaderType.GUEST_POLICY)])
    refused(data, walk(snp().build())[0][0] + 24, match="record header runs past")


def test_record_body_running_past_the_section():
    platform, policy = split(snp().policy(0x30000, SNP).build())
    data = assemble([platform, policy[:12]])
    refused(data, FIXED_HEADER_SIZE + 24, match="record runs past")
    long = assemble([platform, tlv(HeaderType.GUEST_POLICY, bytes(16), length=24)])
    refused(long, FIXED_HEADER_SIZE + 24, match="record runs past")


def test_padding_must_be_zero():
    records = split(snp().build())
    data = assemble([*records, tlv(OPTIONAL_BIT | 0x3F0, b"abc", pad=b"\0\0\0\0\x01")])
    refused(data, FIXED_HEADER_SIZE + 24 + 8 + 3, match="padding")


@pytest.mark.parametrize(
    ("kind", "length"),
    [
        (HeaderType.SUPPORTED_PLATFORM, 8),
        (HeaderType.GUEST_POLICY, 24),
        (HeaderType.PAGE_DATA, 16),
        (HeaderType.PAGE_DATA, 32),
        (HeaderType.VP_CONTEXT, 24),
        (HeaderType.VP_COUNT_PARAMETER, 16),
        (HeaderType.SNP_ID_BLOCK, 688),
    ],
)
def test_record_length_must_be_the_type_size(kind, length):
    platform, area = split(snp().parameter_area(0, PAGE_SIZE).build())
    bad = tlv(kind, bytes(length))
    if kind in (HeaderType.SUPPORTED_PLATFORM, HeaderType.GUEST_POLICY):
        data, index = assemble([platform, bad, area]), 1
    else:
        data, index = assemble([platform, area, bad]), 2
    refused(data, walk(data)[index][0] + 4, match=f"{kind.name} is {length} bytes")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (lambda b: b.policy(1, SNP), lambda b: b.platform(PlatformType.TDX, 2)),
        (lambda b: b.page(0x1000, None, SNP), lambda b: b.policy(1, SNP)),
        (lambda b: b.page(0x1000, None, SNP), lambda b: b.platform(PlatformType.TDX, 2)),
    ],
)
def test_sections_must_be_in_order(first, second):
    builder = snp()
    first(builder)
    second(builder)
    data = builder.build()
    refused(data, walk(data)[2][0], match="section began")


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (HeaderType.GUEST_POLICY, {"reserved": 1}),
        (HeaderType.PAGE_TABLE_RELOCATION_REGION, {"reserved": 1}),
        (HeaderType.CORIM_DOCUMENT, {"reserved": 1}),
        (HeaderType.CCA_POLICY, {"reserved": 1}),
        (HeaderType.CCA_POLICY, {"reserved2": b"\0\0\0\0\0\x01"}),
        (HeaderType.PAGE_DATA, {"reserved": 0x8000}),
        (HeaderType.VP_CONTEXT, {"reserved": 1}),
        (HeaderType.REQUIRED_MEMORY, {"reserved": 1}),
        (HeaderType.SNP_ID_BLOCK, {"reserved": b"\0\x01\0"}),
    ],
)
def test_reserved_fields_must_be_zero(kind, fields):
    data = snp().add(kind, compatibility_mask=SNP, **fields).build()
    name = next(iter(fields))
    refused(data, walk(data)[1][0], match=f"{kind.name}.{name} is not zero")


@pytest.mark.parametrize("mask", [0, NATIVE, SNP | NATIVE, 0x8000_0000])
@pytest.mark.parametrize(
    "kind",
    [
        HeaderType.GUEST_POLICY,
        HeaderType.PAGE_DATA,
        HeaderType.VP_CONTEXT,
        HeaderType.SNP_ID_BLOCK,
        HeaderType.ERROR_RANGE,
    ],
)
def test_masks_must_name_declared_platforms(kind, mask):
    data = snp().add(kind, compatibility_mask=mask).build()
    refused(data, walk(data)[1][0], match="not declared before it")


@pytest.mark.parametrize("mask", [0, 3, 0x11, 0xFFFF_FFFF])
def test_a_platform_mask_is_one_bit(mask):
    data = IgvmBuilder().platform(PlatformType.SEV_SNP, mask).build()
    refused(data, FIXED_HEADER_SIZE, match="one compatibility bit")


def test_a_platform_bit_is_its_own():
    data = snp().platform(PlatformType.TDX, SNP).build()
    refused(data, FIXED_HEADER_SIZE + 24, match="one compatibility bit")


def test_a_platform_type_appears_once():
    data = snp().platform(PlatformType.SEV_SNP, NATIVE).build()
    refused(data, FIXED_HEADER_SIZE + 24, match="unknown or repeated")


def test_platform_type_vtl_and_version_are_checked():
    bad_type = IgvmBuilder().add(
        HeaderType.SUPPORTED_PLATFORM, compatibility_mask=1, platform_type=7, platform_version=1
    )
    refused(bad_type.build(), FIXED_HEADER_SIZE, match="unknown or repeated")
    refused(IgvmBuilder().platform(PlatformType.SEV_SNP, 1, vtl=1).build(), 24, match="VTL")
    data = snp().build()
    refused(patch(data, FIXED_HEADER_SIZE + 8 + 6, "<H", 2), FIXED_HEADER_SIZE, match="version")


@pytest.mark.parametrize(
    ("gpa", "flags"),
    [
        (0x1001, 0),
        (0x1800, 0),
        (0x1000, PageDataFlags.IS_2MB_PAGE),
        (0x10_0000, PageDataFlags.IS_2MB_PAGE),
        (LARGE + 0x1000, PageDataFlags.IS_2MB_PAGE | PageDataFlags.UNMEASURED),
    ],
)
def test_page_gpa_must_be_aligned(gpa, flags):
    data = snp().page(gpa, None, SNP, flags=flags).build()
    refused(data, FIXED_HEADER_SIZE + 24, match="aligned")


def test_large_page_at_a_2mib_boundary_is_accepted():
    data = snp().page(3 * LARGE, None, SNP, flags=PageDataFlags.IS_2MB_PAGE).build()
    assert parse_igvm(data).headers[1].number("gpa") == 3 * LARGE


@pytest.mark.parametrize("flags", [8, 0x10, 0x8000_0000, 0xF])
def test_unknown_page_flags_are_refused(flags):
    data = snp().page(0x1000, None, SNP, flags=flags).build()
    refused(data, FIXED_HEADER_SIZE + 24, match="unknown flags")


@pytest.mark.parametrize("data_type", [4, 5, 0xFFFF])
def test_unknown_page_data_types_are_refused(data_type):
    data = snp().add(HeaderType.PAGE_DATA, gpa=0x1000, compatibility_mask=SNP, data_type=data_type)
    refused(data.build(), FIXED_HEADER_SIZE + 24, match="unknown data type")


OVERLAPS: dict[str, Callable[[IgvmBuilder], IgvmBuilder]] = {
    "page/page": lambda b: b.page(0x1000, b"a", SNP).page(0x1000, b"b", SNP),
    "page/2MiB page": lambda b: b.page(0x1F_F000, None, SNP).page(
        0, None, SNP, flags=PageDataFlags.IS_2MB_PAGE
    ),
    "2MiB page/page": lambda b: b.page(0, None, SNP, flags=PageDataFlags.IS_2MB_PAGE).page(
        0x1F_F000, None, SNP
    ),
    "page/VMSA": lambda b: b.page(0x5000, None, SNP).vp_context(0x5000, vmsa(), SNP),
    "VMSA/page": lambda b: b.vp_context(0x5000, vmsa(), SNP).page(0x5000, None, SNP),
    "insert/page": lambda b: (
        b.parameter_area(0, 3 * PAGE_SIZE).insert(0x10000, 0, SNP).page(0x12000, None, SNP)
    ),
    "page/insert": lambda b: (
        b.page(0x12000, None, SNP).parameter_area(0, 3 * PAGE_SIZE).insert(0x10000, 0, SNP)
    ),
    "shared masks": lambda b: (
        b.platform(PlatformType.TDX, TDX).page(0x1000, None, TDX).page(0x1000, None, SNP | TDX)
    ),
}


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_overlapping_pages_are_refused(case):
    data = OVERLAPS[case](snp()).build()
    error = refused(data, walk(data)[-1][0], match="overlaps")
    earlier = [offset for offset, kind, _ in walk(data) if kind != HeaderType.PARAMETER_AREA][-2]
    assert f"record at {earlier:#x}" in str(error)


def test_overlap_names_the_lowest_page_and_its_record():
    data = (
        snp()
        .page(0x3000, None, SNP)
        .page(0x2000, None, SNP)
        .page(0x5000, None, SNP)
        .page(0, None, SNP, flags=PageDataFlags.IS_2MB_PAGE)
        .build()
    )
    error = refused(data, walk(data)[4][0])
    assert f"page 0x2000 overlaps the one placed by the record at {walk(data)[2][0]:#x}" in str(
        error
    )


def test_pages_next_to_each_other_do_not_overlap():
    builder = snp().page(LARGE, None, SNP, flags=PageDataFlags.IS_2MB_PAGE)
    builder.page(LARGE - PAGE_SIZE, None, SNP).page(2 * LARGE, None, SNP)
    builder.parameter_area(0, 2 * PAGE_SIZE).insert(LARGE - 3 * PAGE_SIZE, 0, SNP)
    builder.vp_context(2 * LARGE + PAGE_SIZE, vmsa(), SNP)
    assert len(parse_igvm(builder.build()).headers) == 7


@pytest.mark.parametrize("field_at", [8, FIXED_HEADER_SIZE, "headers end", "file end"])
def test_page_file_offset_must_be_in_the_file_data(field_at):
    data = snp().page(0x1000, b"x", SNP).build()
    page_at = walk(data)[1][0]
    headers_end = page_at + 32
    target = {"headers end": headers_end - 8, "file end": len(data)}.get(str(field_at), field_at)
    refused(patch(data, page_at + 8 + 12, "<I", target), page_at, match="outside the file data")


def test_other_file_offsets_must_be_in_the_file_data():
    data = snp().vp_context(0x1000, vmsa(), SNP).build()
    vp_at = walk(data)[1][0]
    refused(patch(data, vp_at + 8 + 12, "<I", 0), vp_at, match="outside")  # VMSA needs data
    refused(patch(data, vp_at + 8 + 12, "<I", len(data) + PAGE_SIZE), vp_at, match="outside")
    corim = snp().add(HeaderType.CORIM_DOCUMENT, b"doc", compatibility_mask=SNP).build()
    corim_at = walk(corim)[1][0]
    refused(patch(corim, corim_at + 8 + 4, "<I", 16), corim_at, match="outside")
    area = snp().parameter_area(0, PAGE_SIZE, b"x").build()
    area_at = walk(area)[1][0]
    refused(patch(area, area_at + 8 + 12, "<I", len(area)), area_at, match="outside")


def test_data_missing_a_page_or_more_is_refused():
    data = snp().parameter_area(0, 2 * PAGE_SIZE, b"x").build()
    area_at = walk(data)[1][0]
    refused(reseal(data[:-PAGE_SIZE]), area_at, match="run past the end")
    parse_igvm(reseal(data[: -PAGE_SIZE + 1]))  # one byte of the second page is left
    corim = snp().add(HeaderType.CORIM_DOCUMENT, b"doc", compatibility_mask=SNP).build()
    corim_at = walk(corim)[1][0]
    refused(patch(corim, corim_at + 8 + 8, "<I", 0xFFFF_FFFF), corim_at, match="run past")


@pytest.mark.parametrize("size", [0, 0x800, PAGE_SIZE + 1, (1 << 32) + PAGE_SIZE, 1 << 63])
def test_parameter_area_size_is_checked(size):
    data = snp().add(HeaderType.PARAMETER_AREA, b"area", number_of_bytes=size).build()
    refused(data, walk(data)[1][0], match="whole number of pages")


def test_a_4_gib_area_is_accepted_and_claims_its_range_cheaply():
    builder = snp().parameter_area(0, 1 << 32).insert(0, 0, SNP)
    assert parse_igvm(builder.build()).headers[2].number("parameter_area_index") == 0
    data = builder.page((1 << 32) - PAGE_SIZE, None, SNP).build()
    refused(data, walk(data)[3][0], match="overlaps")


def test_parameter_area_declared_twice():
    data = snp().parameter_area(3, PAGE_SIZE).parameter_area(3, 2 * PAGE_SIZE).build()
    refused(data, walk(data)[2][0], match="declared twice")
    again = snp().parameter_area(3, PAGE_SIZE).insert(0x1000, 3, SNP).parameter_area(3, PAGE_SIZE)
    data = again.build()
    refused(data, walk(data)[3][0], match="declared twice")


@pytest.mark.parametrize("kind", PARAMETER_USAGES, ids=lambda k: k.name)
def test_usage_of_an_undeclared_or_inserted_area(kind):
    data = snp().parameter_area(0, PAGE_SIZE).parameter(kind, 1).build()
    refused(data, walk(data)[2][0], match="not declared or already inserted")
    data = snp().parameter_area(0, PAGE_SIZE).insert(0x1000, 0, SNP).parameter(kind, 0).build()
    refused(data, walk(data)[3][0], match="not declared or already inserted")
    data = snp().parameter_area(0, PAGE_SIZE).parameter(kind, 0, PAGE_SIZE).build()
    refused(data, walk(data)[2][0], match="outside its area")
    data = snp().parameter_area(0, PAGE_SIZE).parameter(kind, 0, PAGE_SIZE - 1).build()
    assert parse_igvm(data).headers[2].number("byte_offset") == PAGE_SIZE - 1


def test_insert_of_an_undeclared_or_inserted_area():
    data = snp().parameter_area(0, PAGE_SIZE).insert(0x1000, 1, SNP).build()
    refused(data, walk(data)[2][0], match="not declared")
    data = snp().parameter_area(0, PAGE_SIZE).insert(0x1000, 0, SNP).insert(0x2000, 0, SNP).build()
    refused(data, walk(data)[3][0], match="not declared")


def test_misaligned_insert_vmsa_and_required_memory():
    data = snp().parameter_area(0, PAGE_SIZE).insert(0x1010, 0, SNP).build()
    refused(data, walk(data)[2][0], match="not page-aligned")
    data = snp().vp_context(0x1010, vmsa(), SNP).build()
    refused(data, walk(data)[1][0], match="not page-aligned")
    for fields in ({"gpa": 0x10}, {"number_of_bytes": 0x10}):
        builder = snp().add(HeaderType.REQUIRED_MEMORY, None, compatibility_mask=SNP, **fields)
        data = builder.build()
        refused(data, walk(data)[1][0], match="not page-aligned")
    data = snp().add(HeaderType.REQUIRED_MEMORY, compatibility_mask=SNP, flags=2).build()
    refused(data, walk(data)[1][0], match="unknown flags")


# ------------------------------------------------------------------------- hostile bytes


def sample_files() -> list[bytes]:
    """Valid files whose mutations reach every per-type rule."""
    every, _ = every_type_file()
    worked = (
        snp()
        .policy(0x30000, SNP)
        .page(0x1000, b"\x01" * PAGE_SIZE, SNP)
        .page(0x2000, None, SNP, flags=PageDataFlags.UNMEASURED)
        .page(0x3000, None, SNP, data_type=PageDataType.SECRETS)
        .page(LARGE, None, SNP, flags=PageDataFlags.IS_2MB_PAGE)
        .parameter_area(0, 2 * PAGE_SIZE)
        .parameter(HeaderType.MEMORY_MAP, 0)
        .insert(0x8000, 0, SNP)
        .vp_context(0xFFFF_FFFF_F000, vmsa(), SNP)
        .build()
    )
    return [every, worked]


SAMPLES = sample_files()


def parses_or_format_error(data: bytes) -> IgvmFile | None:
    """Parse, and measure what parses; only the FormatError family may escape."""
    try:
        igvm = parse_igvm(data)
    except FormatError:
        return None
    if igvm.platform_mask(PlatformType.SEV_SNP) is not None:
        for style in ("igvm", "igvmmeasure"):
            with contextlib.suppress(FormatError):
                measure_snp(igvm, style=style, check_kvm=style == "igvmmeasure")
    return igvm


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_format_errors(data):
    parses_or_format_error(data)
    if len(data) >= FIXED_HEADER_SIZE:
        # Give the bytes a valid fixed header so the record walk is reached.
        vh_size = struct.unpack_from("<I", data, 0xC)[0] % max(1, len(data) - FIXED_HEADER_SIZE)
        framed = struct.pack("<4sIII", b"IGVM", 1, FIXED_HEADER_SIZE, vh_size)
        parses_or_format_error(reseal(framed + data[16:]))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    records = walk(bytes(data))
    vh_end = records[-1][0] + 8 + (records[-1][2] + 7) // 8 * 8
    for _ in range(draw(st.integers(1, 6))):
        # Mostly inside the variable headers, where the rules are.
        where = draw(st.integers(FIXED_HEADER_SIZE, vh_end - 1) | st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[where] = draw(st.integers(0, 255))
        else:
            width = draw(st.sampled_from([2, 4, 8]))
            where = min(where - where % width, len(data) - width)
            value = draw(st.sampled_from([0, 1, 0xFF, 0x1000, 0x20_0000, 1 << 31, 1 << 32]))
            data[where : where + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    if not draw(st.integers(0, 3)):  # cut, mostly in the file data
        del data[draw(st.integers(vh_end, len(data)) | st.integers(0, len(data))) :]
    if draw(st.integers(0, 3)) and len(data) >= FIXED_HEADER_SIZE:
        return reseal(data)
    return bytes(data)


@given(mutated())
def test_mutated_files_raise_only_format_errors(data):
    parses_or_format_error(data)


def test_mutations_reach_the_record_rules():
    """The mutation strategy is not stuck at the CRC: resealed edits meet the per-type rules."""
    every = SAMPLES[0]
    page_at = next(offset for offset, kind, _ in walk(every) if kind == HeaderType.PAGE_DATA)
    assert parses_or_format_error(patch(every, page_at + 8 + 16, "<I", 8)) is None
    assert parses_or_format_error(every) is not None
    assert parses_or_format_error(SAMPLES[1]) is not None
