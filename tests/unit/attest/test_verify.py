"""`verify_report` beyond the vectors: a `VerifiedReport` cannot be made or altered by hand, the
chain cache is exact, and the points an independent review raised stay fixed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from cvmstore.attest.certs import check_signed_by, common_name, load_certificates, spki_sha256
from cvmstore.attest.report import SIGNED_SIZE, AttestationReport, SigningKey, load_report
from cvmstore.attest.simulator import Simulator
from cvmstore.attest.tcb import Product, TcbVersion
from cvmstore.attest.verify import VerifiedReport, _check_signature, verify_report
from cvmstore.errors import (
    AttestationError,
    CertificateChainError,
    FormatError,
    ReportSignatureError,
)


def _milan(vectors_dir: Path) -> tuple[AttestationReport, list[x509.Certificate]]:
    snp = vectors_dir / "snp"
    report = load_report((snp / "trustee" / "milan-v2-report.bin").read_bytes())
    certs = load_certificates((snp / "trustee" / "milan-v2-vcek.der").read_bytes())
    certs += load_certificates((snp / "amd-roots" / "milan_ask_ark_asvk.pem").read_bytes())
    return report, certs


def test_a_verified_report_cannot_be_made_or_changed_by_hand(vectors_dir: Path) -> None:
    report, certs = _milan(vectors_dir)
    verified = verify_report(report, certs)
    other = dataclasses.replace(report, measurement=bytes(48))
    with pytest.raises(TypeError, match="verify_report"):
        VerifiedReport()
    with pytest.raises(TypeError):
        dataclasses.replace(verified, report=other)  # type: ignore[type-var]
    with pytest.raises(AttributeError, match="read-only"):
        verified.report = other
    with pytest.raises(TypeError, match="verify_report"):
        VerifiedReport._issue(object(), report=other)
    assert verified.report is report


def test_the_chain_cache_never_accepts_a_changed_certificate(vectors_dir: Path) -> None:
    report, certs = _milan(vectors_dir)
    verify_report(report, certs)  # the genuine chain is now cached
    vek_der = bytearray(certs[0].public_bytes(Encoding.DER))
    # Change one byte inside the signed part (the validity period's text), keep the signature.
    where = vek_der.find(b"Z", 200)
    vek_der[where - 1] ^= 0x01
    try:
        (forged,) = load_certificates(bytes(vek_der))
    except FormatError:
        pytest.fail("the test's edit should keep the DER parseable")
    assert forged.signature == certs[0].signature
    with pytest.raises(CertificateChainError, match="chain"):
        verify_report(report, [forged, *certs[1:]])


_DER = __import__(
    "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
).Encoding.DER


# ---------------------------------------------------------------- findings of the review
#
# Simulator chains (2048-bit RSA, made once per module) for what no public vector has: a
# host-requested report, stale and junk certificates beside the genuine ones, a v2 report in
# the wrong TCB layout.

DATA = b"review"
NEWER_MILAN_TCB = TcbVersion.make(bootloader=4, tee=0, snp=24, microcode=217)


@pytest.fixture(scope="module")
def milan() -> Simulator:
    return Simulator(Product.MILAN, seed="verify review", key_size=2048, vlek=True)


@pytest.fixture(scope="module")
def junk() -> Simulator:
    """Another Milan 'AMD': the same names and extensions, other keys (a junk chain)."""
    return Simulator(Product.MILAN, seed="junk", key_size=2048, vlek=True)


def _resigned(sim: Simulator, report: AttestationReport, signer: SigningKey) -> AttestationReport:
    """`report` signed again with the simulator's VEK, as the firmware would sign it."""
    vek = sim._vcek if signer is SigningKey.VCEK else sim._vlek
    assert vek is not None
    data = bytearray(report.encode())
    der = vek.key.sign(bytes(data[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    data[0x2A0 : 0x2A0 + 72] = r.to_bytes(72, "little")
    data[0x2E8 : 0x2E8 + 72] = s.to_bytes(72, "little")
    return AttestationReport.decode(bytes(data))


def _verify(sim: Simulator, report: AttestationReport, certs: list[x509.Certificate]) -> Any:
    return verify_report(report, certs, trust=sim.trust())


@pytest.mark.parametrize("key", [SigningKey.VCEK, SigningKey.VLEK], ids=["VCEK", "VLEK"])
@pytest.mark.parametrize("vmpl", [0xFFFFFFFF, 4, 0x80000000])
def test_a_host_requested_report_is_refused(milan: Simulator, key: SigningKey, vmpl: int) -> None:
    """SNP_HV_REPORT_REQ gives VMPL 0xFFFFFFFF and zero REPORT_DATA: no guest asked for it."""
    genuine = milan.report(signing_key=key)
    hv = _resigned(milan, dataclasses.replace(genuine, vmpl=vmpl, report_data=bytes(64)), key)
    assert hv.vmpl == vmpl
    _check_signature(hv, milan.vcek if key is SigningKey.VCEK else _vlek(milan))  # genuine
    with pytest.raises(AttestationError, match="host-requested") as caught:
        _verify(milan, hv, milan.chain())
    assert type(caught.value) is AttestationError
    assert caught.value.check == "vmpl"
    assert caught.value.exit_code == 30


def test_vmpl_3_is_still_a_guests_report(milan: Simulator) -> None:
    assert _verify(milan, milan.report(DATA, vmpl=3), milan.chain()).report.vmpl == 3


def test_a_stale_vcek_before_the_right_one_still_verifies(milan: Simulator) -> None:
    """A host's table may keep the VCEK of the TCB before a firmware update."""
    new = milan.with_tcb(NEWER_MILAN_TCB)
    report = new.report(DATA)
    assert milan.vcek.public_key() != new.vcek.public_key()
    for certs in (
        [milan.vcek, new.vcek, new.ask, new.ark],
        [new.vcek, milan.vcek, new.ask, new.ark],
        [milan.vcek, milan.vcek, new.vcek, new.ask, new.ark],
    ):
        verified = _verify(new, report, certs)
        assert verified.vek.spl == NEWER_MILAN_TCB.components()
    with pytest.raises(ReportSignatureError):
        _verify(new, report, [milan.vcek, new.ask, new.ark])  # only the stale one


@pytest.mark.parametrize("key", [SigningKey.VCEK, SigningKey.VLEK], ids=["VCEK", "VLEK"])
def test_junk_certificates_with_the_right_names_do_not_hide_the_chain(
    milan: Simulator, junk: Simulator, key: SigningKey
) -> None:
    """A junk VEK, ASK/ASVK or ARK with AMD's common name placed first changes nothing."""
    report = milan.report(DATA, signing_key=key)
    if key is SigningKey.VCEK:
        vek, issuer, junk_vek, junk_issuer = milan.vcek, milan.ask, junk.vcek, junk.ask
    else:
        vek, issuer, junk_vek, junk_issuer = _vlek(milan), _asvk(milan), _vlek(junk), _asvk(junk)
    assert common_name(junk_issuer) == common_name(issuer)
    assert common_name(junk.ark) == common_name(milan.ark) == "ARK-Milan"
    arrangements = {
        "junk VEK": [junk_vek, vek, issuer, milan.ark],
        "junk issuer": [vek, junk_issuer, issuer, milan.ark],
        "junk ARK": [vek, issuer, junk.ark, milan.ark],
        "all junk first": [junk_vek, junk_issuer, junk.ark, vek, issuer, milan.ark],
    }
    for name, certs in arrangements.items():
        verified = _verify(milan, report, certs)
        assert verified.ark_sha256 == spki_sha256(milan.ark), name
    # Even a complete chain to another trusted root (a second provider's VLEK, a test root
    # trusted beside AMD's) does not hide the genuine one: its VEK did not sign the report.
    both = milan.trust().with_root(junk.ark, Product.MILAN)
    certs = [junk_vek, junk_issuer, junk.ark, vek, issuer, milan.ark]
    assert verify_report(report, certs, trust=both).ark_sha256 == spki_sha256(milan.ark)
    with pytest.raises(ReportSignatureError):
        verify_report(report, certs[:3], trust=both)
    # Nothing genuine: still refused, with the first reason.
    with pytest.raises(CertificateChainError) as caught:
        _verify(milan, report, [vek, junk_issuer, milan.ark])
    assert caught.value.check == "chain"


def test_a_v2_report_in_the_milan_layout_on_a_turin_chain_is_refused() -> None:
    """v2 has no CPUID: a masked chip ID reads as Milan layout, the VLEK's chain says Turin.

    With early-Turin SPLs the components even coincide, so only the layout check stops it
    from passing as a Turin report without an FMC.
    """
    early = TcbVersion.make(bootloader=0, tee=0, snp=0, microcode=9, fmc=0)
    turin = Simulator(Product.TURIN, seed="v2 layout", key_size=2048, vlek=True, tcb=early)
    report = turin.report(DATA, version=2, signing_key=SigningKey.VLEK, mask_chip_id=True)
    assert not report.turin_layout
    assert report.reported_tcb.components() == {
        "bootloader": 0, "tee": 0, "snp": 0, "microcode": 9,
    }  # fmt: skip
    _check_signature(report, _vlek(turin))  # genuine
    with pytest.raises(CertificateChainError, match="TCB layout does not match") as caught:
        verify_report(report, turin.chain(), trust=turin.trust())
    assert caught.value.check == "tcb"
    # the same firmware's v3 report names Turin by CPUID and verifies
    v3 = turin.report(DATA, version=3, signing_key=SigningKey.VLEK, mask_chip_id=True)
    assert verify_report(v3, turin.chain(), trust=turin.trust()).product is Product.TURIN


def test_changing_the_vek_facts_of_a_result_changes_no_later_verdict(milan: Simulator) -> None:
    first = _verify(milan, milan.report(DATA), milan.chain())  # the chain is now cached
    lying_tcb = TcbVersion.make(bootloader=9, tee=9, snp=99, microcode=250)
    lying = milan.report(DATA, reported_tcb=lying_tcb)
    with pytest.raises(CertificateChainError) as caught:
        _verify(milan, lying, milan.chain())
    assert caught.value.check == "tcb"
    first.vek.spl.update(lying_tcb.components())  # a consumer edits what it was handed
    with pytest.raises(CertificateChainError) as caught:
        _verify(milan, lying, milan.chain())
    assert caught.value.check == "tcb"
    second = _verify(milan, milan.report(DATA), milan.chain())
    assert second.vek.spl == milan.tcb.components()
    assert second.vek is not first.vek
    assert second.vek.spl is not first.vek.spl


def test_a_naive_clock_is_refused(milan: Simulator) -> None:
    report = milan.report(DATA)
    with pytest.raises(ValueError, match="timezone-aware"):
        _verify_at(milan, report, datetime(2030, 1, 1))  # naive on purpose
    aware = datetime.now(UTC) + timedelta(days=1)
    assert _verify_at(milan, report, aware).verified_at == aware


def _verify_at(sim: Simulator, report: AttestationReport, now: datetime) -> Any:
    return verify_report(report, sim.chain(), trust=sim.trust(), now=now)


def _vlek(sim: Simulator) -> x509.Certificate:
    assert sim.vlek is not None
    return sim.vlek


def _asvk(sim: Simulator) -> x509.Certificate:
    assert sim.asvk is not None
    return sim.asvk


def _bad_copies(cert: x509.Certificate, count: int) -> list[x509.Certificate]:
    """`cert` with one signature byte changed: same names, same key (an ARK stays pinned)."""
    der = cert.public_bytes(Encoding.DER)
    copies = []
    for index in range(count):
        changed = bytearray(der)
        changed[-1 - index] ^= 0x01
        (copy,) = load_certificates(bytes(changed))
        copies.append(copy)
    return copies


def test_trying_every_chain_checks_each_link_once(
    milan: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Junk pairs with junk (VEKs x issuers x ARKs), but each signature is checked once."""
    from cvmstore.attest import verify

    links: list[tuple[bytes, bytes]] = []
    real = check_signed_by

    def spy(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
        links.append((cert.signature, issuer.signature))
        real(cert, issuer, what)

    monkeypatch.setattr(verify, "check_signed_by", spy)
    junk = [*_bad_copies(milan.vcek, 8), *_bad_copies(milan.ask, 8), *_bad_copies(milan.ark, 8)]
    genuine = [milan.vcek, milan.ask, milan.ark]
    report = milan.report(DATA)
    assert _verify(milan, report, [*junk, *genuine, *junk, *genuine]).report == report
    assert len(links) == len(set(links))
    assert len(links) <= 9 + 9 * 9 + 9 * 9  # ARKs, ASKs by ARK, VCEKs by ASK: not 9 ** 3
    links.clear()
    with pytest.raises(CertificateChainError):
        _verify(milan, report, junk * 3)
    assert len(links) == len(set(links))
