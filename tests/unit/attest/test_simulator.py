"""The SEV-SNP simulator: its chain looks like AMD's, its reports verify, and tampering shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cvmstore.attest.certs import (
    AMD_ARK_PINS,
    CertRole,
    check_signed_by,
    load_certificates,
    role_of,
    vek_info,
)
from cvmstore.attest.report import REPORT_SIZE, AttestationReport, SigningKey
from cvmstore.attest.simulator import DEFAULT_MEASUREMENT, DEFAULT_TCB, NOT_AMD, Simulator
from cvmstore.attest.tcb import Product, TcbVersion
from cvmstore.attest.verify import Trust, verify_report
from cvmstore.errors import AttestationError, CertificateChainError, ReportSignatureError

ARC = "1.3.6.1.4.1.3704.1"
DATA = bytes(range(64))
AMD_NAME = {
    NameOID.ORGANIZATIONAL_UNIT_NAME: "Engineering",
    NameOID.COUNTRY_NAME: "US",
    NameOID.LOCALITY_NAME: "Santa Clara",
    NameOID.STATE_OR_PROVINCE_NAME: "CA",
    NameOID.ORGANIZATION_NAME: "Advanced Micro Devices",
}


@pytest.fixture(scope="module")
def sims() -> dict[Product, Simulator]:
    """One simulator per product, with a VLEK (three RSA-4096 keys each: made once)."""
    return {product: Simulator(product, vlek=True, seed="unit") for product in Product}


@pytest.fixture(params=list(Product), ids=[p.value for p in Product])
def sim(request: pytest.FixtureRequest, sims: dict[Product, Simulator]) -> Simulator:
    return sims[request.param]


def _vlek(sim: Simulator) -> x509.Certificate:
    assert sim.vlek is not None
    return sim.vlek


def _asvk(sim: Simulator) -> x509.Certificate:
    assert sim.asvk is not None
    return sim.asvk


def _ext(cert: x509.Certificate, arc: str) -> bytes | None:
    for ext in cert.extensions:
        if ext.oid.dotted_string == f"{ARC}.{arc}":
            assert isinstance(ext.value, x509.UnrecognizedExtension)
            return ext.value.value
    return None


def _flip(report: AttestationReport, offset: int, mask: int = 0x01) -> AttestationReport:
    data = bytearray(report.encode())
    data[offset] ^= mask
    return AttestationReport.decode(bytes(data))


def _verify(sim: Simulator, report: AttestationReport, **kwargs: object) -> None:
    verify_report(report, sim.chain(), trust=sim.trust(), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- reports verify


@pytest.mark.parametrize("key", [SigningKey.VCEK, SigningKey.VLEK], ids=["VCEK", "VLEK"])
def test_reports_verify(sim: Simulator, key: SigningKey) -> None:
    report = sim.report(DATA, signing_key=key)
    verified = verify_report(report, sim.chain(), trust=sim.trust())
    assert verified.product is sim.product
    assert verified.signing_key is key
    assert verified.report.report_data == DATA
    assert verified.report.measurement == DEFAULT_MEASUREMENT
    assert verified.vek.spl == sim.tcb.components()
    assert verified.ark_sha256 not in AMD_ARK_PINS.values()
    if key is SigningKey.VCEK:
        assert verified.vek.role is CertRole.VCEK
        assert verified.vek.hw_id == sim.hw_id
        assert verified.vek.csp_id is None
    else:
        assert verified.vek.role is CertRole.VLEK
        assert verified.vek.hw_id is None
        assert verified.vek.csp_id == sim.csp_id


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_every_report_version_verifies(sim: Simulator, version: int) -> None:
    mit = {"launch_mit_vector": 1, "current_mit_vector": 3} if version == 5 else {}
    report = sim.report(DATA, version=version, **mit)  # type: ignore[arg-type]
    assert report.version == version
    assert report.turin_layout is (sim.product is Product.TURIN)
    assert verify_report(report, sim.chain(), trust=sim.trust()).product is sim.product


def test_the_default_trust_refuses_the_simulator(sim: Simulator) -> None:
    report = sim.report(DATA)
    with pytest.raises(CertificateChainError) as caught:
        verify_report(report, sim.chain())
    assert caught.value.check == "root"
    with pytest.raises(CertificateChainError) as caught:
        verify_report(report, sim.chain(), trust=Trust())
    assert caught.value.check == "root"


def test_trust_is_for_one_product(sims: dict[Product, Simulator]) -> None:
    milan, genoa = sims[Product.MILAN], sims[Product.GENOA]
    assert milan.trust().pins.items() >= Trust().pins.items()
    with pytest.raises(CertificateChainError) as caught:
        verify_report(genoa.report(DATA), genoa.chain(), trust=milan.trust())
    assert caught.value.check == "root"


def test_a_foreign_chain_does_not_verify_a_report(sims: dict[Product, Simulator]) -> None:
    milan = sims[Product.MILAN]
    other = Simulator(Product.MILAN, milan.chip_id, seed="unit", key_size=2048)
    # Same seed, chip and TCB: the same VCEK key, so only the chain tells them apart.
    assert other.vcek.public_key() == milan.vcek.public_key()
    with pytest.raises(CertificateChainError) as caught:
        verify_report(milan.report(DATA), other.chain(), trust=milan.trust())
    assert caught.value.check == "root"


# ---------------------------------------------------------------- tampering

SIGNED_FIELDS = {
    "guest_svn": 0x04,
    "policy": 0x08,
    "family_id": 0x10,
    "image_id": 0x20,
    "vmpl": 0x30,
    "current_tcb": 0x38,
    "platform_info": 0x40,
    "key_info": 0x48,
    "report_data": 0x50,
    "report_data_last": 0x8F,
    "measurement": 0x90,
    "measurement_last": 0xBF,
    "host_data": 0xC0,
    "id_key_digest": 0xE0,
    "author_key_digest": 0x110,
    "report_id": 0x140,
    "report_id_ma": 0x160,
    "reported_tcb": 0x180,
    "reported_tcb_microcode": 0x187,
    "cpuid_mod_id": 0x189,
    "cpuid_step": 0x18A,
    "chip_id": 0x1A0,
    "chip_id_last": 0x1DF,
    "committed_tcb": 0x1E0,
    "current_build": 0x1E8,
    "current_minor": 0x1E9,
    "current_major": 0x1EA,
    "committed_build": 0x1EC,
    "committed_minor": 0x1ED,
    "committed_major": 0x1EE,
    "launch_tcb": 0x1F0,
    "launch_mit_vector": 0x1F8,
    "current_mit_vector": 0x200,
}
SIGNATURE_BYTES = {"r_low": 0x2A0, "r_high": 0x2A0 + 47, "s_low": 0x2E8, "s_high": 0x2E8 + 47}


@pytest.mark.parametrize("product", [Product.MILAN, Product.TURIN], ids=["Milan", "Turin"])
@pytest.mark.parametrize("key", [SigningKey.VCEK, SigningKey.VLEK], ids=["VCEK", "VLEK"])
@pytest.mark.parametrize("offset", SIGNED_FIELDS.values(), ids=SIGNED_FIELDS.keys())
def test_a_flipped_signed_byte_breaks_the_signature(
    sims: dict[Product, Simulator], product: Product, key: SigningKey, offset: int
) -> None:
    sim = sims[product]
    report = sim.report(DATA, version=5, signing_key=key, current_mit_vector=1)
    _verify(sim, report)
    tampered = _flip(report, offset)  # still a well-formed report
    assert tampered != report
    with pytest.raises(ReportSignatureError) as caught:
        _verify(sim, tampered)
    assert caught.value.check == "signature"


@pytest.mark.parametrize("offset", SIGNATURE_BYTES.values(), ids=SIGNATURE_BYTES.keys())
def test_a_flipped_signature_byte_fails(sim: Simulator, offset: int) -> None:
    tampered = _flip(sim.report(DATA), offset)
    with pytest.raises(ReportSignatureError):
        _verify(sim, tampered)


def test_a_report_signed_by_another_key_fails(sims: dict[Product, Simulator]) -> None:
    milan = sims[Product.MILAN]
    newer = milan.with_tcb(TcbVersion.make(bootloader=4, tee=0, snp=24, microcode=213))
    # Signed by the VCEK of the newer TCB, presented with the old VCEK.
    with pytest.raises(ReportSignatureError):
        verify_report(
            newer.report(DATA, reported_tcb=milan.tcb), milan.chain(), trust=milan.trust()
        )


# ---------------------------------------------------------------- chip, TCB, validity


def test_a_wrong_chip_id_fails(sim: Simulator) -> None:
    other = bytes(b ^ 0xFF for b in sim.hw_id)
    report = sim.report(DATA, chip_id=other)
    assert report.chip_id.startswith(other)
    with pytest.raises(CertificateChainError) as caught:
        _verify(sim, report)
    assert caught.value.check == "chip-id"


def test_a_masked_chip_id_cannot_be_tied_to_the_vcek(sim: Simulator) -> None:
    report = sim.report(DATA, mask_chip_id=True)
    assert report.key_info.mask_chip_key
    assert report.chip_id == bytes(64)
    with pytest.raises(CertificateChainError) as caught:
        _verify(sim, report)
    assert caught.value.check == "chip-id"
    # A VLEK is not tied to a chip, so a masked chip ID is fine there.
    _verify(sim, sim.report(DATA, mask_chip_id=True, signing_key=SigningKey.VLEK))


TCB_COMPONENTS = [
    (product, component)
    for product in Product
    for component in DEFAULT_TCB[product].components()  # fmc on Turin only
]


@pytest.mark.parametrize(
    ("product", "component"), TCB_COMPONENTS, ids=[f"{p.value}-{c}" for p, c in TCB_COMPONENTS]
)
@pytest.mark.parametrize("key", [SigningKey.VCEK, SigningKey.VLEK], ids=["VCEK", "VLEK"])
def test_a_tcb_the_vek_does_not_certify_fails(
    sims: dict[Product, Simulator], product: Product, component: str, key: SigningKey
) -> None:
    sim = sims[product]
    parts = sim.tcb.components()
    parts[component] += 1
    reported = TcbVersion.make(**parts)
    report = sim.report(DATA, reported_tcb=reported, signing_key=key)
    with pytest.raises(CertificateChainError) as caught:
        _verify(sim, report)
    assert caught.value.check == "tcb"


def test_current_tcb_may_differ_from_reported(sim: Simulator) -> None:
    newer = TcbVersion.make(**{**sim.tcb.components(), "microcode": sim.tcb.microcode + 5})
    _verify(sim, sim.report(DATA, current_tcb=newer, committed_tcb=newer))


@pytest.mark.parametrize("key", [SigningKey.VCEK, SigningKey.VLEK], ids=["VCEK", "VLEK"])
def test_expired_or_not_yet_valid_certificates_fail(sim: Simulator, key: SigningKey) -> None:
    vek = sim.vcek if key is SigningKey.VCEK else _vlek(sim)
    report = sim.report(DATA, signing_key=key)
    _verify(sim, report, now=vek.not_valid_after_utc)
    for now in (vek.not_valid_after_utc + timedelta(seconds=1), sim.not_before - timedelta(1)):
        with pytest.raises(CertificateChainError) as caught:
            _verify(sim, report, now=now)
        assert caught.value.check == "validity"


def test_lifetimes_are_amds(sim: Simulator) -> None:
    def years(cert: x509.Certificate) -> float:
        return (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365

    assert [years(c) for c in (sim.ark, sim.ask, _asvk(sim))] == [25, 25, 25]
    assert years(sim.vcek) == 7
    assert years(_vlek(sim)) == 1
    assert {c.not_valid_before_utc for c in sim.chain()} == {sim.not_before}


# ---------------------------------------------------------------- the chain's shape


def test_names_are_amds_plus_a_not_amd_mark(sim: Simulator) -> None:
    product = sim.product.value
    expected = {
        "ARK": (sim.ark, f"ARK-{product}", f"ARK-{product}"),
        "ASK": (sim.ask, f"SEV-{product}", f"ARK-{product}"),
        "ASVK": (_asvk(sim), f"SEV-VLEK-{product}", f"ARK-{product}"),
        "VCEK": (sim.vcek, "SEV-VCEK", f"SEV-{product}"),
        "VLEK": (_vlek(sim), "SEV-VLEK", f"SEV-VLEK-{product}"),
    }
    for role, (cert, subject, issuer) in expected.items():
        for name, cn in ((cert.subject, subject), (cert.issuer, issuer)):
            values = {attr.oid: attr.value for attr in name}
            assert len(values) == len(name) == 7, role  # each attribute exactly once
            assert {oid: values[oid] for oid in AMD_NAME} == AMD_NAME, role
            assert values[NameOID.COMMON_NAME] == cn, role
            assert values[x509.ObjectIdentifier("2.5.4.13")] == NOT_AMD, role
        assert role_of(cert) == (CertRole(role), None if role in ("VCEK", "VLEK") else sim.product)


def test_every_link_is_rsa_pss_sha384_salt_48(sim: Simulator) -> None:
    links = [
        (sim.ark, sim.ark),
        (sim.ask, sim.ark),
        (_asvk(sim), sim.ark),
        (sim.vcek, sim.ask),
        (_vlek(sim), _asvk(sim)),
    ]
    for cert, issuer in links:
        assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
        pss = cert.signature_algorithm_parameters
        assert isinstance(pss, padding.PSS)
        assert isinstance(pss.mgf, padding.MGF1)
        assert pss._salt_length == 48  # cryptography exposes no public accessor
        check_signed_by(cert, issuer, "link")
    assert sim.ark.public_key().key_size == 4096  # type: ignore[union-attr]


def test_the_cas_are_marked_as_cas(sim: Simulator) -> None:
    for cert, path_length in ((sim.ark, None), (sim.ask, 0), (_asvk(sim), 0)):
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value.ca
        assert constraints.value.path_length == path_length
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical
        assert usage.value.key_cert_sign
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        (url,) = [name.value for point in points for name in point.full_name or ()]
        assert url.startswith("https://cvmstore-simulator.invalid/")  # never AMD's KDS


def test_veks_carry_only_amds_extensions(sim: Simulator) -> None:
    turin = sim.product is Product.TURIN
    spls = ["3.9", "3.1", "3.2", "3.3", "3.5", "3.6", "3.7", "3.8"]
    if not turin:
        spls = ["3.1", "3.2", "3.4", "3.5", "3.6", "3.7", "3.3", "3.8"]
    for cert, last in ((sim.vcek, "4"), (_vlek(sim), "5")):
        arcs = [ext.oid.dotted_string.removeprefix(f"{ARC}.") for ext in cert.extensions]
        assert arcs == ["1", "2", *spls, last]  # AMD's order, nothing else
        assert not any(ext.critical for ext in cert.extensions)
        assert _ext(cert, "1") == (b"\x02\x01\x01" if turin else b"\x02\x01\x00")
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp384r1"
    product_name = {Product.MILAN: b"Milan-B1", Product.GENOA: b"Genoa-B1", Product.TURIN: b"Turin"}
    name = product_name[sim.product]
    assert _ext(sim.vcek, "2") == b"\x16" + bytes([len(name)]) + name
    line = sim.product.value.encode()
    assert _ext(_vlek(sim), "2") == b"\x16" + bytes([len(line)]) + line
    assert _ext(sim.vcek, "4") == sim.hw_id
    assert len(sim.hw_id) == (8 if turin else 64)
    csp = sim.csp_id.encode()
    assert _ext(_vlek(sim), "5") == b"\x16" + bytes([len(csp)]) + csp
    for cert in (sim.vcek, _vlek(sim)):
        info = vek_info(cert)
        assert info.spl == sim.tcb.components()
        assert info.product is sim.product


def test_spls_are_der_integers_like_amds() -> None:
    tcb = TcbVersion.make(bootloader=0, tee=127, snp=128, microcode=213)
    sim = Simulator(Product.MILAN, tcb=tcb, seed=1, key_size=2048)
    assert _ext(sim.vcek, "3.1") == b"\x02\x01\x00"
    assert _ext(sim.vcek, "3.2") == b"\x02\x01\x7f"
    assert _ext(sim.vcek, "3.3") == b"\x02\x02\x00\x80"
    assert _ext(sim.vcek, "3.8") == b"\x02\x02\x00\xd5"  # as AMD encodes ucode 0xd5
    _verify(sim, sim.report(DATA))


def test_certificates_load_without_warnings(sim: Simulator) -> None:
    # pytest turns warnings into errors here, so a serial-0 style warning would fail.
    for cert in sim.chain():
        (loaded,) = load_certificates(cert.public_bytes(Encoding.DER))
        assert loaded == cert
        (loaded,) = load_certificates(cert.public_bytes(Encoding.PEM))
        assert loaded == cert


def test_chain_lists_every_certificate(sim: Simulator) -> None:
    assert sim.chain() == [sim.vcek, sim.ask, sim.vlek, sim.asvk, sim.ark]


def test_a_simulator_without_vlek() -> None:
    bare = Simulator(Product.GENOA, seed=2, key_size=2048)
    assert bare.vlek is None
    assert bare.asvk is None
    assert bare.chain() == [bare.vcek, bare.ask, bare.ark]
    with pytest.raises(ValueError, match="no VLEK"):
        bare.report(DATA, signing_key=SigningKey.VLEK)


# ---------------------------------------------------------------- report fields


def test_report_fields_are_what_was_asked(sim: Simulator) -> None:
    digest = bytes([7]) * 48
    report = sim.report(
        b"short",
        measurement=bytes([1]) * 48,
        policy=0x30000 | 1 << 19,
        vmpl=2,
        guest_svn=9,
        host_data=bytes([2]) * 32,
        family_id=bytes([3]) * 16,
        image_id=bytes([4]) * 16,
        id_key_digest=bytes([5]) * 48,
        author_key_digest=digest,
        firmware=(1, 57, 3),
        committed_firmware=(1, 55, 1),
    )
    assert report.report_data == b"short" + bytes(59)
    assert report.measurement == bytes([1]) * 48
    assert report.policy.debug
    assert (report.vmpl, report.guest_svn) == (2, 9)
    assert report.host_data == bytes([2]) * 32
    assert (report.family_id, report.image_id) == (bytes([3]) * 16, bytes([4]) * 16)
    assert (report.id_key_digest, report.author_key_digest) == (bytes([5]) * 48, digest)
    assert report.key_info.author_key_en
    assert report.key_info.signing_key is SigningKey.VCEK
    assert (report.current_major, report.current_minor, report.current_build) == (1, 57, 3)
    assert (report.committed_major, report.committed_minor, report.committed_build) == (1, 55, 1)
    assert report.product is sim.product
    assert report.chip_id.startswith(sim.hw_id)
    assert report.reported_tcb == report.current_tcb == report.committed_tcb == sim.tcb
    assert report.launch_tcb == sim.tcb
    assert report.report_id_ma == b"\xff" * 32  # no migration agent
    _verify(sim, report)


def test_cpuid_names_the_product() -> None:
    expected = {
        Product.MILAN: (0x19, 0x01),
        Product.GENOA: (0x19, 0x11),
        Product.TURIN: (0x1A, 0x02),
    }
    for product, (family, model) in expected.items():
        sim = Simulator(product, seed=3, key_size=2048)
        report = sim.report(DATA)
        assert (report.cpuid_fam_id, report.cpuid_mod_id) == (family, model)
        assert report.product is product
        v2 = sim.report(DATA, version=2)
        assert (v2.cpuid_fam_id, v2.cpuid_mod_id, v2.cpuid_step) == (0, 0, 0)


def test_report_bytes_are_the_encoded_report(sim: Simulator) -> None:
    raw = sim.report_bytes(DATA, vmpl=1)
    assert len(raw) == REPORT_SIZE
    assert raw == sim.report(DATA, vmpl=1).encode()
    assert AttestationReport.decode(raw).vmpl == 1


def test_an_unsigned_report_is_refused(sim: Simulator) -> None:
    report = sim.report(DATA, signing_key=SigningKey.NONE)
    assert (report.signature_r, report.signature_s) == (0, 0)
    with pytest.raises(AttestationError) as caught:
        _verify(sim, report)
    assert caught.value.check == "signing-key"


def test_with_tcb_reissues_the_veks_only(sims: dict[Product, Simulator]) -> None:
    turin = sims[Product.TURIN]
    newer_tcb = TcbVersion.make(bootloader=1, tee=1, snp=4, microcode=72, fmc=2)
    newer = turin.with_tcb(newer_tcb)
    assert (newer.ark, newer.ask, newer.asvk) == (turin.ark, turin.ask, turin.asvk)
    assert newer.chip_id == turin.chip_id
    assert newer.vcek.public_key() != turin.vcek.public_key()
    assert newer.vlek is not None
    assert _vlek(turin).public_key() != newer.vlek.public_key()
    for key in (SigningKey.VCEK, SigningKey.VLEK):
        verified = verify_report(
            newer.report(DATA, signing_key=key), newer.chain(), trust=turin.trust()
        )
        assert verified.vek.spl == newer_tcb.components()
    with pytest.raises(ValueError, match="Turin"):
        turin.with_tcb(DEFAULT_TCB[Product.MILAN])


# ---------------------------------------------------------------- seeds and inputs


def test_a_seed_makes_chip_veks_and_reports_reproducible() -> None:
    one = Simulator(Product.GENOA, seed=b"same", key_size=2048)
    two = Simulator(Product.GENOA, seed=b"same", key_size=2048)
    other = Simulator(Product.GENOA, seed=b"other", key_size=2048)
    unseeded = Simulator(Product.GENOA, key_size=2048)
    assert one.chip_id == two.chip_id != other.chip_id != unseeded.chip_id
    assert one.vcek.public_key() == two.vcek.public_key() != other.vcek.public_key()
    assert one.report_bytes(DATA) == two.report_bytes(DATA) != other.report_bytes(DATA)
    assert one.ark.public_key() != two.ark.public_key()  # RSA keys are always fresh
    # The product is part of the seed: a Milan and a Genoa chip never share an ID.
    assert Simulator(Product.MILAN, seed=b"same", key_size=2048).chip_id != one.chip_id


def test_a_given_chip_id_is_used() -> None:
    chip = bytes(range(1, 65))
    sim = Simulator(Product.MILAN, chip, seed=4, key_size=2048)
    assert sim.chip_id == sim.hw_id == chip
    assert vek_info(sim.vcek).hw_id == chip
    turin = Simulator(Product.TURIN, chip[:8], seed=4, key_size=2048)
    assert turin.chip_id == chip[:8] + bytes(56)
    assert turin.hw_id == chip[:8]
    report = turin.report(DATA)
    assert report.chip_id == chip[:8] + bytes(56)
    assert verify_report(report, turin.chain(), trust=turin.trust()).vek.hw_id == chip[:8]


def test_not_before_sets_every_validity_period() -> None:
    start = datetime(2030, 1, 2, tzinfo=UTC)
    sim = Simulator(Product.MILAN, seed=5, key_size=2048, not_before=start)
    assert all(cert.not_valid_before_utc == start for cert in sim.chain())
    report = sim.report(DATA)
    with pytest.raises(CertificateChainError) as caught:
        _verify(sim, report)  # today is before 2030
    assert caught.value.check == "validity"
    _verify(sim, report, now=start + timedelta(days=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tcb": DEFAULT_TCB[Product.TURIN]}, "Milan TCB"),
        ({"chip_id": bytes(63)}, "64 bytes"),
        ({"chip_id": bytes(64)}, "not all zeros"),
        ({"key_size": 1024}, "RSA key size"),
    ],
)
def test_bad_simulator_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Simulator(Product.MILAN, seed=6, **{"key_size": 2048, **kwargs})  # type: ignore[arg-type]


def test_bad_turin_arguments() -> None:
    with pytest.raises(ValueError, match="Turin TCB"):
        Simulator(Product.TURIN, tcb=DEFAULT_TCB[Product.GENOA], key_size=2048)
    with pytest.raises(ValueError, match="other 56 must be zero"):
        Simulator(Product.TURIN, chip_id=bytes([1]) * 64, key_size=2048)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"report_data": bytes(65)}, "at most 64"),
        ({"version": 6}, "version 6"),
        ({"version": 1}, "version 1"),
        ({"current_mit_vector": 1}, "version 5"),
        ({"vmpl": 4}, "VMPL"),
        ({"measurement": bytes(47)}, "measurement must be 48"),
        ({"policy": 0}, "bit 17"),
        ({"guest_svn": 1 << 32}, "cannot encode"),
        ({"firmware": (1, 256, 0)}, "cannot encode"),
        ({"reported_tcb": DEFAULT_TCB[Product.TURIN]}, "Milan TCB"),
        ({"chip_id": bytes(3)}, "64 bytes"),
    ],
)
def test_bad_report_arguments(
    sims: dict[Product, Simulator], kwargs: dict[str, object], message: str
) -> None:
    sim = sims[Product.MILAN]
    data = kwargs.pop("report_data", DATA)
    with pytest.raises(ValueError, match=message):
        sim.report(data, **kwargs)  # type: ignore[arg-type]
