"""`VerifiedReport` cannot be made or altered outside `verify_report`; the chain cache is exact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cvmstore.attest.certs import load_certificates
from cvmstore.attest.report import AttestationReport, load_report
from cvmstore.attest.verify import VerifiedReport, verify_report
from cvmstore.errors import CertificateChainError, FormatError


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
