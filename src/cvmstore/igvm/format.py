"""IGVM files, format version 1: read every header type, and write files for tests.

Layout (microsoft/igvm `igvm_defs`, docs/igvm.md): a 24-byte fixed header (magic "IGVM",
version, where the variable headers are, the file size, and a CRC-32 over the fixed header
with the checksum zeroed plus the variable headers), then type-length-value records in three
ordered sections (platform, initialization, directives), then file data that records point
into by absolute offset. Everything is little-endian; records start 8-byte aligned.

Reading refuses, with a `FormatError` naming the offset: a wrong magic, size or CRC, a record
that is misaligned, the wrong length, out of section order, or has non-zero reserved bytes;
pages that are misaligned or overlap another page of the same platform; data outside the
file. Unknown record types are skipped when their optional bit (0x80000000) is set, and
refused otherwise.
"""

from __future__ import annotations

import bisect
import enum
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cvmstore.errors import FormatError, NotAnImageError, UnsupportedVersionError

__all__ = [
    "FIXED_HEADER",
    "FIXED_HEADER_SIZE",
    "OPTIONAL_BIT",
    "PAGE_SIZE",
    "Header",
    "HeaderType",
    "IgvmBuilder",
    "IgvmFile",
    "PageDataFlags",
    "PageDataType",
    "PlatformType",
    "parse_igvm",
]

MAGIC = 0x4D564749  # "IGVM" as a little-endian u32
FIXED_HEADER_SIZE = 24
OPTIONAL_BIT = 0x8000_0000
PAGE_SIZE = 0x1000
LARGE_PAGE = 0x20_0000
MAX_PARAMETER_AREA = 1 << 32  # usages address an area with u32 byte offsets
FIXED_HEADER = struct.Struct("<IIIIII")  # magic, version, header offset and size, size, CRC
_RECORD = struct.Struct("<II")


class HeaderType(enum.IntEnum):
    """Variable-header type codes (`IgvmVariableHeaderType`)."""

    SUPPORTED_PLATFORM = 0x001
    GUEST_POLICY = 0x101
    RELOCATABLE_REGION = 0x102
    PAGE_TABLE_RELOCATION_REGION = 0x103
    CORIM_DOCUMENT = 0x104
    CORIM_SIGNATURE = 0x105
    CCA_POLICY = 0x106
    PARAMETER_AREA = 0x301
    PAGE_DATA = 0x302
    PARAMETER_INSERT = 0x303
    VP_CONTEXT = 0x304
    REQUIRED_MEMORY = 0x305
    VP_COUNT_PARAMETER = 0x307
    SRAT = 0x308
    MADT = 0x309
    MMIO_RANGES = 0x30A
    SNP_ID_BLOCK = 0x30B
    MEMORY_MAP = 0x30C
    ERROR_RANGE = 0x30D
    COMMAND_LINE = 0x30E
    SLIT = 0x30F
    PPTT = 0x310
    VBS_MEASUREMENT = 0x311
    DEVICE_TREE = 0x312
    ENVIRONMENT_INFO_PARAMETER = 0x313


class PlatformType(enum.IntEnum):
    """`SUPPORTED_PLATFORM.platform_type`."""

    NATIVE = 0
    VSM_ISOLATION = 1
    SEV_SNP = 2
    TDX = 3
    SEV = 4
    SEV_ES = 5
    CCA = 6


class PageDataType(enum.IntEnum):
    """`PAGE_DATA.data_type`."""

    NORMAL = 0
    SECRETS = 1
    CPUID_DATA = 2
    CPUID_XF = 3


class PageDataFlags(enum.IntFlag):
    """`PAGE_DATA.flags`."""

    IS_2MB_PAGE = 1
    UNMEASURED = 2
    SHARED = 4


# Body layout of each type: (struct format, field names). Fields named "reserved*" must be 0.
_PARAMETER = ("<II", ("parameter_area_index", "byte_offset"))
_LAYOUTS: dict[HeaderType, tuple[str, tuple[str, ...]]] = {
    HeaderType.SUPPORTED_PLATFORM: (
        "<IBBHQ",
        (
            "compatibility_mask",
            "highest_vtl",
            "platform_type",
            "platform_version",
            "shared_gpa_boundary",
        ),
    ),
    HeaderType.GUEST_POLICY: ("<QII", ("policy", "compatibility_mask", "reserved")),
    HeaderType.RELOCATABLE_REGION: (
        "<IHBBQQQQQ",
        (
            "compatibility_mask",
            "vp_index",
            "vtl",
            "flags",
            "relocation_alignment",
            "relocation_region_gpa",
            "relocation_region_size",
            "minimum_relocation_gpa",
            "maximum_relocation_gpa",
        ),
    ),
    HeaderType.PAGE_TABLE_RELOCATION_REGION: (
        "<IHBBQQQ",
        ("compatibility_mask", "vp_index", "vtl", "reserved", "gpa", "size", "used_size"),
    ),
    HeaderType.CORIM_DOCUMENT: (
        "<IIII",
        ("compatibility_mask", "file_offset", "size_bytes", "reserved"),
    ),
    HeaderType.CORIM_SIGNATURE: (
        "<IIII",
        ("compatibility_mask", "file_offset", "size_bytes", "reserved"),
    ),
    HeaderType.CCA_POLICY: (
        "<IIQQBB6s",
        (
            "compatibility_mask",
            "reserved",
            "required_zeroes",
            "required_ones",
            "hash_algorithm",
            "lfa_policy",
            "reserved2",
        ),
    ),
    HeaderType.PARAMETER_AREA: (
        "<QII",
        ("number_of_bytes", "parameter_area_index", "file_offset"),
    ),
    HeaderType.PAGE_DATA: (
        "<QIIIHH",
        ("gpa", "compatibility_mask", "file_offset", "flags", "data_type", "reserved"),
    ),
    HeaderType.PARAMETER_INSERT: (
        "<QII",
        ("gpa", "compatibility_mask", "parameter_area_index"),
    ),
    HeaderType.VP_CONTEXT: (
        "<QIIHH",
        ("gpa", "compatibility_mask", "file_offset", "vp_index", "reserved"),
    ),
    HeaderType.REQUIRED_MEMORY: (
        "<QIIII",
        ("gpa", "compatibility_mask", "number_of_bytes", "flags", "reserved"),
    ),
    HeaderType.VP_COUNT_PARAMETER: _PARAMETER,
    HeaderType.SRAT: _PARAMETER,
    HeaderType.MADT: _PARAMETER,
    HeaderType.MMIO_RANGES: _PARAMETER,
    HeaderType.SNP_ID_BLOCK: (
        "<IB3s48s16s16sIIII144s152s144s152s",
        (
            "compatibility_mask",
            "author_key_enabled",
            "reserved",
            "ld",
            "family_id",
            "image_id",
            "version",
            "guest_svn",
            "id_key_algorithm",
            "author_key_algorithm",
            "id_key_signature",
            "id_public_key",
            "author_key_signature",
            "author_public_key",
        ),
    ),
    HeaderType.MEMORY_MAP: _PARAMETER,
    HeaderType.ERROR_RANGE: ("<QII", ("gpa", "compatibility_mask", "size_bytes")),
    HeaderType.COMMAND_LINE: _PARAMETER,
    HeaderType.SLIT: _PARAMETER,
    HeaderType.PPTT: _PARAMETER,
    HeaderType.VBS_MEASUREMENT: (
        "<IIIIIIII64s256s512s",
        (
            "compatibility_mask",
            "version",
            "product_id",
            "module_id",
            "security_version",
            "policy_flags",
            "boot_digest_algo",
            "signing_algo",
            "boot_measurement_digest",
            "signature",
            "public_key",
        ),
    ),
    HeaderType.DEVICE_TREE: _PARAMETER,
    HeaderType.ENVIRONMENT_INFO_PARAMETER: _PARAMETER,
}
_STRUCTS = {kind: struct.Struct(fmt) for kind, (fmt, _) in _LAYOUTS.items()}
_PARAMETER_USAGES = frozenset(kind for kind, layout in _LAYOUTS.items() if layout is _PARAMETER)
# Plain ints and sets for the per-record path: enum attribute access and enum arithmetic
# cost more than the hashing of the page itself (`cvmstore bench igvm`).
_KNOWN_TYPES = {int(kind): kind for kind in HeaderType}
_RESERVED_FIELDS = {
    kind: tuple(name for name in names if name.startswith("reserved"))
    for kind, (_, names) in _LAYOUTS.items()
}
_DATA_TYPES = frozenset(int(t) for t in PageDataType)
_PLATFORM_TYPES = frozenset(int(p) for p in PlatformType)
_SUPPORTED_PLATFORM = HeaderType.SUPPORTED_PLATFORM
_FLAG_2MB = int(PageDataFlags.IS_2MB_PAGE)
_PAGE_DATA_CODE = int(HeaderType.PAGE_DATA)
_LAST_INITIALIZATION = 0x200  # known types above this are directives
_PAGE_DATA_BODY = _STRUCTS[HeaderType.PAGE_DATA].size
_PAGE_RECORD = struct.Struct("<IIQIIIHH")  # a whole PAGE_DATA record: type, length, body


def _bits_of(mask: int) -> list[int]:
    """The set bits of a compatibility mask, each as a one-bit mask."""
    bits = []
    while mask:
        low = mask & -mask
        bits.append(low)
        mask ^= low
    return bits


class Section(enum.IntEnum):
    """The three header sections, in the order a file must hold them."""

    PLATFORM = 0
    INITIALIZATION = 1
    DIRECTIVE = 2


def section_of(kind: int) -> Section | None:
    """The section a type code belongs to (optional bit ignored), None outside all three."""
    code = kind & ~OPTIONAL_BIT
    if 0x001 <= code <= 0x100:
        return Section.PLATFORM
    if 0x101 <= code <= 0x200:
        return Section.INITIALIZATION
    if 0x301 <= code <= 0x400:
        return Section.DIRECTIVE
    return None


@dataclass(frozen=True, slots=True)
class Header:
    """One variable header: its type, where it is, its fields, and the file data it names.

    `kind` is a `HeaderType`, or the raw code of a skipped optional header (then `fields` is
    empty and `body` holds its bytes).
    """

    kind: HeaderType | int
    offset: int
    fields: dict[str, int | bytes]
    body: bytes
    data: bytes | memoryview | None = None  # page contents, VMSA, parameter-area or CoRIM bytes

    @property
    def name(self) -> str:
        """The type's name (`UNKNOWN_0x...` for a skipped optional header)."""
        return self.kind.name if isinstance(self.kind, HeaderType) else f"UNKNOWN_{self.kind:#x}"

    def number(self, name: str) -> int:
        """An integer field."""
        value = self.fields[name]
        if not isinstance(value, int):
            raise TypeError(f"{name} is not an integer field")
        return value

    def applies_to(self, mask: int) -> bool:
        """Whether the header applies to the platform with compatibility `mask`.

        Headers without a compatibility mask (parameter areas and usages) apply everywhere.
        """
        own = self.fields.get("compatibility_mask")
        return own is None or (isinstance(own, int) and own & mask == mask)


@dataclass(slots=True)
class IgvmFile:
    """A parsed IGVM file."""

    version: int
    headers: list[Header]
    file_size: int
    skipped: list[Header] = field(default_factory=list)  # unknown optional headers

    def platforms(self) -> list[Header]:
        """The SUPPORTED_PLATFORM headers."""
        return [h for h in self.headers if h.kind is HeaderType.SUPPORTED_PLATFORM]

    def platform_mask(self, platform: PlatformType) -> int | None:
        """The compatibility mask of `platform`, None when the file does not support it."""
        for header in self.platforms():
            if header.number("platform_type") == platform:
                return header.number("compatibility_mask")
        return None

    def directives(self) -> Iterator[Header]:
        """The directive-section headers, in file order."""
        return (h for h in self.headers if h.kind > _LAST_INITIALIZATION)


def parse_igvm(data: bytes) -> IgvmFile:
    """Parse and validate a whole IGVM file (see the module docstring for what is refused).

    Raises:
        NotAnImageError: no IGVM magic.
        UnsupportedVersionError: a format version other than 1.
        FormatError: anything else malformed, with its offset.
    """
    data = bytes(data)
    if len(data) < FIXED_HEADER_SIZE:
        raise FormatError(f"an IGVM file is at least {FIXED_HEADER_SIZE} bytes", offset=0)
    magic, version, vh_offset, vh_size, total, checksum = FIXED_HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise NotAnImageError("not an IGVM file (no IGVM magic)", offset=0)
    if version != 1:
        raise UnsupportedVersionError(
            f"IGVM format version {version} is not supported (1)", offset=4
        )
    if total != len(data):
        raise FormatError(
            f"the header says {total} bytes but the file has {len(data)}", offset=0x10
        )
    if vh_offset < FIXED_HEADER_SIZE or vh_offset % 8:
        raise FormatError("the variable headers start misaligned or inside the header", offset=8)
    vh_end = vh_offset + vh_size
    if vh_end >= len(data):
        raise FormatError("the variable headers run to or past the end of the file", offset=0xC)
    crc = zlib.crc32(data[:0x14] + bytes(4) + data[FIXED_HEADER_SIZE:vh_offset])
    crc = zlib.crc32(data[vh_offset:vh_end], crc)
    if crc != checksum:
        raise FormatError(
            f"CRC-32 {crc:#010x} does not match the header's {checksum:#010x}", offset=0x14
        )
    return _Reader(data, version, vh_offset, vh_end).read()


class _Reader:
    def __init__(self, data: bytes, version: int, start: int, end: int) -> None:
        self.data = data
        self.view = memoryview(data)
        self.version = version
        self.start = start
        self.end = end
        self.platform_bits = 0
        self.platform_types: set[int] = set()
        self.areas: dict[int, int] = {}  # parameter area index -> size, until inserted
        self.inserted: set[int] = set()
        # platform mask bit -> the GPA ranges placed so far: sorted, disjoint (start, end, offset)
        self.placed: dict[int, list[tuple[int, int, int]]] = {}
        self.checks: dict[
            HeaderType, Callable[[dict[str, int | bytes], int], bytes | memoryview | None]
        ] = {
            kind: getattr(self, f"check_{kind.name.lower()}")
            for kind in HeaderType
            if hasattr(self, f"check_{kind.name.lower()}")
        }

    def read(self) -> IgvmFile:
        headers: list[Header] = []
        skipped: list[Header] = []
        section = Section.PLATFORM
        offset = self.start
        while offset < self.end:
            if offset + _RECORD.size > self.end:
                raise FormatError("a record header runs past the variable headers", offset=offset)
            kind, length = _RECORD.unpack_from(self.data, offset)
            body_at = offset + _RECORD.size
            padded = (length + 7) & ~7
            if body_at + padded > self.end:
                raise FormatError("a record runs past the variable headers", offset=offset)
            if any(self.data[body_at + length : body_at + padded]):
                raise FormatError("non-zero padding after a record", offset=body_at + length)
            body = self.data[body_at : body_at + length]
            where = section_of(kind)
            if where is None:
                raise FormatError(f"record type {kind:#x} belongs to no section", offset=offset)
            if where < section:
                raise FormatError(
                    f"record type {kind:#x} ({where.name.lower()}) after the "
                    f"{section.name.lower()} section began",
                    offset=offset,
                )
            section = where
            if kind == _PAGE_DATA_CODE and length == _PAGE_DATA_BODY:
                offset = self.page_run(offset, headers)
                continue
            known = _KNOWN_TYPES.get(kind)
            if known is None:
                if kind & OPTIONAL_BIT:
                    skipped.append(Header(kind, offset, {}, body))
                    offset = body_at + padded
                    continue
                raise FormatError(
                    f"unknown record type {kind:#x} without the optional bit", offset=offset
                )
            headers.append(self.record(known, offset, body))
            offset = body_at + padded
        if offset != self.end:
            raise FormatError("the last record does not end the variable headers", offset=offset)
        return IgvmFile(self.version, headers, len(self.data), skipped)

    def page_run(self, offset: int, headers: list[Header]) -> int:
        """Read a run of plain PAGE_DATA records from `offset`; return where the run ends.

        The common case of a large file, kept flat: one `iter_unpack` over the run and the
        checks of `record` and `check_page_data` inlined. Any record that is not a plain,
        valid, 4 KiB page with whole data goes through `record`, which applies every rule
        and raises the precise error.
        """
        data, view, end, total = self.data, self.view, self.end, len(self.data)
        bits, placed = self.platform_bits, self.placed
        size = _PAGE_RECORD.size
        at = offset
        limit = offset + (end - offset) // size * size
        for (
            kind,
            length,
            gpa,
            mask,
            file_offset,
            flags,
            dtype,
            reserved,
        ) in _PAGE_RECORD.iter_unpack(view[offset:limit]):
            if kind != _PAGE_DATA_CODE or length != _PAGE_DATA_BODY:
                break  # the run ends; `read` takes the next record
            body = data[at + 8 : at + size]
            plain = (
                not reserved
                and not flags
                and dtype in _DATA_TYPES
                and mask
                and not mask & ~bits
                and not gpa % PAGE_SIZE
                and end <= file_offset <= total - PAGE_SIZE
            )
            if plain:
                if mask & (mask - 1):  # several platforms share the page
                    lows = _bits_of(mask)
                    plain = all(not (r := placed.get(low)) or r[-1][1] <= gpa for low in lows)
                else:
                    lows = [mask]
                    ranges = placed.get(mask)
                    plain = not ranges or ranges[-1][1] <= gpa
            if not plain:  # anything unusual: every rule, and the precise error
                headers.append(self.record(HeaderType.PAGE_DATA, at, body))
                at += size
                continue
            for low in lows:
                placed.setdefault(low, []).append((gpa, gpa + PAGE_SIZE, at))
            fields: dict[str, int | bytes] = {
                "gpa": gpa,
                "compatibility_mask": mask,
                "file_offset": file_offset,
                "flags": 0,
                "data_type": dtype,
                "reserved": 0,
            }
            page = view[file_offset : file_offset + PAGE_SIZE]
            headers.append(Header(HeaderType.PAGE_DATA, at, fields, body, page))
            at += size
        return at

    def record(self, kind: HeaderType, offset: int, body: bytes) -> Header:
        layout = _STRUCTS[kind]
        if len(body) != layout.size:
            raise FormatError(
                f"{kind.name} is {len(body)} bytes, not {layout.size}", offset=offset + 4
            )
        fields = dict(zip(_LAYOUTS[kind][1], layout.unpack(body), strict=True))
        for name in _RESERVED_FIELDS[kind]:
            value = fields[name]
            if any(value) if isinstance(value, bytes) else value:
                raise FormatError(f"{kind.name}.{name} is not zero", offset=offset)
        mask = fields.get("compatibility_mask")
        undeclared = mask == 0 or mask & ~self.platform_bits if isinstance(mask, int) else False
        if undeclared and kind is not _SUPPORTED_PLATFORM:
            raise FormatError(
                f"{kind.name} names platforms {mask:#x} not declared before it", offset=offset
            )
        check = self.checks.get(kind)
        data = check(fields, offset) if check is not None else None
        if kind in _PARAMETER_USAGES:
            self.check_usage(fields, offset, kind)
        return Header(kind, offset, fields, body, data)

    # ---------------------------------------------------------------- per-type rules

    def check_supported_platform(self, f: dict[str, int | bytes], offset: int) -> None:
        mask, vtl, ptype, pversion = (
            int(f["compatibility_mask"]),
            int(f["highest_vtl"]),
            int(f["platform_type"]),
            int(f["platform_version"]),
        )
        if mask.bit_count() != 1 or mask & self.platform_bits:
            raise FormatError("a platform needs one compatibility bit of its own", offset=offset)
        if vtl not in (0, 2) or pversion != 1:
            raise FormatError("platform highest VTL must be 0 or 2, version 1", offset=offset)
        if ptype not in _PLATFORM_TYPES or ptype in self.platform_types:
            raise FormatError(f"platform type {ptype} is unknown or repeated", offset=offset)
        self.platform_bits |= mask
        self.platform_types.add(ptype)

    def check_page_data(self, f: dict[str, int | bytes], offset: int) -> bytes | memoryview:
        gpa, flags, dtype, file_offset = (
            int(f["gpa"]),
            int(f["flags"]),
            int(f["data_type"]),
            int(f["file_offset"]),
        )
        if flags & ~0x7:
            raise FormatError(f"PAGE_DATA sets unknown flags {flags:#x}", offset=offset)
        if dtype not in _DATA_TYPES:
            raise FormatError(f"PAGE_DATA has unknown data type {dtype}", offset=offset)
        size = LARGE_PAGE if flags & _FLAG_2MB else PAGE_SIZE
        if gpa % size:
            raise FormatError(f"PAGE_DATA gpa {gpa:#x} is not {size:#x}-aligned", offset=offset)
        self.claim_pages(int(f["compatibility_mask"]), gpa, size, offset)
        return self.file_data(file_offset, PAGE_SIZE, offset) if file_offset else b""

    def check_vp_context(self, f: dict[str, int | bytes], offset: int) -> bytes | memoryview:
        gpa = int(f["gpa"])
        if gpa % PAGE_SIZE:
            raise FormatError(f"VP_CONTEXT gpa {gpa:#x} is not page-aligned", offset=offset)
        self.claim_pages(int(f["compatibility_mask"]), gpa, PAGE_SIZE, offset)
        return self.file_data(int(f["file_offset"]), PAGE_SIZE, offset)

    def check_parameter_area(
        self, f: dict[str, int | bytes], offset: int
    ) -> bytes | memoryview | None:
        size, index, file_offset = (
            int(f["number_of_bytes"]),
            int(f["parameter_area_index"]),
            int(f["file_offset"]),
        )
        if size == 0 or size % PAGE_SIZE or size > MAX_PARAMETER_AREA:
            raise FormatError(
                "a parameter area is a whole number of pages, at most 4 GiB", offset=offset
            )
        if index in self.areas or index in self.inserted:
            raise FormatError(f"parameter area {index} is declared twice", offset=offset)
        self.areas[index] = size
        return self.file_data(file_offset, size, offset) if file_offset else None

    def check_parameter_insert(self, f: dict[str, int | bytes], offset: int) -> None:
        index, gpa = int(f["parameter_area_index"]), int(f["gpa"])
        if index not in self.areas:
            raise FormatError(
                f"parameter area {index} is not declared (or already inserted)", offset=offset
            )
        if gpa % PAGE_SIZE:
            raise FormatError(f"PARAMETER_INSERT gpa {gpa:#x} is not page-aligned", offset=offset)
        self.claim_pages(int(f["compatibility_mask"]), gpa, self.areas.pop(index), offset)
        self.inserted.add(index)

    def check_usage(self, f: dict[str, int | bytes], offset: int, kind: HeaderType) -> None:
        index, at = int(f["parameter_area_index"]), int(f["byte_offset"])
        size = self.areas.get(index)
        if size is None:
            raise FormatError(
                f"{kind.name} uses parameter area {index}, not declared or already inserted",
                offset=offset,
            )
        if at >= size:
            raise FormatError(f"{kind.name} byte offset {at} is outside its area", offset=offset)

    def check_required_memory(self, f: dict[str, int | bytes], offset: int) -> None:
        if int(f["gpa"]) % PAGE_SIZE or int(f["number_of_bytes"]) % PAGE_SIZE:
            raise FormatError("REQUIRED_MEMORY is not page-aligned", offset=offset)
        if int(f["flags"]) & ~1:
            raise FormatError("REQUIRED_MEMORY sets unknown flags", offset=offset)

    def check_corim_document(self, f: dict[str, int | bytes], offset: int) -> bytes | memoryview:
        return self.file_data(int(f["file_offset"]), int(f["size_bytes"]), offset)

    check_corim_signature = check_corim_document

    def claim_pages(self, mask: int, gpa: int, size: int, offset: int) -> None:
        """Refuse a page that another record already placed for the same platform.

        Ranges, not pages, are kept, so a large page or parameter area costs one entry.
        """
        end = gpa + size
        bits = mask
        while bits:
            low = bits & -bits
            bits ^= low
            ranges = self.placed.setdefault(low, [])
            if not ranges or ranges[-1][1] <= gpa:  # the usual case: pages in rising order
                ranges.append((gpa, end, offset))
                continue
            # The first range ending above gpa; ends rise with starts, the ranges being disjoint.
            at = bisect.bisect_right(ranges, gpa, key=lambda placed: placed[1])
            if at < len(ranges) and ranges[at][0] < end:
                start, _, earlier = ranges[at]
                raise FormatError(
                    f"page {max(start, gpa):#x} overlaps the one placed by the record "
                    f"at {earlier:#x}",
                    offset=offset,
                )
            ranges.insert(at, (gpa, end, offset))

    def file_data(self, file_offset: int, size: int, offset: int) -> bytes | memoryview:
        """`size` bytes at `file_offset`, which must lie in the file-data section.

        Data that the end of the file cuts short is zero-padded by less than a page (a last
        page stored short); data missing a whole page or more is refused.
        """
        if file_offset < self.end or file_offset >= len(self.data):
            raise FormatError(
                f"file offset {file_offset:#x} is outside the file data", offset=offset
            )
        chunk = self.view[file_offset : file_offset + size]  # a view: pages are not copied
        if len(chunk) == size:
            return chunk
        if size - len(chunk) >= PAGE_SIZE:
            raise FormatError(
                f"{size:#x} bytes at file offset {file_offset:#x} run past the end of the file",
                offset=offset,
            )
        return bytes(chunk) + bytes(size - len(chunk))


# ---------------------------------------------------------------- writing


@dataclass(slots=True)
class _Pending:
    kind: HeaderType
    fields: dict[str, int | bytes]
    data: bytes | None = None  # file data to place; its offset goes to fields["file_offset"]


class IgvmBuilder:
    """Build IGVM files (for tests, fixtures and examples): records in the order added.

    Identical page contents are stored once, as the reference serializer does.
    """

    def __init__(self) -> None:
        self._records: list[_Pending] = []

    def add(
        self, kind: HeaderType, data: bytes | None = None, **fields: int | bytes
    ) -> IgvmBuilder:
        """Add any record; missing fields are zero. `data` is placed in the file data."""
        names = _LAYOUTS[kind][1]
        unknown = set(fields) - set(names)
        if unknown:
            raise ValueError(f"{kind.name} has no field {sorted(unknown)}")
        full: dict[str, int | bytes] = {}
        for name, code in zip(names, _field_codes(_LAYOUTS[kind][0]), strict=True):
            default: int | bytes = bytes(int(code[:-1])) if code.endswith("s") else 0
            full[name] = fields.get(name, default)
        self._records.append(_Pending(kind, full, data))
        return self

    def platform(
        self, platform: PlatformType, mask: int, *, vtl: int = 0, shared_gpa_boundary: int = 0
    ) -> IgvmBuilder:
        """A SUPPORTED_PLATFORM record."""
        return self.add(
            HeaderType.SUPPORTED_PLATFORM,
            compatibility_mask=mask,
            highest_vtl=vtl,
            platform_type=platform,
            platform_version=1,
            shared_gpa_boundary=shared_gpa_boundary,
        )

    def policy(self, policy: int, mask: int) -> IgvmBuilder:
        """A GUEST_POLICY record."""
        return self.add(HeaderType.GUEST_POLICY, policy=policy, compatibility_mask=mask)

    def page(
        self,
        gpa: int,
        data: bytes | None,
        mask: int,
        *,
        data_type: PageDataType = PageDataType.NORMAL,
        flags: int = 0,
    ) -> IgvmBuilder:
        """A PAGE_DATA record; `data` None means file offset 0 (a page of zeros)."""
        if data is not None and len(data) > PAGE_SIZE:
            raise ValueError("page data is at most one page")
        return self.add(
            HeaderType.PAGE_DATA,
            data,
            gpa=gpa,
            compatibility_mask=mask,
            flags=flags,
            data_type=data_type,
        )

    def parameter_area(self, index: int, size: int, initial: bytes | None = None) -> IgvmBuilder:
        """A PARAMETER_AREA declaration; `initial` is zero-padded to `size`."""
        if initial is not None:
            initial = initial.ljust(size, b"\0")
        return self.add(
            HeaderType.PARAMETER_AREA, initial, number_of_bytes=size, parameter_area_index=index
        )

    def parameter(self, kind: HeaderType, index: int, byte_offset: int = 0) -> IgvmBuilder:
        """A parameter usage (VP_COUNT_PARAMETER, MEMORY_MAP, ...)."""
        return self.add(kind, parameter_area_index=index, byte_offset=byte_offset)

    def insert(self, gpa: int, index: int, mask: int) -> IgvmBuilder:
        """A PARAMETER_INSERT."""
        return self.add(
            HeaderType.PARAMETER_INSERT,
            gpa=gpa,
            compatibility_mask=mask,
            parameter_area_index=index,
        )

    def vp_context(self, gpa: int, vmsa: bytes, mask: int, *, vp_index: int = 0) -> IgvmBuilder:
        """A VP_CONTEXT holding a VMSA page."""
        return self.add(
            HeaderType.VP_CONTEXT, vmsa, gpa=gpa, compatibility_mask=mask, vp_index=vp_index
        )

    def build(self) -> bytes:
        """The file: fixed header with CRC, variable headers, then the file data."""
        bodies: list[tuple[HeaderType, _Pending]] = list((r.kind, r) for r in self._records)
        vh_size = sum(_RECORD.size + ((_STRUCTS[k].size + 7) & ~7) for k, _ in bodies)
        data_start = FIXED_HEADER_SIZE + vh_size
        file_data = bytearray()
        placed: dict[bytes, int] = {}
        for _, record in bodies:
            if record.data is None:
                continue
            blob = record.data
            if record.kind in (HeaderType.PAGE_DATA, HeaderType.VP_CONTEXT):
                blob = blob.ljust(PAGE_SIZE, b"\0")
            at = placed.get(blob)
            if at is None:
                at = placed[blob] = data_start + len(file_data)
                file_data += blob
            record.fields["file_offset"] = at
        if not file_data:
            file_data += bytes(8)  # the reference parser refuses an empty file-data section
        headers = bytearray()
        for kind, record in bodies:
            body = _STRUCTS[kind].pack(*(record.fields[name] for name in _LAYOUTS[kind][1]))
            headers += _RECORD.pack(kind, len(body)) + body.ljust((len(body) + 7) & ~7, b"\0")
        total = FIXED_HEADER_SIZE + len(headers) + len(file_data)
        fixed = FIXED_HEADER.pack(MAGIC, 1, FIXED_HEADER_SIZE, len(headers), total, 0)
        checksum = zlib.crc32(fixed + headers)
        fixed = FIXED_HEADER.pack(MAGIC, 1, FIXED_HEADER_SIZE, len(headers), total, checksum)
        return bytes(fixed + headers + file_data)


def _field_codes(fmt: str) -> list[str]:
    """The struct codes of a format, one per field ("48s" stays whole)."""
    codes: list[str] = []
    number = ""
    for char in fmt[1:]:
        if char.isdigit():
            number += char
        elif char == "s":
            codes.append(f"{number}s")
            number = ""
        else:
            codes.extend([char] * int(number or 1))
            number = ""
    return codes
