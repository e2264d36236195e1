"""Property tests: the SEV-SNP report decoder on hostile bytes.

The decoder faces bytes from the guest or the network, so for any input it must either
return a report or raise `FormatError` (or its subclass `UnsupportedVersionError`), never
another exception; and whatever it accepts must re-encode to exactly the bytes it was given,
so no byte of an accepted report goes unexamined. Inputs: arbitrary bytes of any length,
exactly 1184 random bytes, random reports that follow the layout (built here from the ABI
offset table, every version 2-5, both TCB layouts), those with random byte changes, the real
vectors with random byte changes, and `load_report`'s other shapes (hex text, Azure HCL).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cvmstore.attest.report import REPORT_SIZE, AttestationReport, load_report
from cvmstore.errors import FormatError
from tests.conftest import require_or_skip

VECTOR_REPORTS = (
    "trustee/milan-v2-report.bin",
    "trustee/milan-v3-vlek-report.bin",
    "trustee/azure-hcl-report.bin",
    "virtee/milan-report.hex",
    "py-snp-utils/genoa-v3-report-nocert.bin",
    "py-snp-utils/milan-v5-report-nocert.bin",
)
HEX_DIGITS = "0123456789abcdefABCDEF"
WHITESPACE = " \t\n\r\x0b\x0c"


def decodes(data: bytes) -> AttestationReport | None:
    """Decode; None on FormatError. Any other exception fails the test."""
    try:
        return AttestationReport.decode(data)
    except FormatError:
        return None


def check_round_trip(data: bytes) -> AttestationReport | None:
    report = decodes(data)
    if report is not None:
        assert report.encode() == data
        assert AttestationReport.decode(report.encode()) == report
        report.to_dict()  # every accessor works on whatever decodes
    return report


def loads(data: bytes) -> AttestationReport | None:
    try:
        return load_report(data)
    except FormatError:
        return None


# ------------------------------------------------------------------------- valid reports


@st.composite
def valid_reports(draw: st.DrawFn) -> bytes:
    """A report that follows the ABI layout: random fields, zero reserved bytes."""
    version = draw(st.integers(2, 5))
    out = bytearray(REPORT_SIZE)

    def put(offset: int, value: bytes) -> None:
        out[offset : offset + len(value)] = value

    def rand(size: int) -> bytes:
        return draw(st.binary(min_size=size, max_size=size))

    def u(size: int, value: int) -> bytes:
        return value.to_bytes(size, "little")

    put(0x000, u(4, version))
    put(0x004, rand(4))
    policy = draw(st.integers(0, (1 << 26) - 1)) | 1 << 17
    put(0x008, u(8, policy))
    put(0x010, rand(32))  # FAMILY_ID, IMAGE_ID
    put(0x030, rand(4))  # VMPL
    put(0x034, u(4, 1))  # ECDSA P-384
    put(0x040, rand(8))  # PLATFORM_INFO
    key = draw(st.sampled_from([0, 1, 7]))
    put(0x048, u(4, key << 2 | draw(st.integers(0, 3))))
    put(0x050, rand(0x180 - 0x050))  # REPORT_DATA ... REPORT_ID_MA
    family = 0
    if version >= 3:
        family = draw(st.sampled_from([0x17, 0x19, 0x1A, 0x1B, draw(st.integers(0, 255))]))
        put(0x188, bytes([family, draw(st.integers(0, 255)), draw(st.integers(0, 255))]))
    chip = draw(
        st.sampled_from(["random", "turin", "zero"]).map(
            lambda kind: {
                "random": rand(64),
                "turin": rand(8) + bytes(56),
                "zero": bytes(64),
            }[kind]
        )
    )
    put(0x1A0, chip)
    turin = family >= 0x1A if version >= 3 else any(chip[:8]) and not any(chip[8:])
    for offset in (0x038, 0x180, 0x1E0, 0x1F0):
        tcb = bytearray(rand(8))
        reserved = range(4, 7) if turin else range(2, 6)
        for index in reserved:
            tcb[index] = 0
        put(offset, bytes(tcb))
    put(0x1E8, rand(3))
    put(0x1EC, rand(3))
    if version == 5:
        put(0x1F8, rand(16))  # LAUNCH_MIT_VECTOR, CURRENT_MIT_VECTOR
    put(0x2A0, rand(48))  # R (little-endian, 48 of 72 bytes used)
    put(0x2E8, rand(48))  # S
    return bytes(out)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few random bytes replaced (at any offset, with any value)."""
    out = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        offset = draw(st.integers(0, len(out) - 1))
        out[offset] = draw(st.integers(0, 255))
    return bytes(out)


# ------------------------------------------------------------------------- properties


@given(st.binary(max_size=2 * REPORT_SIZE))
def test_arbitrary_bytes(data: bytes) -> None:
    report = check_round_trip(data)
    if len(data) != REPORT_SIZE:
        assert report is None


@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_random_report_sized_bytes(data: bytes) -> None:
    check_round_trip(data)


@given(valid_reports())
def test_valid_reports_decode_and_round_trip(data: bytes) -> None:
    report = check_round_trip(data)
    assert report is not None
    assert report.version == int.from_bytes(data[:4], "little")
    assert report.signed_bytes() == data[:0x2A0]


# Cheap (microseconds per example), so more examples than the profile's default.
@settings(max_examples=max(400, settings().max_examples))
@given(valid_reports().flatmap(mutated))
def test_mutated_valid_reports(data: bytes) -> None:
    report = check_round_trip(data)
    event("decoded" if report is not None else "refused")


@given(st.data())
def test_mutated_version_and_reserved_bytes_are_refused(data: st.DataObject) -> None:
    """A non-zero byte in a reserved range, or a version outside 2-5, never decodes."""
    base = bytearray(data.draw(valid_reports()))
    version = base[0]
    ranges = [(0x04C, 0x050), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x330, REPORT_SIZE)]
    ranges.append((0x188, 0x1A0) if version == 2 else (0x18B, 0x1A0))
    ranges.append((0x208, 0x2A0) if version == 5 else (0x1F8, 0x2A0))
    ranges += [(0x2A0 + 48, 0x2E8), (0x2E8 + 48, 0x330)]  # unused bytes of R and S
    start, end = data.draw(st.sampled_from(ranges))
    base[data.draw(st.integers(start, end - 1))] = data.draw(st.integers(1, 255))
    assert decodes(bytes(base)) is None
    base = bytearray(data.draw(valid_reports()))
    base[0:4] = data.draw(st.integers(0, 2**32 - 1).filter(lambda v: not 2 <= v <= 5)).to_bytes(
        4, "little"
    )
    assert decodes(bytes(base)) is None


@pytest.fixture
def vector_reports(vectors_dir: Path) -> list[bytes]:
    snp = vectors_dir / "snp"
    require_or_skip(snp.is_dir(), f"the SEV-SNP vectors ({snp})")
    return [load_report((snp / name).read_bytes()).encode() for name in VECTOR_REPORTS]


@settings(
    max_examples=max(400, settings().max_examples),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_vectors(vector_reports: list[bytes], data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(vector_reports))
    assert check_round_trip(base) is not None
    report = check_round_trip(data.draw(mutated(base)))
    event("decoded" if report is not None else "refused")


# ------------------------------------------------------------------------- load_report


@given(st.binary(max_size=3 * REPORT_SIZE))
def test_load_report_arbitrary_bytes(data: bytes) -> None:
    loads(data)


@given(st.text(alphabet=HEX_DIGITS + WHITESPACE, max_size=3 * REPORT_SIZE))
def test_load_report_arbitrary_hex_text(text: str) -> None:
    loads(text.encode("ascii"))


@given(st.binary(max_size=64), st.binary(max_size=2 * REPORT_SIZE))
def test_load_report_arbitrary_hcl(header: bytes, rest: bytes) -> None:
    loads(b"HCLA" + header + rest)


@given(valid_reports(), st.data())
def test_load_report_shapes_of_a_valid_report(raw: bytes, data: st.DataObject) -> None:
    expected = AttestationReport.decode(raw)
    assert load_report(raw) == expected
    # Hex text, any case, with whitespace anywhere.
    digits = raw.hex()
    if data.draw(st.booleans()):
        digits = digits.upper()
    pieces = []
    for index in range(0, len(digits), 64):
        pieces.append(digits[index : index + 64])
        pieces.append(data.draw(st.text(alphabet=WHITESPACE, max_size=2)))
    text = data.draw(st.text(alphabet=WHITESPACE, max_size=2)) + "".join(pieces)
    assert load_report(text.encode("ascii")) == expected
    # Azure HCL: a 0x20-byte header starting "HCLA", the report, then anything.
    header = b"HCLA" + data.draw(st.binary(min_size=28, max_size=28))
    tail = data.draw(st.binary(max_size=64))
    assert load_report(header + raw + tail) == expected
    # Hex text of the wrong length, or a truncated HCL report, is refused.
    assert loads(digits[:-2].encode("ascii")) is None
    assert loads((header + raw)[:-1]) is None
