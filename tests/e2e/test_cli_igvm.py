"""`cvmstore igvm show` and `cvmstore igvm measure` as a user runs them: a subprocess, exit codes.

The files are built at run time with `IgvmBuilder`; the main one is the worked example of
../shared/research/igvm.md §3.3, whose digests were computed independently (a throwaway
parser and sev-snp-measure's GCTX agreed on them) and are pinned here.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from pathlib import Path

import pytest

from cvmstore.igvm.format import (
    HeaderType,
    IgvmBuilder,
    PageDataFlags,
    PageDataType,
    PlatformType,
)
from tests.e2e.test_cli_image import cvmstore, fails, ok

#: The worked example's launch digest (research §3.3), and with ZERO pages (`--native-zero`).
DIGEST = (
    "29e88dbc2110a9c6c69d95b8ade811b78de71da0bf98a260d683f216981dff36"
    "41757c22d9fb5e52182d2a6040af2ddf"
)
NATIVE_ZERO_DIGEST = (
    "c9808cca58f0a0022414ee2d5e7c7f585562a16f016a261b3e0b9b7d16aa0a29"
    "d8711355e529c1b176abd52d371de85a"
)
VMSA_SHA384 = "fabba3b4"  # ... "ca822e79"
KVM_GPA = 0xFFFF_FFFF_F000

#: The worked example's headers, in file order.
EXAMPLE_TYPES = [
    "SUPPORTED_PLATFORM",
    "GUEST_POLICY",
    *["PAGE_DATA"] * 6,
    "PARAMETER_AREA",
    "VP_COUNT_PARAMETER",
    "PARAMETER_INSERT",
    "VP_CONTEXT",
]


def vmsa(*, cr0: int = 0x30) -> bytes:
    """The example's VMSA: a real-mode reset state at 0xffff_fff0, SNP enabled."""
    page = bytearray(4096)
    struct.pack_into("<HHIQ", page, 0x10, 0xF000, 0x9B, 0xFFFF, 0xFFFF_0000)  # cs
    struct.pack_into("<Q", page, 0xD0, 0x1000)  # efer.SVME
    struct.pack_into("<Q", page, 0x158, cr0)
    struct.pack_into("<Q", page, 0x178, 0xFFF0)  # rip
    struct.pack_into("<Q", page, 0x268, 0x0007_0406_0007_0406)  # PAT
    struct.pack_into("<Q", page, 0x3B0, 0x1)  # sev_features: SNP
    struct.pack_into("<Q", page, 0x3E8, 1)  # xcr0
    return bytes(page)


def example(
    *,
    cr0: int = 0x30,
    vmsa_gpa: int = KVM_GPA,
    area: int = 0x1000,
    page_after_vmsa: bool = False,
    id_block_ld: bytes | None = None,
) -> bytes:
    """The worked example of research §3.3, optionally changed to break one rule."""
    b = IgvmBuilder().platform(PlatformType.SEV_SNP, 1).policy(0x30000, 1)
    b.page(0x1000, b"\x01" * 4096, 1)
    b.page(0x2000, b"\x02" * 4096, 1)
    b.page(0x3000, None, 1)  # no data: a page of zeros
    b.page(0x4000, None, 1, flags=PageDataFlags.UNMEASURED)
    b.page(0x5000, None, 1, data_type=PageDataType.SECRETS)
    b.page(0x6000, None, 1, data_type=PageDataType.CPUID_DATA)
    b.parameter_area(0, area).parameter(HeaderType.VP_COUNT_PARAMETER, 0)
    b.insert(0x7000, 0, 1)
    b.vp_context(vmsa_gpa, vmsa(cr0=cr0), 1)
    if page_after_vmsa:
        b.page(0x20_0000, b"\x03" * 4096, 1)
    if id_block_ld is not None:
        b.add(HeaderType.SNP_ID_BLOCK, compatibility_mask=1, ld=id_block_ld, version=1)
    return b.build()


def write(tmp_path: Path, data: bytes, name: str = "guest.igvm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def fix_crc(data: bytearray) -> None:
    """Recompute the fixed header's CRC-32 after an edit of the headers."""
    vh_offset, vh_size = struct.unpack_from("<II", data, 8)
    data[0x14:0x18] = bytes(4)
    crc = zlib.crc32(bytes(data[:vh_offset]) + bytes(data[vh_offset : vh_offset + vh_size]))
    struct.pack_into("<I", data, 0x14, crc)


def with_unknown_optional_record(data: bytes) -> bytes:
    """`data` (which must have no file data besides the builder's 8 filler bytes) plus an
    unknown directive record with the optional bit set, appended to the variable headers."""
    vh_offset, vh_size, total = struct.unpack_from("<III", data, 8)
    assert total == vh_offset + vh_size + 8, "the file must have no page data"
    record = struct.pack("<II", 0x8000_0330, 12) + b"\xab" * 12 + bytes(4)
    out = bytearray(data[: vh_offset + vh_size] + record + data[vh_offset + vh_size :])
    struct.pack_into("<II", out, 0x0C, vh_size + len(record), total + len(record))
    fix_crc(out)
    return bytes(out)


def table_rows(out: str) -> list[list[str]]:
    """The header table of `igvm show`: [offset, type, mask, fields] per row."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("offset "))
    return [re.split(r"\s{2,}", line, maxsplit=3) for line in lines[start + 1 :]]


# ---------------------------------------------------------------- show


def test_show_lists_every_header_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, example())
    out = ok(cvmstore("igvm", "show", path)).stdout.decode()
    size = path.stat().st_size
    assert out.startswith(f"IGVM file {path}: format version 1, {size:,} bytes\n")
    assert "variable headers at 0x18, 0x150 bytes (12 headers); file data from 0x168" in out
    assert "platforms      SEV_SNP (mask 0x1)" in out
    crc = struct.unpack_from("<I", path.read_bytes(), 0x14)[0]
    assert f"CRC-32 {crc:#010x} (verified)" in out
    rows = table_rows(out)
    assert [row[1] for row in rows] == EXAMPLE_TYPES
    offsets = [int(row[0], 16) for row in rows]
    assert offsets[0] == 0x18
    assert offsets == sorted(offsets)
    by_gpa = {row[3].split(",")[0]: row for row in rows if row[1] == "PAGE_DATA"}
    assert by_gpa["gpa 0x1000"][2] == "0x1"
    assert by_gpa["gpa 0x1000"][3] == "gpa 0x1000, NORMAL, flags -, data @0x168"
    assert by_gpa["gpa 0x2000"][3] == "gpa 0x2000, NORMAL, flags -, data @0x1168"
    assert by_gpa["gpa 0x3000"][3].endswith("no data")
    assert by_gpa["gpa 0x4000"][3] == "gpa 0x4000, NORMAL, flags unmeasured, no data"
    assert "SECRETS" in by_gpa["gpa 0x5000"][3]
    assert "CPUID_DATA" in by_gpa["gpa 0x6000"][3]
    rows_by_type = {row[1]: row for row in rows}
    assert rows_by_type["SUPPORTED_PLATFORM"][3].startswith("platform SEV_SNP, version 1")
    assert rows_by_type["GUEST_POLICY"][3] == "policy 0x30000"
    assert rows_by_type["PARAMETER_AREA"][2] == "-"  # applies everywhere: no mask
    assert rows_by_type["PARAMETER_AREA"][3] == "area 0, 0x1000 bytes, zero-filled"
    assert rows_by_type["VP_COUNT_PARAMETER"][3] == "area 0, byte offset 0x0"
    assert rows_by_type["PARAMETER_INSERT"][3] == "gpa 0x7000, area 0"
    assert rows_by_type["VP_CONTEXT"][3] == (
        "gpa 0xfffffffff000, vp 0, data @0x2168; VMSA cr0 0x30, efer 0x1000, rip 0xfff0, "
        "sev_features 0x1"
    )


def test_show_json_gives_every_field(tmp_path: Path) -> None:
    ld = bytes(range(48))
    data = example(id_block_ld=ld)
    path = write(tmp_path, data)
    doc = json.loads(ok(cvmstore("igvm", "show", "--json", path)).stdout)
    vh_offset, vh_size, total, checksum = struct.unpack_from("<IIII", data, 8)
    assert doc["fixed_header"] == {
        "magic": "IGVM",
        "format_version": 1,
        "variable_header_offset": vh_offset,
        "variable_header_size": vh_size,
        "total_file_size": total,
        "checksum": checksum,
        "file_data_offset": vh_offset + vh_size,
    }
    assert doc["platforms"] == [{"type": "SEV_SNP", "compatibility_mask": 1}]
    headers = doc["headers"]
    assert [h["type"] for h in headers] == [*EXAMPLE_TYPES, "SNP_ID_BLOCK"]
    platform = headers[0]
    assert platform["fields"]["platform_type"] == 2
    assert platform["names"] == {"platform_type": "SEV_SNP"}
    first = headers[2]
    assert first["code"] == 0x302
    assert first["fields"] == {
        "gpa": 0x1000,
        "compatibility_mask": 1,
        "file_offset": vh_offset + vh_size,
        "flags": 0,
        "data_type": 0,
        "reserved": 0,
    }
    assert first["platforms"] == ["SEV_SNP"]
    assert first["data"] == {"size": 4096, "sha384": hashlib.sha384(b"\x01" * 4096).hexdigest()}
    unmeasured = headers[5]
    assert unmeasured["names"] == {"data_type": "NORMAL", "flags": ["unmeasured"]}
    assert headers[8]["platforms"] is None  # PARAMETER_AREA has no mask
    vp = headers[11]
    assert vp["fields"]["gpa"] == KVM_GPA
    assert vp["data"]["sha384"].startswith(VMSA_SHA384)
    assert vp["data"]["sha384"].endswith("ca822e79")
    block = headers[12]
    assert block["fields"]["ld"] == ld.hex()  # byte strings as hex
    assert block["fields"]["id_key_signature"] == "00" * 144
    assert block["fields"]["version"] == 1
    assert {h["skipped"] for h in headers} == {False}


def test_show_lists_a_skipped_optional_header(tmp_path: Path) -> None:
    bare = IgvmBuilder().platform(PlatformType.SEV_SNP, 1).page(0x1000, None, 1).build()
    path = write(tmp_path, with_unknown_optional_record(bare))
    rows = table_rows(ok(cvmstore("igvm", "show", path)).stdout.decode())
    assert [row[1] for row in rows] == ["SUPPORTED_PLATFORM", "PAGE_DATA", "UNKNOWN_0x80000330"]
    assert rows[2][2:] == ["-", "unknown optional header, skipped; 12 bytes"]
    doc = json.loads(ok(cvmstore("igvm", "show", path, "--json")).stdout)
    skipped = doc["headers"][2]
    assert skipped["skipped"] is True
    assert skipped["body"] == "ab" * 12
    assert skipped["code"] == 0x8000_0330


# ---------------------------------------------------------------- measure


def test_measure_prints_the_worked_example_digest_alone(tmp_path: Path) -> None:
    path = write(tmp_path, example())
    proc = ok(cvmstore("igvm", "measure", path))
    assert proc.stdout == f"{DIGEST}\n".encode()
    assert proc.stderr == b""
    nz = ok(cvmstore("igvm", "measure", "--native-zero", path))
    assert nz.stdout == f"{NATIVE_ZERO_DIGEST}\n".encode()
    # both styles agree on this file (its parameter area is one page, nothing is shared)
    same = ok(cvmstore("igvm", "measure", path, "--style", "igvmmeasure"))
    assert same.stdout == proc.stdout
    # and from stdin
    piped = ok(cvmstore("igvm", "measure", "-", stdin=path.read_bytes()))
    assert piped.stdout == proc.stdout


def test_measure_json(tmp_path: Path) -> None:
    path = write(tmp_path, example())
    doc = json.loads(ok(cvmstore("igvm", "measure", path, "--format", "json")).stdout)
    assert doc == {
        "file": str(path),
        "digest": DIGEST,
        "pages": 8,
        "pages_by_type": {"NORMAL": 3, "UNMEASURED": 2, "SECRETS": 1, "CPUID": 1, "VMSA": 1},
        "options": {
            "style": "igvm",
            "native_zero": False,
            "check_kvm": False,
            "ignore_idblock": False,
        },
        "id_block_ld": None,
        "id_block_matches": None,
    }
    # options intermixed with the file, as a user types them
    nz = json.loads(
        ok(cvmstore("igvm", "measure", "--format", "json", path, "--native-zero")).stdout
    )
    assert nz["digest"] == NATIVE_ZERO_DIGEST
    assert nz["pages_by_type"]["ZERO"] == 1
    assert nz["pages_by_type"]["NORMAL"] == 2
    assert nz["options"]["native_zero"] is True


def test_measure_styles_differ_on_a_larger_parameter_area(tmp_path: Path) -> None:
    path = write(tmp_path, example(area=0x3000))
    runs = {}
    for style in ("igvm", "igvmmeasure"):
        proc = ok(cvmstore("igvm", "measure", path, "--style", style, "--format", "json"))
        runs[style] = json.loads(proc.stdout)
    assert runs["igvm"]["pages_by_type"]["UNMEASURED"] == 4  # the flagged page + 3 inserted
    assert runs["igvmmeasure"]["pages_by_type"]["UNMEASURED"] == 2  # the flagged page + 1
    assert runs["igvm"]["digest"] != runs["igvmmeasure"]["digest"]
    # the chain before the insert is the same, so only the insert moved the digest
    assert runs["igvm"]["digest"] != DIGEST
    assert runs["igvmmeasure"]["digest"] == DIGEST


def test_measure_check_kvm(tmp_path: Path) -> None:
    good = write(tmp_path, example(), "good.igvm")
    assert ok(cvmstore("igvm", "measure", good, "--check-kvm")).stdout.decode().strip() == DIGEST
    protected = write(tmp_path, example(cr0=0x31), "protected.igvm")
    ok(cvmstore("igvm", "measure", protected, "--check-kvm"))
    cases = [
        (example(cr0=0x11), "CR0 0x11 is not 0x31 or 0x30"),
        (example(vmsa_gpa=0x8000), "the VMSA is at 0x8000"),
        (example(page_after_vmsa=True), "a page follows the VMSA"),
    ]
    for index, (data, needle) in enumerate(cases):
        path = write(tmp_path, data, f"bad{index}.igvm")
        ok(cvmstore("igvm", "measure", path))  # fine without the KVM rules
        fails(cvmstore("igvm", "measure", path, "--check-kvm"), 3, str(path), "--check-kvm", needle)


def test_measure_checks_the_id_block(tmp_path: Path) -> None:
    matching = write(tmp_path, example(id_block_ld=bytes.fromhex(DIGEST)), "match.igvm")
    assert ok(cvmstore("igvm", "measure", matching)).stdout.decode().strip() == DIGEST
    doc = json.loads(ok(cvmstore("igvm", "measure", matching, "--format", "json")).stdout)
    assert doc["id_block_ld"] == DIGEST
    assert doc["id_block_matches"] is True

    wrong = bytes(range(48))
    mismatch = write(tmp_path, example(id_block_ld=wrong), "mismatch.igvm")
    err = fails(cvmstore("igvm", "measure", mismatch), 3, "SNP ID block", "--ignore-idblock")
    assert wrong.hex() in err
    assert DIGEST in err
    fails(cvmstore("igvm", "measure", mismatch, "--format", "json"), 3, "SNP ID block")
    proc = ok(cvmstore("igvm", "measure", mismatch, "--ignore-idblock"))
    assert proc.stdout == f"{DIGEST}\n".encode()
    assert b"warning" in proc.stderr
    doc = json.loads(
        ok(cvmstore("igvm", "measure", mismatch, "--ignore-idblock", "--format", "json")).stdout
    )
    assert doc["id_block_ld"] == wrong.hex()
    assert doc["id_block_matches"] is False
    assert doc["options"]["ignore_idblock"] is True

    # an ID block made for ZERO pages: the error says which option would agree with it
    native = write(tmp_path, example(id_block_ld=bytes.fromhex(NATIVE_ZERO_DIGEST)), "nz.igvm")
    fails(
        cvmstore("igvm", "measure", native),
        3,
        "it matches the digest with --style igvm --native-zero, or with --style igvmmeasure "
        "--native-zero;",
    )
    assert ok(cvmstore("igvm", "measure", native, "--native-zero")).stdout.strip() == (
        NATIVE_ZERO_DIGEST.encode()
    )
    default = write(tmp_path, example(id_block_ld=bytes.fromhex(DIGEST)), "default.igvm")
    fails(
        cvmstore("igvm", "measure", default, "--native-zero"),
        3,
        "it matches the digest with --style igvm, or with --style igvmmeasure;",
    )


# ---------------------------------------------------------------- bad files


def _bad_files(tmp_path: Path) -> list[tuple[str, Path, int, str]]:
    good = example()
    truncated = good[:-1]
    crc = bytearray(good)
    crc[0x30] ^= 0x01  # a byte of the GUEST_POLICY record: covered by the CRC
    version2 = bytearray(good)
    struct.pack_into("<I", version2, 4, 2)
    fix_crc(version2)
    return [
        ("truncated", write(tmp_path, truncated, "truncated.igvm"), 3, "the header says"),
        ("crc", write(tmp_path, bytes(crc), "crc.igvm"), 3, "CRC-32"),
        ("not-igvm", write(tmp_path, b"MZ" + bytes(4094), "not.igvm"), 4, "not an IGVM file"),
        ("version2", write(tmp_path, bytes(version2), "v2.igvm"), 5, "version 2"),
        ("tiny", write(tmp_path, b"IGVM", "tiny.igvm"), 3, "at least 24 bytes"),
    ]


@pytest.mark.parametrize("action", ["show", "measure"])
def test_bad_files_exit_with_their_format_error_code(tmp_path: Path, action: str) -> None:
    for _, path, code, needle in _bad_files(tmp_path):
        proc = cvmstore("igvm", action, path)
        fails(proc, code, str(path), needle)
        assert proc.stdout == b""


def test_file_without_an_snp_platform(tmp_path: Path) -> None:
    vsm = IgvmBuilder().platform(PlatformType.VSM_ISOLATION, 1).page(0x1000, b"\x01", 1).build()
    path = write(tmp_path, vsm)
    out = ok(cvmstore("igvm", "show", path)).stdout.decode()
    assert "platforms      VSM_ISOLATION (mask 0x1)" in out
    fails(cvmstore("igvm", "measure", path), 3, "no SEV-SNP platform")


def test_usage_errors(tmp_path: Path) -> None:
    fails(cvmstore("igvm", "measure", tmp_path / "missing.igvm"), 2, "cannot read")
    fails(cvmstore("igvm", "show", tmp_path), 2, "cannot read")
    path = write(tmp_path, example())
    for argv in (
        ["igvm"],
        ["igvm", "measure"],
        ["igvm", "measure", path, "--format", "base64"],
        ["igvm", "measure", path, "--style", "qemu"],
    ):
        proc = cvmstore(*argv)
        assert proc.returncode == 2, proc.stderr
        assert b"Traceback" not in proc.stderr
    # an unknown option after the file goes through the intermixed re-parse and is named
    proc = cvmstore("igvm", "measure", "--native-zero", path, "--bogus")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.endswith(b"cvmstore igvm measure: error: unrecognized arguments: --bogus\n")


def test_help_teaches() -> None:
    top = ok(cvmstore("--help")).stdout.decode()
    assert re.search(r"^    igvm +show an IGVM file", top, re.MULTILINE)
    text = ok(cvmstore("igvm", "measure", "--help")).stdout.decode()
    flat = " ".join(text.split())
    for words in (
        "SEV-SNP launch digest",
        "MEASUREMENT (offset 0x90",
        "measurements = [...]",
        "docs/attestation-policy.md",
        "cvmstore kbs admin add-reference --igvm FILE",
        "registers the digest with a key broker",
        "--ignore-idblock",
        "0xfffffffff000",
        "CR0 is 0x31 or 0x30",
        "4 NotAnImageError",
        "5 UnsupportedVersionError",
        "igvmmeasure prints the same digest in upper case",
    ):
        assert words in flat, words
    show = " ".join(ok(cvmstore("igvm", "show", "--help")).stdout.decode().split())
    assert "Nothing is measured" in show
    assert "compatibility mask" in show


# ---------------------------------------------------------------- bench


def test_bench_igvm_quick_prints_a_ratio() -> None:
    text = ok(cvmstore("bench", "igvm", "--quick", "--rounds", "1")).stdout.decode()
    assert text.startswith("cvmstore bench igvm (quick)")
    assert re.search(
        r"parse \+ measure_snp, 4 MiB IGVM .* vs bare SHA-384 per page .* = +\d+\.\d\dx"
        r"  target >= 0\.80x",
        text,
    ), text
    (report,) = json.loads(
        ok(cvmstore("bench", "igvm", "--quick", "--json", "--rounds", "1")).stdout
    )
    (figure,) = report["figures"]
    assert figure["unit"] == "MiB/s"
    assert figure["target"] == 0.8
    assert figure["value"] > 0
    assert figure["baseline"] > 0
    assert figure["ratio"] == round(figure["value"] / figure["baseline"], 4)
