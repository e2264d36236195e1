"""Real SEV-SNP vectors (`../shared/vectors/snp`, see its MANIFEST.md): parse, re-encode, verify.

Every file in the folder is public data from other projects (trustee, virtee, py-snp-utils), so
these tests hold the decoder and the verifier to facts nobody here made up: each report's
version, product, measurement, report data, VMPL, policy and signing key; a byte-exact
re-encoding; and the verdict MANIFEST.md gives for each report, each certificate and each
AMD root (including the ARK pins, read from MANIFEST.md itself). Outside CI the tests skip
when the folder is missing; under CI=true they fail instead (`require_or_skip`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from cvmstore.attest.certs import (
    AMD_ARK_PINS,
    CertRole,
    check_signed_by,
    load_certificates,
    role_of,
    spki_sha256,
    vek_info,
)
from cvmstore.attest.report import REPORT_SIZE, AttestationReport, SigningKey, load_report
from cvmstore.attest.tcb import Product
from cvmstore.attest.verify import verify_report
from cvmstore.errors import CertificateChainError
from tests.conftest import require_or_skip

VLEK_CLOCK = datetime(2025, 6, 1, tzinfo=UTC)  # before the test VLEK expired (2025-12-10)
AFTER_VLEK = datetime(2026, 1, 1, tzinfo=UTC)
HW_ID_0_TO_63 = bytes(range(64))  # the made-up hwID of trustee's invalid VCEKs
# The extension that holds the hwID (1.3.6.1.4.1.3704.1.4), read raw here on purpose.
OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
VEK_ROLES = ((CertRole.VCEK, None), (CertRole.VLEK, None))

#: Every file of the folder, so a file that goes missing (or appears unexamined) fails.
FILES = {
    "MANIFEST.md",
    "amd-roots/genoa_ask_ark_asvk.pem",
    "amd-roots/milan_ask_ark_asvk.pem",
    "amd-roots/turin_ask_ark_asvk.pem",
    "py-snp-utils/LICENSE",
    "py-snp-utils/genoa-v3-report-nocert.bin",
    "py-snp-utils/milan-v5-report-nocert.bin",
    "trustee/azure-hcl-report.bin",
    "trustee/azure-vcek-chain.pem",
    "trustee/invalid-vcek-legacy.der",
    "trustee/invalid-vcek-new.der",
    "trustee/milan-v2-report.bin",
    "trustee/milan-v2-vcek.der",
    "trustee/milan-v3-vlek-report.bin",
    "trustee/milan-v3-vlek.der",
    "virtee/milan-ask-ark.pem",
    "virtee/milan-report.hex",
    "virtee/milan-vcek.der",
    "virtee/turin-ask-ark.pem",
    "virtee/turin-vcek.der",
}


@dataclass(frozen=True)
class Facts:
    """What MANIFEST.md (and, where it is silent, the report itself) says about one report."""

    path: str
    version: int
    product: Product | None  # from CPUID (v3+); a v2 report has none
    measurement: str  # hex prefix
    report_data: str  # hex prefix
    vmpl: int
    policy: int
    signing_key: SigningKey


REPORTS = [
    Facts(
        "trustee/milan-v2-report.bin",
        2,
        None,
        "a1f3930413247bb3",
        "ec6c52d7533cc2c4",
        0,
        0x3001F,
        SigningKey.VCEK,
    ),
    Facts(
        "trustee/milan-v3-vlek-report.bin",
        3,
        Product.MILAN,
        "8922ebbdd00ec2c5",
        "819770b7e6ea6df8",
        1,
        0x30000,
        SigningKey.VLEK,
    ),
    Facts(
        "trustee/azure-hcl-report.bin",
        2,
        None,
        "9ac48fcac8a2d88a",
        "b3fbad6514c83cae",
        0,
        0x3001F,
        SigningKey.VCEK,
    ),
    Facts(
        "virtee/milan-report.hex",
        2,
        None,
        "7a1e5c266c0108db",
        "d447b55d197491bf",
        0,
        0x30000,
        SigningKey.VCEK,
    ),
    Facts(
        "py-snp-utils/genoa-v3-report-nocert.bin",
        3,
        Product.GENOA,
        "f57dc09a507c6ecd",
        "201897d5a7ee3109",
        0,
        0x3001F,
        SigningKey.VCEK,
    ),
    Facts(
        "py-snp-utils/milan-v5-report-nocert.bin",
        5,
        Product.MILAN,
        "14195fde36852b69",
        "886c69949d428eb7",
        0,
        0x30000,
        SigningKey.VCEK,
    ),
]


@pytest.fixture
def snp(vectors_dir: Path) -> Path:
    path = vectors_dir / "snp"
    require_or_skip(path.is_dir(), f"the SEV-SNP vectors ({path})")
    return path


def certs(snp: Path, *names: str) -> list[x509.Certificate]:
    found: list[x509.Certificate] = []
    for name in names:
        found += load_certificates((snp / name).read_bytes())
    return found


def roots(snp: Path, product: str) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """(ASK, ARK, ASVK) of `product`, in the order AMD publishes them."""
    ask, ark, asvk = certs(snp, f"amd-roots/{product}_ask_ark_asvk.pem")
    return ask, ark, asvk


def report(snp: Path, name: str) -> AttestationReport:
    return load_report((snp / name).read_bytes())


def embedded(snp: Path, name: str) -> bytes:
    """The 1184 report bytes a vector file holds (raw, hex text, or inside an HCL report)."""
    data = (snp / name).read_bytes()
    if name.endswith(".hex"):
        return bytes.fromhex(data.decode("ascii"))
    if data.startswith(b"HCLA"):
        return data[0x20 : 0x20 + REPORT_SIZE]
    return data


# ------------------------------------------------------------------------- parsing


def test_every_file_is_known_and_parses(snp: Path) -> None:
    present = {str(p.relative_to(snp)) for p in snp.rglob("*") if p.is_file()}
    assert present == FILES
    reports = certificates = 0
    for name in sorted(present):
        if name.endswith((".bin", ".hex")):
            assert load_report((snp / name).read_bytes()).encode() == embedded(snp, name)
            reports += 1
        elif name.endswith((".der", ".pem")):
            assert certs(snp, name)
            certificates += 1
    assert (reports, certificates) == (6, 12)


@pytest.mark.parametrize("facts", REPORTS, ids=lambda f: f.path)
def test_report_fields(snp: Path, facts: Facts) -> None:
    raw = embedded(snp, facts.path)
    parsed = report(snp, facts.path)
    assert len(raw) == REPORT_SIZE
    assert parsed.version == facts.version
    assert parsed.product is facts.product
    assert parsed.measurement.hex().startswith(facts.measurement)
    assert parsed.report_data.hex().startswith(facts.report_data)
    assert parsed.vmpl == facts.vmpl
    assert parsed.policy.value == facts.policy
    assert parsed.key_info.signing_key is facts.signing_key
    # The same fields straight from the ABI offsets, independently of the decoder.
    assert int.from_bytes(raw[0:4], "little") == facts.version
    assert int.from_bytes(raw[0x08:0x10], "little") == facts.policy
    assert int.from_bytes(raw[0x30:0x34], "little") == facts.vmpl
    assert raw[0x48] >> 2 & 7 == facts.signing_key
    assert parsed.report_data == raw[0x50:0x90]
    assert parsed.measurement == raw[0x90:0xC0]
    assert parsed.chip_id == raw[0x1A0:0x1E0]
    assert parsed.signature_r == int.from_bytes(raw[0x2A0:0x2E8], "little")
    assert parsed.signature_s == int.from_bytes(raw[0x2E8:0x330], "little")
    assert parsed.signed_bytes() == raw[:0x2A0]


@pytest.mark.parametrize("facts", REPORTS, ids=lambda f: f.path)
def test_reencoding_gives_the_same_bytes(snp: Path, facts: Facts) -> None:
    raw = embedded(snp, facts.path)
    parsed = report(snp, facts.path)
    assert parsed.encode() == raw
    assert AttestationReport.decode(raw) == parsed
    assert AttestationReport.decode(parsed.encode()).encode() == raw


def test_trustee_milan_v2_details(snp: Path) -> None:
    parsed = report(snp, "trustee/milan-v2-report.bin")
    assert parsed.measurement.hex().endswith("d3d38c")
    assert parsed.report_data[8:32] != bytes(24)
    assert parsed.report_data[32:] == bytes(32)
    assert parsed.reported_tcb.components() == {
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }
    assert parsed.current_tcb.microcode == 206
    assert parsed.current_tcb != parsed.reported_tcb
    assert parsed.reported_tcb.fmc is None


def test_vlek_report_details(snp: Path) -> None:
    parsed = report(snp, "trustee/milan-v3-vlek-report.bin")
    assert parsed.chip_id == bytes(64)
    assert (parsed.cpuid_fam_id, parsed.cpuid_mod_id) == (0x19, 0x01)


def test_virtee_report_uses_all_report_data(snp: Path) -> None:
    parsed = report(snp, "virtee/milan-report.hex")
    assert all(parsed.report_data[i : i + 16] != bytes(16) for i in range(0, 64, 16))


def test_py_snp_utils_reports(snp: Path) -> None:
    genoa = report(snp, "py-snp-utils/genoa-v3-report-nocert.bin")
    assert (genoa.cpuid_fam_id, genoa.cpuid_mod_id, genoa.cpuid_step) == (0x19, 0x11, 0x01)
    assert genoa.policy.smt
    assert not genoa.policy.debug
    assert (genoa.launch_mit_vector, genoa.current_mit_vector) == (0, 0)
    milan = report(snp, "py-snp-utils/milan-v5-report-nocert.bin")
    assert milan.version == 5
    assert milan.launch_mit_vector != 0
    assert milan.current_mit_vector != 0
    raw = embedded(snp, "py-snp-utils/milan-v5-report-nocert.bin")
    assert milan.launch_mit_vector == int.from_bytes(raw[0x1F8:0x200], "little")
    assert milan.current_mit_vector == int.from_bytes(raw[0x200:0x208], "little")
    # No VCEK comes with them: verification has nothing to check the signature with.
    for parsed, product in ((genoa, "genoa"), (milan, "milan")):
        with pytest.raises(CertificateChainError) as caught:
            verify_report(parsed, roots(snp, product))
        assert caught.value.check == "vek"


# ------------------------------------------------------------------------- verification


def test_trustee_milan_v2_verifies(snp: Path) -> None:
    parsed = report(snp, "trustee/milan-v2-report.bin")
    chain = certs(snp, "trustee/milan-v2-vcek.der", "amd-roots/milan_ask_ark_asvk.pem")
    verified = verify_report(parsed, chain)
    assert verified.product is Product.MILAN
    assert verified.signing_key is SigningKey.VCEK
    assert verified.ark_sha256 == AMD_ARK_PINS[Product.MILAN]
    assert verified.vek.role is CertRole.VCEK
    assert verified.vek.hw_id == parsed.chip_id
    # REPORTED_TCB is what the VCEK certifies; CURRENT_TCB differs and does not matter.
    assert verified.vek.spl == parsed.reported_tcb.components()
    assert parsed.current_tcb.components() != verified.vek.spl


def test_trustee_milan_v2_verifies_with_virtees_copy_of_the_roots(snp: Path) -> None:
    parsed = report(snp, "trustee/milan-v2-report.bin")
    chain = certs(snp, "virtee/milan-ask-ark.pem", "trustee/milan-v2-vcek.der")
    assert verify_report(parsed, chain).product is Product.MILAN


def test_vlek_report_verifies_only_before_expiry(snp: Path) -> None:
    parsed = report(snp, "trustee/milan-v3-vlek-report.bin")
    chain = certs(snp, "trustee/milan-v3-vlek.der", "amd-roots/milan_ask_ark_asvk.pem")
    verified = verify_report(parsed, chain, now=VLEK_CLOCK)
    assert verified.product is Product.MILAN
    assert verified.signing_key is SigningKey.VLEK
    assert verified.vek.role is CertRole.VLEK
    assert verified.vek.hw_id is None
    assert verified.vek.csp_id == "CN=cc-us-east-2.amazonaws.com"
    assert verified.vek.spl == parsed.reported_tcb.components()
    for now in (None, AFTER_VLEK):
        with pytest.raises(CertificateChainError) as caught:
            verify_report(parsed, chain, now=now)
        assert caught.value.check == "validity"


def test_azure_hcl_report_verifies(snp: Path) -> None:
    parsed = report(snp, "trustee/azure-hcl-report.bin")
    verified = verify_report(parsed, certs(snp, "trustee/azure-vcek-chain.pem"))
    assert verified.product is Product.MILAN
    assert verified.vek.hw_id == parsed.chip_id
    assert [common for _, common in _roles(certs(snp, "trustee/azure-vcek-chain.pem"))] == [
        CertRole.VCEK,
        CertRole.ASK,
        CertRole.ARK,
    ]


def test_virtee_milan_report_verifies(snp: Path) -> None:
    parsed = report(snp, "virtee/milan-report.hex")
    chain = certs(snp, "virtee/milan-vcek.der", "virtee/milan-ask-ark.pem")
    verified = verify_report(parsed, chain)
    assert verified.product is Product.MILAN
    assert verified.ark_sha256 == AMD_ARK_PINS[Product.MILAN]


@pytest.mark.parametrize(
    ("report_name", "vek_names", "now"),
    [
        ("trustee/milan-v2-report.bin", ["trustee/milan-v2-vcek.der"], None),
        ("trustee/milan-v3-vlek-report.bin", ["trustee/milan-v3-vlek.der"], VLEK_CLOCK),
        ("trustee/azure-hcl-report.bin", ["trustee/azure-vcek-chain.pem"], None),
        ("virtee/milan-report.hex", ["virtee/milan-vcek.der"], None),
    ],
)
@pytest.mark.parametrize("wrong", ["genoa", "turin"])
def test_wrong_product_roots_fail(
    snp: Path, report_name: str, vek_names: list[str], now: datetime | None, wrong: str
) -> None:
    parsed = report(snp, report_name)
    vek = [c for c in certs(snp, *vek_names) if role_of(c) in VEK_ROLES]
    assert len(vek) == 1
    verify_report(parsed, [*vek, *roots(snp, "milan")], now=now)  # the right roots pass
    with pytest.raises(CertificateChainError):
        verify_report(parsed, [*vek, *roots(snp, wrong)], now=now)


# ------------------------------------------------------------------------- certificates


@pytest.mark.parametrize(
    ("name", "raw_hw_id"),
    [
        ("trustee/invalid-vcek-legacy.der", HW_ID_0_TO_63),
        ("trustee/invalid-vcek-new.der", b"\x04\x40" + HW_ID_0_TO_63),
    ],
)
def test_invalid_vceks(snp: Path, name: str, raw_hw_id: bytes) -> None:
    (vcek,) = certs(snp, name)
    assert role_of(vcek) == (CertRole.VCEK, None)
    extension = vcek.extensions.get_extension_for_oid(OID_HWID).value
    assert isinstance(extension, x509.UnrecognizedExtension)
    assert extension.value == raw_hw_id
    info = vek_info(vcek)
    assert info.hw_id == HW_ID_0_TO_63
    assert info.product is Product.MILAN
    ask, ark, _ = roots(snp, "milan")
    with pytest.raises(CertificateChainError):
        check_signed_by(vcek, ask, "VCEK")
    # In place of the real VCEK, the Trustee report must not verify (chain, else chip).
    parsed = report(snp, "trustee/milan-v2-report.bin")
    with pytest.raises(CertificateChainError) as caught:
        verify_report(parsed, [vcek, ask, ark])
    assert caught.value.check == "chain"
    # Nor against any other AMD root.
    for product in ("genoa", "turin"):
        other_ask, _, _ = roots(snp, product)
        with pytest.raises(CertificateChainError):
            check_signed_by(vcek, other_ask, "VCEK")


def test_turin_vcek(snp: Path) -> None:
    (vcek,) = certs(snp, "virtee/turin-vcek.der")
    info = vek_info(vcek)
    assert info.role is CertRole.VCEK
    assert info.product is Product.TURIN
    assert info.hw_id is not None
    assert len(info.hw_id) == 8
    assert "fmc" in info.spl
    ask, ark = certs(snp, "virtee/turin-ask-ark.pem")
    assert role_of(ask) == (CertRole.ASK, Product.TURIN)
    assert role_of(ark) == (CertRole.ARK, Product.TURIN)
    assert spki_sha256(ark) == AMD_ARK_PINS[Product.TURIN]
    check_signed_by(ark, ark, "ARK")
    check_signed_by(ask, ark, "ASK")
    check_signed_by(vcek, ask, "VCEK")
    # The same ASK and ARK as AMD publishes them (amd-roots/turin).
    amd_ask, amd_ark, _ = roots(snp, "turin")
    check_signed_by(vcek, amd_ask, "VCEK")
    assert spki_sha256(amd_ark) == spki_sha256(ark)
    # Not signed by the Milan or Genoa ASK.
    for product in ("milan", "genoa"):
        with pytest.raises(CertificateChainError):
            check_signed_by(vcek, roots(snp, product)[0], "VCEK")


def test_manifest_pins_match_the_code(snp: Path) -> None:
    manifest = (snp / "MANIFEST.md").read_text()
    pins = dict(re.findall(r"^- (Milan|Genoa|Turin): `([0-9a-f]{64})`$", manifest, re.M))
    assert pins == {product.value: pin for product, pin in AMD_ARK_PINS.items()}


@pytest.mark.parametrize("product", list(Product), ids=lambda p: p.value)
def test_amd_roots(snp: Path, product: Product) -> None:
    ask, ark, asvk = roots(snp, product.value.lower())
    assert role_of(ask) == (CertRole.ASK, product)
    assert role_of(ark) == (CertRole.ARK, product)
    assert role_of(asvk) == (CertRole.ASVK, product)
    assert spki_sha256(ark) == AMD_ARK_PINS[product]
    check_signed_by(ark, ark, "ARK")
    check_signed_by(ask, ark, "ASK")
    check_signed_by(asvk, ark, "ASVK")
    # ASK and ASVK are not self-signed, and no other product's ARK signed them.
    for cert in (ask, asvk):
        with pytest.raises(CertificateChainError):
            check_signed_by(cert, cert, "self")
    for other in Product:
        if other is not product:
            _, other_ark, _ = roots(snp, other.value.lower())
            assert spki_sha256(other_ark) != AMD_ARK_PINS[product]
            for cert in (ark, ask, asvk):
                with pytest.raises(CertificateChainError):
                    check_signed_by(cert, other_ark, "cross")


def test_chain_files_hold_amds_roots(snp: Path) -> None:
    """The ASK and ARK inside other projects' chain files are AMD's (same SPKI)."""
    milan_ask, milan_ark, _ = roots(snp, "milan")
    for name in ("virtee/milan-ask-ark.pem", "trustee/azure-vcek-chain.pem"):
        found = {role: cert for cert, role in _roles(certs(snp, name))}
        assert spki_sha256(found[CertRole.ARK]) == spki_sha256(milan_ark)
        assert spki_sha256(found[CertRole.ASK]) == spki_sha256(milan_ask)


def _roles(chain: list[x509.Certificate]) -> list[tuple[x509.Certificate, CertRole]]:
    found = []
    for cert in chain:
        role = role_of(cert)
        assert role is not None
        found.append((cert, role[0]))
    return found
