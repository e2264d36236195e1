"""SEV-SNP attestation: reports, the AMD certificate chain, TCB and policy checks.

The common path::

    from cvmstore.attest import check_policy, load_evidence, load_policy, verify_report

    evidence = load_evidence(blob)                 # raw, hex, Azure HCL, Trustee or aproxy JSON
    verified = verify_report(evidence.report, evidence.certificates)   # chain, signature, TCB, chip
    check_policy(verified, load_policy("policy.toml"), report_data=binding)

Only `verify_report` makes a `VerifiedReport`. AMD's three roots are trusted by their pinned
key digests; the simulator's root only through `Trust().with_root(...)`. docs/attestation.md
describes every check.
"""

from cvmstore.attest.certs import AMD_ARK_PINS as AMD_ARK_PINS
from cvmstore.attest.certs import load_certificates as load_certificates
from cvmstore.attest.configfs import ConfigfsTsm as ConfigfsTsm
from cvmstore.attest.evidence import Evidence as Evidence
from cvmstore.attest.evidence import load_evidence as load_evidence
from cvmstore.attest.policy import Policy as Policy
from cvmstore.attest.policy import check_policy as check_policy
from cvmstore.attest.policy import load_policy as load_policy
from cvmstore.attest.policy import parse_policy as parse_policy
from cvmstore.attest.report import AttestationReport as AttestationReport
from cvmstore.attest.report import SigningKey as SigningKey
from cvmstore.attest.report import load_report as load_report
from cvmstore.attest.simulator import Simulator as Simulator
from cvmstore.attest.tcb import Product as Product
from cvmstore.attest.tcb import TcbVersion as TcbVersion
from cvmstore.attest.verify import Trust as Trust
from cvmstore.attest.verify import VerifiedReport as VerifiedReport
from cvmstore.attest.verify import verify_report as verify_report

__all__ = [
    "AMD_ARK_PINS",
    "AttestationReport",
    "ConfigfsTsm",
    "Evidence",
    "Policy",
    "Product",
    "SigningKey",
    "Simulator",
    "TcbVersion",
    "Trust",
    "VerifiedReport",
    "check_policy",
    "load_certificates",
    "load_evidence",
    "load_policy",
    "load_report",
    "parse_policy",
    "verify_report",
]
