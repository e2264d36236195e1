"""`cvmstore igvm show` and `cvmstore igvm measure`: read an IGVM file, compute its SNP digest.

`show` lists the fixed header and every variable header in file order. `measure` prints the
SEV-SNP launch digest (`cvmstore.igvm.measure.measure_snp`) as the 96 lower-case hex digits a
key broker policy lists, and, like igvmmeasure, refuses a file whose SNP ID block expects a
different digest unless told to ignore it. A malformed file is one error line and the
FormatError family's exit status (docs/igvm.md, docs/errors.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import textwrap
from typing import Any

from cvmstore.cli.common import NestedParser, add_measure_options, load_igvm, measure_igvm
from cvmstore.igvm.format import (
    FIXED_HEADER,
    FIXED_HEADER_SIZE,
    Header,
    HeaderType,
    IgvmFile,
    PageDataFlags,
    PageDataType,
    PlatformType,
)

__all__ = ["register"]


_DIGEST_TEXT = (
    "The launch digest is the SHA-384 chain the AMD secure processor builds over every\n"
    "page and the initial VMSA as the host loads them, in the file's directive order. A\n"
    "guest launched from this file (the way QEMU/KVM does; see --check-kvm) reports it as\n"
    "MEASUREMENT (offset 0x90 of its attestation report), so it is the reference value a\n"
    "key broker checks: list it in a policy's `measurements = [...]`\n"
    "(docs/attestation-policy.md) and check reports with `cvmstore snp verify REPORT\n"
    "--policy FILE`. `cvmstore kbs admin add-reference --igvm FILE` measures the file\n"
    "the same way and registers the digest with a key broker in one step."
)

_MEASURE_EPILOG = """\
what is measured (docs/igvm.md):
  PAGE_DATA         a NORMAL page (SHA-384 of its 4 KiB); a page with no data is a NORMAL
                    page of zeros (with --native-zero: a ZERO page); `unmeasured` pages are
                    UNMEASURED; SECRETS and CPUID pages by type, contents not hashed
  PARAMETER_INSERT  UNMEASURED pages: the whole area (igvm style) or one page (igvmmeasure)
  VP_CONTEXT        a VMSA page: SHA-384 of the VMSA exactly as stored, at its GPA
  everything else   not measured (policy, parameter areas and usages, required memory)

styles (they agree on every COCONUT-SVSM file):
  igvm         (default) like the microsoft/igvm crate and QEMU's loader: a parameter
               insert measures every page of its area; pages flagged `shared` are
               host-visible and not measured
  igvmmeasure  like COCONUT's igvmmeasure: a parameter insert is one page; `shared` is
               ignored (the page is measured as if private)

--check-kvm (igvmmeasure's rules for a QEMU/KVM launch, where KVM rebuilds the VMSA):
  at most one VMSA; at GPA 0xfffffffff000; its CR0 is 0x31 or 0x30; no page after it

the ID block: when the file holds an SNP ID block, the firmware refuses a launch whose
digest differs from the block's `ld`. measure fails in that case (exit 3, naming both
digests) unless --ignore-idblock is given.

exit status: 0 digest printed; 2 usage error (unreadable file); 3 FormatError (malformed
file, no SEV-SNP platform, a --check-kvm rule broken, or the ID block expects another
digest); 4 NotAnImageError (no IGVM magic); 5 UnsupportedVersionError (format version
other than 1).

examples:
  cvmstore igvm measure coconut-qemu.igvm --check-kvm
  cvmstore igvm measure coconut-qemu.igvm --format json
  printf 'measurements = ["%s"]\\n' "$(cvmstore igvm measure guest.igvm)" > policy.toml
"""

_SHOW_EPILOG = """\
columns: the header's file offset, its type, its compatibility mask (the platforms it
applies to, one bit each as the SUPPORTED_PLATFORM headers declare; `-` for headers that
apply everywhere), then its main fields. Numbers are hex except counts and indexes;
`data @0x..` is the absolute file offset of the bytes a header points to. --json gives
every field (byte strings as hex) and the size and SHA-384 of the data each header names.

exit status: 0 shown; 2 usage error; 3 FormatError (malformed file); 4 NotAnImageError;
5 UnsupportedVersionError.
"""


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `igvm show` and `igvm measure` to the command line."""
    igvm = commands.add_parser(
        "igvm",
        help="show an IGVM file, or compute its SEV-SNP launch digest",
        description=(
            "Read IGVM files (Independent Guest Virtual Machine format, version 1): the "
            "initial memory and CPU state a confidential VM is launched with, as an ordered "
            "list of loader directives."
        ),
    )
    actions = igvm.add_subparsers(dest="igvm_command", metavar="ACTION", required=True)

    show = actions.add_parser(
        "show",
        help="list the fixed header and every header, in file order",
        description=textwrap.fill(
            "Validate an IGVM file and list its fixed header and every variable header in "
            "file order, one line each. Nothing is measured: use `cvmstore igvm measure` "
            "for the digest.",
            88,
        ),
        epilog=_SHOW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("file", metavar="FILE", help="the IGVM file, or - for stdin")
    show.add_argument("--json", action="store_true", help="print JSON with every field")
    show.set_defaults(handler=_show, command_parser=NestedParser(show))

    measure = actions.add_parser(
        "measure",
        help="print the SEV-SNP launch digest (the attestation MEASUREMENT)",
        description=textwrap.fill(
            "Compute the SEV-SNP launch digest of an IGVM file and print it as 96 "
            "lower-case hex digits on one line (nothing else), ready for a key broker "
            "policy. igvmmeasure prints the same digest in upper case; compare without "
            "regard to case.",
            88,
        )
        + "\n\n"
        + _DIGEST_TEXT,
        epilog=_MEASURE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    measure.add_argument("file", metavar="FILE", help="the IGVM file, or - for stdin")
    measure.add_argument(
        "--format",
        choices=("hex", "json"),
        default="hex",
        help="hex: the digest alone (default); json: the digest, page counts by type, the "
        "options used and the ID block's digest",
    )
    add_measure_options(measure)
    measure.set_defaults(handler=_measure, command_parser=NestedParser(measure))


# ---------------------------------------------------------------- input


def _platform_names(igvm: IgvmFile) -> dict[int, str]:
    """Compatibility bit -> platform name."""
    names: dict[int, str] = {}
    for header in igvm.platforms():
        ptype = header.number("platform_type")
        names[header.number("compatibility_mask")] = _enum_name(PlatformType, ptype)
    return names


def _enum_name(enum: type[PlatformType] | type[PageDataType], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _flag_names(flags: int) -> list[str]:
    return [flag.name.lower() for flag in PageDataFlags if flag.name and flags & flag]


# ---------------------------------------------------------------- show


def _show(args: argparse.Namespace) -> int:
    data, igvm = load_igvm(args.file)
    magic, version, vh_offset, vh_size, total, checksum = FIXED_HEADER.unpack_from(data, 0)
    headers = sorted([*igvm.headers, *igvm.skipped], key=lambda h: h.offset)
    platforms = _platform_names(igvm)
    if args.json:
        document = {
            "file": args.file,
            "fixed_header": {
                "magic": struct.pack("<I", magic).decode("ascii"),
                "format_version": version,
                "variable_header_offset": vh_offset,
                "variable_header_size": vh_size,
                "total_file_size": total,
                "checksum": checksum,
                "file_data_offset": vh_offset + vh_size,
            },
            "platforms": [
                {"type": name, "compatibility_mask": mask} for mask, name in platforms.items()
            ],
            "headers": [_header_dict(header, platforms) for header in headers],
        }
        print(json.dumps(document, indent=2))
        return 0
    print(f"IGVM file {args.file}: format version {version}, {total:,} bytes")
    print(
        f"  fixed header   {FIXED_HEADER_SIZE} bytes; variable headers at {vh_offset:#x}, "
        f"{vh_size:#x} bytes ({len(headers)} headers); file data from {vh_offset + vh_size:#x}"
    )
    print(f"  checksum       CRC-32 {checksum:#010x} (verified)")
    listed = ", ".join(f"{name} (mask {mask:#x})" for mask, name in platforms.items())
    print(f"  platforms      {listed or 'none'}")
    width = max([len(h.name) for h in headers] + [4])
    print(f"{'offset':<8}  {'type':<{width}}  {'mask':<6}  fields")
    for header in headers:
        mask = header.fields.get("compatibility_mask")
        shown = f"{mask:#x}" if isinstance(mask, int) else "-"
        print(
            f"{header.offset:<#8x}  {header.name:<{width}}  {shown:<6}  "
            f"{_summary(header, platforms)}"
        )
    return 0


def _summary(header: Header, platforms: dict[int, str]) -> str:
    """The main fields of one header, on one line."""
    kind = header.kind
    f = header.fields

    def num(name: str) -> int:
        return header.number(name)

    def at(name: str = "file_offset") -> str:
        return f"data @{num(name):#x}" if num(name) else "no data"

    if not isinstance(kind, HeaderType):
        return f"unknown optional header, skipped; {len(header.body)} bytes"
    if kind is HeaderType.SUPPORTED_PLATFORM:
        return (
            f"platform {_enum_name(PlatformType, num('platform_type'))}, version "
            f"{num('platform_version')}, highest VTL {num('highest_vtl')}, shared GPA "
            f"boundary {num('shared_gpa_boundary'):#x}"
        )
    if kind is HeaderType.GUEST_POLICY:
        return f"policy {num('policy'):#x}"
    if kind is HeaderType.PAGE_DATA:
        flags = _flag_names(num("flags"))
        return (
            f"gpa {num('gpa'):#x}, {_enum_name(PageDataType, num('data_type'))}, flags "
            f"{'|'.join(flags) if flags else '-'}, {at()}"
        )
    if kind is HeaderType.PARAMETER_AREA:
        initial = f"initial {at()}" if num("file_offset") else "zero-filled"
        return f"area {num('parameter_area_index')}, {num('number_of_bytes'):#x} bytes, {initial}"
    if kind is HeaderType.PARAMETER_INSERT:
        return f"gpa {num('gpa'):#x}, area {num('parameter_area_index')}"
    if kind is HeaderType.VP_CONTEXT:
        text = f"gpa {num('gpa'):#x}, vp {num('vp_index')}, {at()}"
        if platforms.get(num("compatibility_mask")) in ("SEV_SNP", "SEV_ES") and header.data:
            text += f"; VMSA {_vmsa_summary(header.data)}"
        return text
    if kind is HeaderType.REQUIRED_MEMORY:
        return f"gpa {num('gpa'):#x}, {num('number_of_bytes'):#x} bytes, flags {num('flags'):#x}"
    if kind is HeaderType.SNP_ID_BLOCK:
        ld = f["ld"]
        assert isinstance(ld, bytes)
        return (
            f"ld {ld.hex()[:32]}..., version {num('version')}, guest_svn "
            f"{num('guest_svn')}, author key {'yes' if num('author_key_enabled') else 'no'}"
        )
    if kind is HeaderType.RELOCATABLE_REGION:
        return (
            f"gpa {num('relocation_region_gpa'):#x}, size {num('relocation_region_size'):#x}, "
            f"alignment {num('relocation_alignment'):#x}, range "
            f"{num('minimum_relocation_gpa'):#x}-{num('maximum_relocation_gpa'):#x}, vp "
            f"{num('vp_index')}, vtl {num('vtl')}, flags {num('flags'):#x}"
        )
    if kind is HeaderType.PAGE_TABLE_RELOCATION_REGION:
        return (
            f"gpa {num('gpa'):#x}, size {num('size'):#x}, used {num('used_size'):#x}, vp "
            f"{num('vp_index')}, vtl {num('vtl')}"
        )
    if kind in (HeaderType.CORIM_DOCUMENT, HeaderType.CORIM_SIGNATURE):
        return f"{num('size_bytes'):#x} bytes, {at()}"
    if kind is HeaderType.ERROR_RANGE:
        return f"gpa {num('gpa'):#x}, {num('size_bytes'):#x} bytes"
    if kind is HeaderType.CCA_POLICY:
        return (
            f"required zeroes {num('required_zeroes'):#x}, required ones "
            f"{num('required_ones'):#x}, hash algorithm {num('hash_algorithm')}, lfa policy "
            f"{num('lfa_policy')}"
        )
    if kind is HeaderType.VBS_MEASUREMENT:
        digest = f["boot_measurement_digest"]
        assert isinstance(digest, bytes)
        return (
            f"version {num('version')}, product {num('product_id')}, module "
            f"{num('module_id')}, svn {num('security_version')}, digest {digest.hex()[:32]}..."
        )
    if "parameter_area_index" in f and "byte_offset" in f:
        return f"area {num('parameter_area_index')}, byte offset {num('byte_offset'):#x}"
    return ", ".join(f"{name} {value!r}" for name, value in f.items())  # pragma: no cover


def _vmsa_summary(vmsa: bytes | memoryview) -> str:
    (efer,) = struct.unpack_from("<Q", vmsa, 0xD0)
    (cr0,) = struct.unpack_from("<Q", vmsa, 0x158)
    (rip,) = struct.unpack_from("<Q", vmsa, 0x178)
    (features,) = struct.unpack_from("<Q", vmsa, 0x3B0)
    return f"cr0 {cr0:#x}, efer {efer:#x}, rip {rip:#x}, sev_features {features:#x}"


def _header_dict(header: Header, platforms: dict[int, str]) -> dict[str, Any]:
    fields = {
        name: value.hex() if isinstance(value, bytes) else value
        for name, value in header.fields.items()
    }
    mask = header.fields.get("compatibility_mask")
    names: dict[str, Any] = {}
    if header.kind is HeaderType.SUPPORTED_PLATFORM:
        names["platform_type"] = _enum_name(PlatformType, header.number("platform_type"))
    if header.kind is HeaderType.PAGE_DATA:
        names["data_type"] = _enum_name(PageDataType, header.number("data_type"))
        names["flags"] = _flag_names(header.number("flags"))
    return {
        "offset": header.offset,
        "type": header.name,
        "code": int(header.kind),
        "skipped": not isinstance(header.kind, HeaderType),
        "fields": fields,
        "names": names,
        "platforms": None
        if not isinstance(mask, int)
        else [name for bit, name in platforms.items() if bit & mask],
        "data": None
        if header.data is None
        else {"size": len(header.data), "sha384": hashlib.sha384(header.data).hexdigest()},
        **({} if isinstance(header.kind, HeaderType) else {"body": header.body.hex()}),
    }


# ---------------------------------------------------------------- measure


def _measure(args: argparse.Namespace) -> int:
    result = measure_igvm(args.file, args)
    matches = None if result.id_block_ld is None else result.id_block_ld == result.digest
    if args.format == "hex":
        print(result.hex)
        return 0
    document = {
        "file": args.file,
        "digest": result.hex,
        "pages": result.pages,
        "pages_by_type": result.by_type,
        "options": {
            "style": args.style,
            "native_zero": args.native_zero,
            "check_kvm": args.check_kvm,
            "ignore_idblock": args.ignore_idblock,
        },
        "id_block_ld": None if result.id_block_ld is None else result.id_block_ld.hex(),
        "id_block_matches": matches,
    }
    print(json.dumps(document, indent=2))
    return 0
