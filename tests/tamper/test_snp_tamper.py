"""Tamper suite for SEV-SNP evidence: every tampered copy of real evidence fails, for its reason.

The evidence is Trustee's Milan v2 report with its VCEK and AMD's Milan ASK and ARK
(`../shared/vectors/snp`, MANIFEST.md), which verifies untouched. Each case changes one thing
and must fail; no case may be accepted and no case may raise anything but the typed errors.

- report body (0x000-0x29F, the signed part): every bit of every byte, 672 x 8 = 5376 cases.
  A field table (the ABI offsets, written out here independently of the decoder) says for
  each flip whether decoding must refuse it (`UnsupportedVersionError` for a version other
  than 2-5; `FormatError` for reserved bytes, the reserved bytes of a TCB, policy bits 17 and
  26-63, the signature algorithm, a KEY_INFO with reserved bits or an unknown key) or whether
  it decodes and `verify_report` must raise `ReportSignatureError` (or, for a VMPL above 3,
  which is a host-requested report, `AttestationError` "vmpl" before the signature): 3503
  signature, 31 version, 1812 format, 30 vmpl. The VLEK and ASVK are offered too (at a clock
  when the VLEK was valid), so a flip that makes KEY_INFO name the VLEK also ends at the
  signature.
- signature (0x2A0-0x49F): every bit of every byte, 512 x 8 = 4096 cases: the 48 used bytes
  of R and of S give `ReportSignatureError` (768), their 24 zero bytes each and the 368
  bytes after S give `FormatError` (3328).
- certificates: one bit of every byte (bit = offset mod 8) of the VCEK (1360 bytes), the ASK
  (1677) and the ARK (1639) DER: 4676 cases, each `FormatError` at load or
  `CertificateChainError` at verification; flips inside the ARK's public key are caught by the
  pin (check "root") unless the key no longer parses. The genuine chain is verified first,
  so the verifier's chain cache is warm and must not let a changed certificate through.
  Two targeted tests pin the same rules down by name: the unsigned copy of the signature
  algorithm changed (salt, OID) in each certificate (6 cases), and three certificate parts
  that no longer parse (version, an EC point off the curve, an unknown key algorithm).
- swaps: another vector's VCEK, the VLEK, the invalid VCEKs, the Turin VCEK, the issuer of the
  other key type, each for each real report where it applies: 15 cases with their check.
- made-up chains (RSA and P-384 keys from `cryptography`): an ARK that is not pinned
  ("root"), and re-signed reports whose TCB or chip the VCEK does not certify ("tcb",
  "chip-id"), which no public vector can show: 8 cases.

Run with `pytest -s` to see the counts; the tests assert them, so they cannot shrink.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from cvmstore.attest.certs import load_certificates
from cvmstore.attest.report import AttestationReport, load_report
from cvmstore.attest.tcb import Product
from cvmstore.attest.verify import Trust, verify_report
from cvmstore.errors import (
    AttestationError,
    CertificateChainError,
    FormatError,
    ReportSignatureError,
    UnsupportedVersionError,
)
from tests.conftest import require_or_skip

VLEK_CLOCK = datetime(2025, 6, 1, tzinfo=UTC)  # every test certificate is valid then
SIGNED = 0x2A0
REPORT = 0x4A0
MILAN_ROOTS = "amd-roots/milan_ask_ark_asvk.pem"
# Certificates with a flipped bit in the subject may carry a country name of the wrong
# length; cryptography warns about it (pytest turns warnings into errors). Not our concern.
pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")


# ------------------------------------------------------------------------- the field table

# (name, offset, size, kind) for a v2 report (the Trustee vector), 0x000-0x29F. Kinds:
# version, policy, sigalgo, key_info, tcb (Milan/Genoa layout: bytes 2-5 reserved),
# reserved (must be zero), signed (any value decodes; only the signature catches it).
FIELDS: list[tuple[str, int, int, str]] = [
    ("VERSION", 0x000, 4, "version"),
    ("GUEST_SVN", 0x004, 4, "signed"),
    ("POLICY", 0x008, 8, "policy"),
    ("FAMILY_ID", 0x010, 16, "signed"),
    ("IMAGE_ID", 0x020, 16, "signed"),
    ("VMPL", 0x030, 4, "vmpl"),
    ("SIGNATURE_ALGO", 0x034, 4, "sigalgo"),
    ("CURRENT_TCB", 0x038, 8, "tcb"),
    ("PLATFORM_INFO", 0x040, 8, "signed"),
    ("KEY_INFO", 0x048, 4, "key_info"),
    ("reserved 0x04C", 0x04C, 4, "reserved"),
    ("REPORT_DATA", 0x050, 64, "signed"),
    ("MEASUREMENT", 0x090, 48, "signed"),
    ("HOST_DATA", 0x0C0, 32, "signed"),
    ("ID_KEY_DIGEST", 0x0E0, 48, "signed"),
    ("AUTHOR_KEY_DIGEST", 0x110, 48, "signed"),
    ("REPORT_ID", 0x140, 32, "signed"),
    ("REPORT_ID_MA", 0x160, 32, "signed"),
    ("REPORTED_TCB", 0x180, 8, "tcb"),
    ("reserved 0x188 (v2: no CPUID)", 0x188, 24, "reserved"),
    ("CHIP_ID", 0x1A0, 64, "signed"),
    ("COMMITTED_TCB", 0x1E0, 8, "tcb"),
    ("CURRENT_BUILD/MINOR/MAJOR", 0x1E8, 3, "signed"),
    ("reserved 0x1EB", 0x1EB, 1, "reserved"),
    ("COMMITTED_BUILD/MINOR/MAJOR", 0x1EC, 3, "signed"),
    ("reserved 0x1EF", 0x1EF, 1, "reserved"),
    ("LAUNCH_TCB", 0x1F0, 8, "tcb"),
    ("reserved 0x1F8 (v2: no mitigation vectors)", 0x1F8, 0xA8, "reserved"),
]
POLICY_DEFINED = (1 << 26) - 1  # bits 0-25; bit 17 is reserved and must be one
KEY_INFO_DEFINED = 0x1F  # AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY (bits 4:2)
SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "none"}


def expected_flip(kind: str, index: int, flipped_field: bytes) -> str:
    """The outcome a flip must have: 'version', 'format' or 'signature'."""
    value = int.from_bytes(flipped_field, "little")
    if kind == "version":
        return "signature" if 2 <= value <= 5 else "version"
    if kind == "policy":
        return "signature" if not value & ~POLICY_DEFINED and value >> 17 & 1 else "format"
    if kind == "key_info":
        known = not value & ~KEY_INFO_DEFINED and value >> 2 & 7 in SIGNING_KEYS
        return "signature" if known and value >> 2 & 7 != 7 else "format"
    if kind == "tcb":
        return "format" if 2 <= index <= 5 else "signature"
    if kind == "vmpl":  # above 3 it is a host-requested report, refused before the signature
        return "signature" if value <= 3 else "AttestationError:vmpl"
    if kind in {"reserved", "sigalgo"}:
        return "format"
    assert kind == "signed"
    return "signature"


# ------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Evidence:
    snp: Path
    raw: bytes  # the Trustee Milan v2 report
    vcek: x509.Certificate
    vlek: x509.Certificate
    ask: x509.Certificate
    ark: x509.Certificate
    asvk: x509.Certificate

    def certs(self, name: str) -> list[x509.Certificate]:
        return load_certificates((self.snp / name).read_bytes())

    def report(self, name: str) -> AttestationReport:
        return load_report((self.snp / name).read_bytes())


@pytest.fixture
def evidence(vectors_dir: Path) -> Evidence:
    snp = vectors_dir / "snp"
    require_or_skip(snp.is_dir(), f"the SEV-SNP vectors ({snp})")
    (vcek,) = load_certificates((snp / "trustee/milan-v2-vcek.der").read_bytes())
    (vlek,) = load_certificates((snp / "trustee/milan-v3-vlek.der").read_bytes())
    ask, ark, asvk = load_certificates((snp / MILAN_ROOTS).read_bytes())
    found = Evidence(
        snp, (snp / "trustee/milan-v2-report.bin").read_bytes(), vcek, vlek, ask, ark, asvk
    )
    # The untouched evidence verifies (this also warms the verifier's chain cache).
    verify_report(AttestationReport.decode(found.raw), [vcek, ask, ark])
    verify_report(AttestationReport.decode(found.raw), [vcek, vlek, ask, ark, asvk], now=VLEK_CLOCK)
    return found


def judge(data: bytes, certificates: Sequence[x509.Certificate], now: datetime | None) -> str:
    """Decode and verify `data`: 'version', 'format', 'signature', another check, 'accepted'."""
    try:
        parsed = AttestationReport.decode(data)
    except UnsupportedVersionError:
        return "version"
    except FormatError:
        return "format"
    except Exception as exc:  # reported as a failure below, with every other case
        return f"unexpected {type(exc).__name__} at decode"
    try:
        verify_report(parsed, certificates, now=now)
    except ReportSignatureError:
        return "signature"
    except AttestationError as exc:
        return f"{type(exc).__name__}:{exc.check}"
    except Exception as exc:
        return f"unexpected {type(exc).__name__} at verify: {exc}"
    return "accepted"


def flip(data: bytes, offset: int, bit: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def mismatches(found: list[tuple[str, str, str]]) -> str:
    return "\n".join(f"{case}: expected {want}, got {got}" for case, want, got in found[:25])


# ------------------------------------------------------------------------- report body


def test_field_table_covers_the_signed_part() -> None:
    position = 0
    for name, offset, size, _ in FIELDS:
        assert offset == position, name
        position += size
    assert position == SIGNED


def test_every_bit_of_the_signed_part(evidence: Evidence) -> None:
    chain = [evidence.vcek, evidence.vlek, evidence.ask, evidence.ark, evidence.asvk]
    outcomes: Counter[str] = Counter()
    per_field: dict[str, Counter[str]] = {}
    wrong: list[tuple[str, str, str]] = []
    for name, offset, size, kind in FIELDS:
        per_field[name] = Counter()
        for index in range(size):
            for bit in range(8):
                tampered = flip(evidence.raw, offset + index, bit)
                want = expected_flip(kind, index, tampered[offset : offset + size])
                got = judge(tampered, chain, VLEK_CLOCK)
                outcomes[got] += 1
                per_field[name][got] += 1
                if got != want:
                    wrong.append((f"{name} byte {index} bit {bit}", want, got))
    for name, counts in per_field.items():
        print(f"  {name}: {dict(counts)}")
    print(f"report body flips: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert not wrong, mismatches(wrong)
    assert outcomes == {
        "signature": 3503,
        "version": 31,
        "format": 1812,
        "AttestationError:vmpl": 30,
    }
    # Every field had at least one flip caught by the signature or by the decoder.
    assert all(
        sum(counts.values()) == 8 * size
        for (_, _, size, _), counts in zip(FIELDS, per_field.values(), strict=True)
    )


def test_every_bit_of_the_signature(evidence: Evidence) -> None:
    chain = [evidence.vcek, evidence.ask, evidence.ark]
    outcomes: Counter[str] = Counter()
    wrong: list[tuple[str, str, str]] = []
    for offset in range(SIGNED, REPORT):
        relative = (offset - SIGNED) % 72
        in_scalar = offset < 0x330 and relative < 48
        want = "signature" if in_scalar else "format"
        for bit in range(8):
            got = judge(flip(evidence.raw, offset, bit), chain, None)
            outcomes[got] += 1
            if got != want:
                wrong.append((f"offset {offset:#x} bit {bit}", want, got))
    print(f"signature flips: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert not wrong, mismatches(wrong)
    assert outcomes == {"signature": 768, "format": 3328}


# ------------------------------------------------------------------------- certificates


def judge_certificate(
    der: bytes, position: int, chain: list[x509.Certificate], data: bytes
) -> tuple[str, str]:
    """Load a tampered certificate, put it at `position` of the chain, verify the report.

    Returns the outcome ('format', 'chain:<check>', 'accepted' or 'unexpected ...') and a
    detail for the failure message.
    """
    try:
        (cert,) = load_certificates(der)
    except FormatError:
        return "format", ""
    except Exception as exc:
        return f"unexpected {type(exc).__name__} at load", str(exc)
    tampered = list(chain)
    tampered[position] = cert
    try:
        verify_report(AttestationReport.decode(data), tampered)
    except CertificateChainError as exc:
        return f"chain:{exc.check}", ""
    except Exception as exc:
        return f"unexpected {type(exc).__name__} at verify", str(exc)
    return "accepted", ""


@pytest.mark.parametrize(
    ("what", "position", "allowed", "cases"),
    [
        ("VCEK", 0, {"format", "chain:chain", "chain:vek"}, 1360),
        ("ASK", 1, {"format", "chain:chain"}, 1677),
        ("ARK", 2, {"format", "chain:chain", "chain:root"}, 1639),
    ],
)
def test_one_bit_of_every_certificate_byte(
    evidence: Evidence, what: str, position: int, allowed: set[str], cases: int
) -> None:
    chain = [evidence.vcek, evidence.ask, evidence.ark]
    original = chain[position]
    der = original.public_bytes(serialization.Encoding.DER)
    spki = original.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_start = der.index(spki)
    # The genuine chain is in the verifier's cache (the fixture verified it): a tampered
    # certificate must not pass for the cached one.
    verify_report(AttestationReport.decode(evidence.raw), chain)
    outcomes: Counter[str] = Counter()
    wrong: list[tuple[str, str, str]] = []
    for offset in range(len(der)):
        got, detail = judge_certificate(
            flip(der, offset, offset % 8), position, chain, evidence.raw
        )
        outcomes[got] += 1
        want = allowed
        if what == "ARK" and spki_start <= offset < spki_start + len(spki):
            want = {"format", "chain:root"}  # a changed root key is caught by the pin
        if got not in want:
            case = f"{what} byte {offset:#x} bit {offset % 8}"
            wrong.append((case, "/".join(sorted(want)), f"{got} {detail}"[:160]))
    print(f"{what} flips: {sum(outcomes.values())} cases, {dict(outcomes)}")
    assert not wrong, f"{len(wrong)} wrong outcomes:\n{mismatches(wrong)}"
    assert sum(outcomes.values()) == len(der) == cases
    assert outcomes["format"] > 0
    assert outcomes["chain:chain"] > 0
    if what == "ARK":
        assert outcomes["chain:root"] > 0


def _replaced(der: bytes, old: bytes, new: bytes, *, after: int = 0) -> bytes:
    at = der.index(old, after)
    return der[:at] + new + der[at + len(old) :]


def _fails(der: bytes, position: int, chain: list[x509.Certificate], data: bytes) -> str:
    got, detail = judge_certificate(der, position, chain, data)
    return got if got == "format" or got.startswith("chain:") else f"{got} {detail}"


def test_outer_signature_algorithm_must_match_the_signed_one(evidence: Evidence) -> None:
    """X.509's signatureAlgorithm (outside the signed part) must equal the signed copy.

    Changing only the unsigned copy leaves the signed bytes and the signature intact, so
    only that comparison (RFC 5280 4.1.1.2) can catch it; the chain cache must not skip it.
    """
    chain = [evidence.vcek, evidence.ask, evidence.ark]
    verify_report(AttestationReport.decode(evidence.raw), chain)  # warm the chain cache
    pss_oid = bytes.fromhex("06092a864886f70d01010a")  # 1.2.840.113549.1.1.10 RSASSA-PSS
    salt_48 = bytes.fromhex("a203020130")  # [2] saltLength 48
    results = {}
    for position, what in enumerate(("VCEK", "ASK", "ARK")):
        der = chain[position].public_bytes(serialization.Encoding.DER)
        outer = der.index(chain[position].tbs_certificate_bytes) + len(
            chain[position].tbs_certificate_bytes
        )
        for change, old, new in (
            ("salt 49", salt_48, salt_48[:-1] + b"\x31"),
            ("OID 1.2.840.113549.1.1.42", pss_oid, pss_oid[:-1] + b"\x2a"),
        ):
            tampered = _replaced(der, old, new, after=outer)
            assert tampered[:outer] == der[:outer]  # the signed part is untouched
            results[f"{what} outer {change}"] = _fails(tampered, position, chain, evidence.raw)
    print(f"outer signature algorithm: {len(results)} cases, {results}")
    assert len(results) == 6
    assert all(got == "format" or got.startswith("chain:") for got in results.values()), results


def test_malformed_certificate_parts_are_typed_errors(evidence: Evidence) -> None:
    """A certificate part that no longer parses is a typed error, not one of `cryptography`'s.

    FormatError at load or CertificateChainError at verification; never ValueError,
    InvalidVersion or UnsupportedAlgorithm.
    """
    chain = [evidence.vcek, evidence.ask, evidence.ark]
    vcek = evidence.vcek.public_bytes(serialization.Encoding.DER)
    ark = evidence.ark.public_bytes(serialization.Encoding.DER)
    point = evidence.vcek.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    bad_point = point[:20] + bytes([point[20] ^ 1]) + point[21:]  # off the curve
    rsa_oid = bytes.fromhex("06092a864886f70d010101")  # rsaEncryption
    cases = {
        "VCEK version 18": (
            0,
            _replaced(vcek, bytes.fromhex("a003020102"), b"\xa0\x03\x02\x01\x12"),
        ),
        "VCEK key off the curve": (0, _replaced(vcek, point, bad_point)),
        "ARK key of an unknown algorithm": (2, _replaced(ark, rsa_oid, rsa_oid[:-1] + b"\x11")),
    }
    results = {name: _fails(der, pos, chain, evidence.raw) for name, (pos, der) in cases.items()}
    print(f"malformed certificates: {len(results)} cases, {results}")
    assert len(results) == 3
    assert all(got == "format" or got.startswith("chain:") for got in results.values()), results


# ------------------------------------------------------------------------- swaps


def test_swapped_certificates(evidence: Evidence) -> None:
    e = evidence
    milan = [e.ask, e.ark, e.asvk]
    every_root = [*milan, *e.certs("amd-roots/genoa_ask_ark_asvk.pem")]
    every_root += e.certs("amd-roots/turin_ask_ark_asvk.pem")
    (virtee_vcek,) = e.certs("virtee/milan-vcek.der")
    azure_vcek = e.certs("trustee/azure-vcek-chain.pem")[0]
    (legacy,) = e.certs("trustee/invalid-vcek-legacy.der")
    (new,) = e.certs("trustee/invalid-vcek-new.der")
    (turin_vcek,) = e.certs("virtee/turin-vcek.der")
    trustee = "trustee/milan-v2-report.bin"
    vlek = "trustee/milan-v3-vlek-report.bin"
    virtee = "virtee/milan-report.hex"
    azure = "trustee/azure-hcl-report.bin"
    cases: list[tuple[str, str, list[x509.Certificate], str]] = [
        ("Trustee report, the VLEK for its VCEK", trustee, [e.vlek, *milan], "vek"),
        ("Trustee report, virtee's VCEK", trustee, [virtee_vcek, *milan], "signature"),
        ("Trustee report, Azure's VCEK", trustee, [azure_vcek, *milan], "signature"),
        ("Trustee report, invalid legacy VCEK", trustee, [legacy, *milan], "chain"),
        ("Trustee report, invalid new VCEK", trustee, [new, *milan], "chain"),
        (
            "Trustee report, the Turin VCEK",
            trustee,
            [turin_vcek, *every_root],
            "tcb",
        ),  # a Milan-layout report on a Turin chain
        ("Trustee report, the ASVK for the ASK", trustee, [e.vcek, e.asvk, e.ark], "chain"),
        ("VLEK report, Trustee's VCEK for the VLEK", vlek, [e.vcek, *milan], "vek"),
        ("VLEK report, the ASK for the ASVK", vlek, [e.vlek, e.ask, e.ark], "chain"),
        ("virtee report, Trustee's VCEK", virtee, [e.vcek, *milan], "signature"),
        ("virtee report, Azure's VCEK", virtee, [azure_vcek, *milan], "signature"),
        ("virtee report, the VLEK", virtee, [e.vlek, *milan], "vek"),
        ("Azure report, Trustee's VCEK", azure, [e.vcek, *milan], "signature"),
        ("Azure report, virtee's VCEK", azure, [virtee_vcek, *milan], "signature"),
        ("Azure report, invalid new VCEK", azure, [new, *milan], "chain"),
    ]
    wrong = []
    for case, name, chain, want in cases:
        got = judge(e.report(name).encode(), chain, VLEK_CLOCK)
        got = got.split(":", 1)[-1]
        if got != want:
            wrong.append((case, want, got))
    print(f"swaps: {len(cases)} cases")
    assert not wrong, mismatches(wrong)
    assert len(cases) == 15
    # Offered next to the right one, a wrong VCEK is passed over (by hwID): still verifies.
    for extra in ([virtee_vcek, e.vcek], [e.vcek, virtee_vcek], [legacy, azure_vcek, e.vcek]):
        verify_report(e.report(trustee), [*extra, *milan])


# ------------------------------------------------------------------------- made-up chains


PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
ARC = "1.3.6.1.4.1.3704.1"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(
    subject: str,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: rsa.RSAPrivateKey,
    extensions: Sequence[x509.UnrecognizedExtension] = (),
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)


def _vcek_extensions(spl: dict[str, int], hw_id: bytes) -> list[x509.UnrecognizedExtension]:
    def ext(suffix: str, value: bytes) -> x509.UnrecognizedExtension:
        return x509.UnrecognizedExtension(x509.ObjectIdentifier(f"{ARC}.{suffix}"), value)

    numbers = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8"}
    found = [ext("2", b"\x16\x08Milan-B0"), ext("4", hw_id)]
    for name, level in spl.items():
        body = level.to_bytes(2, "big") if level > 0x7F else bytes([level])
        found.append(ext(numbers[name], bytes([0x02, len(body)]) + body))
    return found


def _signed(
    data: bytes, key: ec.EllipticCurvePrivateKey, change: Callable[[bytearray], None]
) -> bytes:
    out = bytearray(data)
    change(out)
    r, s = decode_dss_signature(key.sign(bytes(out[:SIGNED]), ec.ECDSA(hashes.SHA384())))
    out[0x2A0:0x2E8] = r.to_bytes(72, "little")
    out[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(out)


def test_made_up_chains(evidence: Evidence) -> None:
    e = evidence
    trustee = AttestationReport.decode(e.raw)
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    spl = trustee.reported_tcb.components()
    ark = _cert("ARK-Milan", ark_key, "ARK-Milan", ark_key)
    ask = _cert("SEV-Milan", ask_key, "ARK-Milan", ark_key)
    vcek = _cert("SEV-VCEK", vcek_key, "SEV-Milan", ask_key, _vcek_extensions(spl, trustee.chip_id))
    other_chip = bytes(range(64))
    vcek_other_chip = _cert(
        "SEV-VCEK", vcek_key, "SEV-Milan", ask_key, _vcek_extensions(spl, other_chip)
    )
    made_up = [vcek, ask, ark]
    trusted = Trust().with_root(ark, Product.MILAN)

    def unchanged(out: bytearray) -> None:
        pass

    def newer_microcode(out: bytearray) -> None:
        out[0x187] += 1  # REPORTED_TCB microcode 115 -> 116; the VCEK certifies 115

    def masked_chip(out: bytearray) -> None:
        out[0x48] |= 2  # MASK_CHIP_KEY
        out[0x1A0:0x1E0] = bytes(64)

    def other_chip_id(out: bytearray) -> None:
        out[0x1A0] ^= 1

    genuine = _signed(e.raw, vcek_key, unchanged)
    # Sanity: the made-up chain verifies a re-signed report once its root is trusted.
    assert verify_report(AttestationReport.decode(genuine), made_up, trust=trusted).product is (
        Product.MILAN
    )
    cases: list[tuple[str, bytes, list[x509.Certificate], Trust | None, str]] = [
        ("AMD's ASK and VCEK under a made-up ARK-Milan", e.raw, [e.vcek, e.ask, ark], None, "root"),
        ("a made-up chain, its root not trusted", genuine, made_up, None, "root"),
        (
            "a made-up ARK trusted for Genoa, named Milan",
            genuine,
            made_up,
            Trust().with_root(ark, Product.GENOA),
            "root",
        ),
        ("AMD's ASK under a trusted made-up ARK", e.raw, [e.vcek, e.ask, ark], trusted, "chain"),
        (
            "REPORTED_TCB above the VCEK's",
            _signed(e.raw, vcek_key, newer_microcode),
            made_up,
            trusted,
            "tcb",
        ),
        ("chip ID masked", _signed(e.raw, vcek_key, masked_chip), made_up, trusted, "chip-id"),
        (
            "chip ID of another chip",
            _signed(e.raw, vcek_key, other_chip_id),
            made_up,
            trusted,
            "chip-id",
        ),
        ("VCEK issued for another chip", genuine, [vcek_other_chip, ask, ark], trusted, "chip-id"),
    ]
    wrong = []
    for case, data, chain, trust, want in cases:
        try:
            verify_report(AttestationReport.decode(data), chain, trust=trust)
            got = "accepted"
        except CertificateChainError as exc:
            got = str(exc.check)
        if got != want:
            wrong.append((case, want, got))
    print(f"made-up chains: {len(cases)} cases")
    assert not wrong, mismatches(wrong)
    assert len(cases) == 8
