"""`cvmstore bench snp`: report verification against the bare ECDSA check it is built on.

A KBS verifies one report per attestation. `verify_report` does the report's ECDSA P-384
signature check plus everything around it: finding the certificates by role, the root pin,
the chain (three RSA-4096 PSS signatures, checked once per distinct chain and then cached),
three validity periods, the TCB and chip binding. The baseline is `cryptography`'s ECDSA
P-384 verify alone, over the same signed bytes with the same key, in the same run,
interleaved. Target from the issue: >= 0.8x the bare verify with the chain already loaded.

The report is the Trustee Milan v2 vector (with its VCEK and AMD's Milan ASK/ARK) when the
shared vectors are at hand ($CVMSTORE_VECTORS, else ../shared/vectors beside the project),
otherwise a report from the simulator (RSA-4096 chain like AMD's, trusted explicitly).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cvmstore.attest.certs import CertRole, check_signed_by, load_certificates, role_of
from cvmstore.attest.report import AttestationReport, load_report
from cvmstore.attest.simulator import Simulator
from cvmstore.attest.tcb import Product
from cvmstore.attest.verify import Trust, verify_report
from cvmstore.bench._harness import BenchConfig, Figure, Report, interleave, rate

__all__ = ["run"]

_TARGET = 0.8


def run(config: BenchConfig) -> Report:
    """Measure `verify_report` with a loaded chain against a bare ECDSA P-384 verify."""
    report = Report("snp", config.quick)
    sample, certificates, trust, source = _sample()
    vek = certificates[0]
    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise AssertionError("the VEK's key is not ECDSA")
    signed = sample.signed_bytes()
    signature = encode_dss_signature(sample.signature_r, sample.signature_s)
    now = max(cert.not_valid_before_utc for cert in certificates) + timedelta(days=1)
    verify_report(sample, certificates, trust=trust, now=now)  # loads and caches the chain
    count = 500 if config.quick else 3000

    def ours() -> None:
        for _ in range(count):
            verify_report(sample, certificates, trust=trust, now=now)

    def theirs() -> None:
        for _ in range(count):
            key.verify(signature, signed, ec.ECDSA(hashes.SHA384()))

    value, baseline = interleave(
        config.rounds, lambda: rate(count, ours), lambda: rate(count, theirs)
    )
    report.figures.append(
        Figure(
            "verify_report, chain loaded",
            "verify/s",
            value,
            baseline,
            "bare ECDSA P-384",
            target=_TARGET,
        )
    )
    links = _link_cost(certificates)
    report.notes.append(
        f"{source}; {count} verifications per round, {config.rounds} interleaved rounds, "
        f"medians. Checking the chain's three RSA-4096 PSS links costs {links * 1e6:,.0f} us "
        f"(against {1e6 / baseline:,.0f} us for the ECDSA check): verify_report does it once "
        "per distinct chain and caches the result"
    )
    return report


def _sample() -> tuple[AttestationReport, list[x509.Certificate], Trust, str]:
    """(report, [VEK, ASK, ARK, ...], trust, description)."""
    vectors = _vectors()
    if vectors is not None:
        snp = vectors / "snp"
        sample = load_report((snp / "trustee" / "milan-v2-report.bin").read_bytes())
        certs = load_certificates((snp / "trustee" / "milan-v2-vcek.der").read_bytes())
        certs += load_certificates((snp / "amd-roots" / "milan_ask_ark_asvk.pem").read_bytes())
        return sample, certs, Trust(), f"Trustee Milan v2 report from {vectors}"
    return _simulated()


def _vectors() -> Path | None:
    configured = os.environ.get("CVMSTORE_VECTORS")
    candidates = [Path(configured)] if configured else []
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "vectors")
    candidates.append(Path.cwd().parent / "shared" / "vectors")
    for candidate in candidates:
        if (candidate / "snp" / "trustee" / "milan-v2-report.bin").is_file():
            return candidate
    return None


def _simulated() -> tuple[AttestationReport, list[x509.Certificate], Trust, str]:
    simulator = Simulator(Product.MILAN, seed="cvmstore bench snp")
    sample = simulator.report(b"cvmstore bench snp")
    return sample, simulator.chain(), simulator.trust(), "simulated Milan v3 report (no vectors)"


def _link_cost(certificates: list[x509.Certificate]) -> float:
    """Seconds to check the three links of the chain once, uncached (median of 5)."""
    by_role: dict[CertRole, x509.Certificate] = {}
    for cert in certificates:
        role = role_of(cert)
        if role is not None:
            by_role.setdefault(role[0], cert)
    vek = by_role.get(CertRole.VCEK) or by_role[CertRole.VLEK]
    issuer = by_role[CertRole.ASK] if CertRole.VCEK in by_role else by_role[CertRole.ASVK]
    ark = by_role[CertRole.ARK]
    steps: list[Callable[[], None]] = [
        lambda: check_signed_by(ark, ark, "ARK"),
        lambda: check_signed_by(issuer, ark, "issuer"),
        lambda: check_signed_by(vek, issuer, "VEK"),
    ]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for step in steps:
            step()
        times.append(time.perf_counter() - start)
    return sorted(times)[2]
