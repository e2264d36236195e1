"""Where a guest's evidence comes from: the SNP hardware (configfs-tsm) or the simulator.

An evidence source turns the 64 bytes of REPORT_DATA the client computed (binding the KBS's
nonce and the guest's fresh key) into the `primary_evidence` JSON of the attestation request.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cvmstore.attest.configfs import ConfigfsTsm
from cvmstore.attest.evidence import aproxy_evidence, cert_table_for, trustee_evidence
from cvmstore.attest.report import AttestationReport
from cvmstore.attest.simulator import ReportFields, Simulator

__all__ = ["ConfigfsEvidence", "EvidenceSource", "SampleEvidence", "SimulatorEvidence"]

Shape = Literal["trustee", "aproxy"]


class EvidenceSource(Protocol):
    """Makes `primary_evidence` for one attestation."""

    tee: str

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """Evidence whose REPORT_DATA is `report_data` (64 bytes; 48 for `sample`)."""
        ...


@dataclass
class SimulatorEvidence:
    """Reports signed by the attestation simulator (trusted only by a KBS configured to)."""

    simulator: Simulator
    fields: ReportFields = field(default_factory=lambda: ReportFields())
    shape: Shape = "trustee"
    tee: str = "snp"

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """A fresh simulated report in the chosen JSON shape, with its certificates."""
        report = self.simulator.report(report_data, **self.fields)
        chain = self.simulator.chain()
        if self.shape == "aproxy":
            return aproxy_evidence(report, cert_table_for(chain))
        return trustee_evidence(report, chain)


@dataclass
class ConfigfsEvidence:
    """Real reports from the SEV-SNP firmware through Linux configfs-tsm."""

    tsm: ConfigfsTsm = field(default_factory=ConfigfsTsm)
    shape: Shape = "trustee"
    tee: str = "snp"

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """A fresh hardware report with the host's certificate table."""
        raw, table = self.tsm.get_report(report_data)
        if self.shape == "aproxy":
            return aproxy_evidence(raw, table or None)
        from cvmstore.attest.evidence import parse_cert_table

        return trustee_evidence(
            AttestationReport.decode(raw), parse_cert_table(table) if table else None
        )


@dataclass
class SampleEvidence:
    """Trustee's unsigned `sample` evidence: only a KBS with `allow_sample_tee` takes it."""

    tee: str = "sample"

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """{svn, report_data}: the 48-byte binding digest, standard base64."""
        return {"svn": "1", "report_data": base64.b64encode(report_data[:48]).decode("ascii")}
