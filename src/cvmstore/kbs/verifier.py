"""Evidence in, an attested session's facts out: the SNP and `sample` verifiers of the KBS.

SNP evidence comes in Trustee's JSON shape (`attestation_report`, `cert_chain`) or COCONUT
aproxy's (`snp-report`, `certs-buf`); both go through `cvmstore.attest.verify_report` (AMD
chain, signature, TCB, chip). Then REPORT_DATA must equal one of the bindings the policy
allows, and the report must satisfy the policy. The `sample` TEE (unsigned, for tests) exists
only when the configuration enables it.

What a session keeps (`Attested.document()`) is the evidence itself, so the resource and
ledger endpoints can re-check any policy later, in any KBS process, by verifying it again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from threading import Lock
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cvmstore.attest.evidence import parse_aproxy_evidence, parse_trustee_evidence
from cvmstore.attest.policy import check_policy
from cvmstore.attest.report import AttestationReport
from cvmstore.attest.verify import Trust, VerifiedReport, verify_report
from cvmstore.errors import AttestationError, FormatError, PolicyError
from cvmstore.kbs.binding import svsm_binding, trustee_digest, trustee_report_data
from cvmstore.kbs.jose import TeePublicKey
from cvmstore.kbs.policy import KbsPolicy
from cvmstore.kbs.problems import Problem

__all__ = ["Attested", "EvidenceVerifier"]

_CACHE_SIZE = 256
#: VCEK or VLEK, ASK or ASVK, ARK, with room for both chains and a stale VEK.
MAX_CERTIFICATES = 8


@dataclass(frozen=True, slots=True)
class Attested:
    """What an attestation established, kept in the session.

    Attributes:
        tee: "snp" or "sample".
        binding: the REPORT_DATA dialect that matched ("trustee", "svsm").
        tee_pubkey: the guest's key (JWK, as sent): resources are encrypted to it.
        evidence_sha384: hex SHA-384 of the report (SNP) or of the sample evidence.
        attested_at: UNIX time of the verification.
        report: the raw SNP report (None for `sample`).
        certificates: the DER certificates that came with it.
        ledger_key: the session's ledger key, sealed under the master key: ledger advances
            must carry a MAC under it (proof that the attested guest made them).
    """

    tee: str
    binding: str
    tee_pubkey: dict[str, str]
    evidence_sha384: str
    attested_at: float
    report: bytes | None = None
    certificates: tuple[bytes, ...] = ()
    ledger_key: bytes | None = None

    def document(self) -> str:
        """JSON text for the session record."""
        return json.dumps(
            {
                "tee": self.tee,
                "binding": self.binding,
                "tee-pubkey": self.tee_pubkey,
                "evidence-sha384": self.evidence_sha384,
                "attested-at": self.attested_at,
                "report": None if self.report is None else self.report.hex(),
                "certificates": [base64.b64encode(der).decode() for der in self.certificates],
                "ledger-key": None if self.ledger_key is None else self.ledger_key.hex(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_document(cls, text: str) -> Attested:
        """Read back what `document` wrote (a KBS database value: trusted, but checked)."""
        data = json.loads(text)
        return cls(
            tee=data["tee"],
            binding=data["binding"],
            tee_pubkey=dict(data["tee-pubkey"]),
            evidence_sha384=data["evidence-sha384"],
            attested_at=float(data["attested-at"]),
            report=None if data["report"] is None else bytes.fromhex(data["report"]),
            certificates=tuple(base64.b64decode(c) for c in data["certificates"]),
            ledger_key=None
            if data.get("ledger-key") is None
            else bytes.fromhex(data["ledger-key"]),
        )


class EvidenceVerifier:
    """Verifies evidence at /attest and re-checks policies for resources and the ledger."""

    def __init__(
        self, trust: Trust, *, allow_sample: bool = False, vcek_store: Path | None = None
    ) -> None:
        self.trust = trust
        self.allow_sample = allow_sample
        self.vcek_store = vcek_store
        self._cache: OrderedDict[str, VerifiedReport] = OrderedDict()
        self._lock = Lock()

    # ------------------------------------------------------------------ /attest

    def attest(
        self,
        tee: str,
        evidence: object,
        *,
        nonce: str,
        key: TeePublicKey,
        additional_evidence: str,
        policy: KbsPolicy,
        references: list[bytes],
        now: float,
    ) -> Attested:
        """Verify evidence for a session and check it against the attestation policy.

        Raises:
            Problem: 400 for malformed evidence; 401 (AttestationFailed) for evidence that
                does not verify, does not bind this nonce and key, or fails the policy.
        """
        if tee not in policy.tees:
            raise Problem(401, "AttestationFailed", f"the policy does not accept TEE {tee!r}")
        if tee == "sample":
            return self._sample(evidence, nonce, key, additional_evidence, now)
        report, certificates = _parse_snp(evidence)
        if len(certificates) > MAX_CERTIFICATES:
            # Every candidate chain is tried: many junk certificates would buy a client
            # seconds of the KBS's CPU before anything it cannot forge is checked.
            raise Problem(
                400,
                "InvalidEvidence",
                f"{len(certificates)} certificates: a VEK chain needs at most {MAX_CERTIFICATES}",
            )
        verified = self._verify(report, certificates, now)
        binding = _match_binding(report, policy, nonce, key, additional_evidence)
        self._check(verified, policy, references, "AttestationFailed", 401)
        raw = report.encode()
        attested = Attested(
            tee="snp",
            binding=binding,
            tee_pubkey=dict(key.jwk),
            evidence_sha384=hashlib.sha384(raw).hexdigest(),
            attested_at=now,
            report=raw,
            certificates=tuple(c.public_bytes(Encoding.DER) for c in certificates),
        )
        self._remember(attested.evidence_sha384, verified)
        return attested

    def _sample(
        self, evidence: object, nonce: str, key: TeePublicKey, additional: str, now: float
    ) -> Attested:
        if not self.allow_sample:
            raise Problem(400, "UnsupportedTee", "the sample TEE is disabled on this KBS")
        if not isinstance(evidence, dict) or set(evidence) != {"svn", "report_data"}:
            raise Problem(400, "InvalidEvidence", "sample evidence is {svn, report_data}")
        try:
            report_data = base64.b64decode(str(evidence["report_data"]), validate=True)
        except (binascii.Error, ValueError):
            raise Problem(400, "InvalidEvidence", "report_data is not base64") from None
        if report_data != trustee_digest(nonce, key.jwk, additional):
            raise Problem(401, "AttestationFailed", "report_data does not bind this nonce and key")
        digest = hashlib.sha384(json.dumps(evidence, sort_keys=True).encode()).hexdigest()
        return Attested("sample", "trustee", dict(key.jwk), digest, now)

    # ------------------------------------------------------------------ resources, ledger

    def authorize(
        self, attested: Attested, policy: KbsPolicy, references: list[bytes], what: str
    ) -> None:
        """Check an attested session against a resource's or volume's policy.

        Raises:
            Problem: 403 PolicyDeny, naming the failed check.
        """
        if attested.tee not in policy.tees:
            raise Problem(
                403, "PolicyDeny", f"{what}: the policy does not accept TEE {attested.tee!r}"
            )
        if attested.binding not in policy.bindings:
            raise Problem(
                403,
                "PolicyDeny",
                f"{what}: the policy does not accept the {attested.binding} binding",
            )
        if attested.tee == "sample":
            if not self.allow_sample:  # a session from before the configuration changed
                raise Problem(403, "PolicyDeny", f"{what}: the sample TEE is disabled")
            return
        verified = self._restore(attested)
        self._check(verified, policy, references, "PolicyDeny", 403, what)

    def _restore(self, attested: Attested) -> VerifiedReport:
        with self._lock:
            cached = self._cache.get(attested.evidence_sha384)
            if cached is not None:
                self._cache.move_to_end(attested.evidence_sha384)
                return cached
        assert attested.report is not None
        report = AttestationReport.decode(attested.report)
        certs = [x509.load_der_x509_certificate(der) for der in attested.certificates]
        # Verified as of the attestation: a certificate that expired since does not undo it.
        verified = self._verify(report, certs, attested.attested_at)
        self._remember(attested.evidence_sha384, verified)
        return verified

    def _remember(self, digest: str, verified: VerifiedReport) -> None:
        with self._lock:
            self._cache[digest] = verified
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _verify(
        self, report: AttestationReport, certificates: list[x509.Certificate], now: float
    ) -> VerifiedReport:
        try:
            return verify_report(
                report,
                certificates,
                trust=self.trust,
                now=datetime.fromtimestamp(now, UTC),
                vcek_store=self.vcek_store,
            )
        except AttestationError as exc:
            raise Problem(
                401, "AttestationFailed", f"the evidence does not verify: {exc}", check=exc.check
            ) from None

    @staticmethod
    def _check(
        verified: VerifiedReport,
        policy: KbsPolicy,
        references: list[bytes],
        kind: str,
        status: int,
        what: str = "attestation",
    ) -> None:
        effective = policy.with_references(references)
        if effective is None:
            raise Problem(
                status,
                kind,
                f"{what}: no reference measurement is registered and the policy lists none"
                " (register one with `cvmstore kbs admin add-reference`)",
                check="measurement",
            )
        try:
            check_policy(verified, effective)
        except PolicyError as exc:
            raise Problem(status, kind, f"{what}: {exc}", check=exc.check) from None


def _parse_snp(evidence: object) -> tuple[AttestationReport, list[x509.Certificate]]:
    try:
        if isinstance(evidence, dict) and "attestation_report" in evidence:
            return parse_trustee_evidence(evidence)
        if isinstance(evidence, dict) and "snp-report" in evidence:
            return parse_aproxy_evidence(evidence)
    except FormatError as exc:
        raise Problem(400, "InvalidEvidence", str(exc)) from None
    raise Problem(
        400,
        "InvalidEvidence",
        "SNP evidence needs 'attestation_report' (Trustee) or 'snp-report' (aproxy)",
    )


def _match_binding(
    report: AttestationReport,
    policy: KbsPolicy,
    nonce: str,
    key: TeePublicKey,
    additional: str,
) -> str:
    candidates: dict[str, bytes | None] = {
        "trustee": trustee_report_data(nonce, key.jwk, additional),
        "svsm": svsm_binding(nonce, key),
    }
    for name in policy.bindings:
        if candidates[name] == report.report_data:
            return name
    others = [
        n for n, v in candidates.items() if n not in policy.bindings and v == report.report_data
    ]
    hint = (
        f"; it matches the {others[0]} binding, which the policy does not allow" if others else ""
    )
    raise Problem(
        401,
        "AttestationFailed",
        "REPORT_DATA does not bind this nonce and key under the allowed binding"
        f" ({', '.join(policy.bindings)}){hint}",
        check="report-data",
    )


def snp_claims(report: bytes) -> dict[str, Any]:
    """The token's view of an SNP report (Trustee's `snp.*` claim names where they exist)."""
    decoded = AttestationReport.decode(report)
    return {
        "measurement": decoded.measurement.hex(),
        "report_data": decoded.report_data.hex(),
        "host_data": decoded.host_data.hex(),
        "vmpl": decoded.vmpl,
        "guest_svn": decoded.guest_svn,
        "policy_debug_allowed": decoded.policy.debug,
        "policy_migrate_ma": decoded.policy.migrate_ma,
        "chip_id": decoded.chip_id.hex(),
        "reported_tcb": str(decoded.reported_tcb),
        "version": decoded.version,
    }
