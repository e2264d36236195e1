"""Key Broker Service: the Trustee KBS protocol (RCAR 0.4.0), attested key release, the ledger.

The server side is `cvmstore kbs serve` (`server.serve`, `app.create_app`); the guest side is
`KbsClient` (auth, attest, resource, ledger) and `KbsAnchor`, the secure store's anchor kept
in the KBS's rollback ledger::

    from cvmstore.kbs import KbsAnchor, KbsClient, SimulatorEvidence

    with KbsClient(url, evidence, kbs_key=thumbprint) as client:
        client.attest()
        root_secret = client.resource("cvmstore/volume/vtpm")
        store = SecureStore.open(device, root_secret, KbsAnchor(client, "vtpm"))

docs/kbs.md runs one; docs/kbs-api.md specifies the HTTP API.
"""

from cvmstore.kbs.admin import AdminClient as AdminClient
from cvmstore.kbs.anchor import KbsAnchor as KbsAnchor
from cvmstore.kbs.client import KbsClient as KbsClient
from cvmstore.kbs.client import LedgerAnswer as LedgerAnswer
from cvmstore.kbs.config import PROTOCOL_VERSION as PROTOCOL_VERSION
from cvmstore.kbs.config import KbsConfig as KbsConfig
from cvmstore.kbs.config import load_config as load_config
from cvmstore.kbs.evidence_source import ConfigfsEvidence as ConfigfsEvidence
from cvmstore.kbs.evidence_source import EvidenceSource as EvidenceSource
from cvmstore.kbs.evidence_source import SampleEvidence as SampleEvidence
from cvmstore.kbs.evidence_source import SimulatorEvidence as SimulatorEvidence
from cvmstore.kbs.policy import KbsPolicy as KbsPolicy
from cvmstore.kbs.policy import parse_kbs_policy as parse_kbs_policy

__all__ = [
    "PROTOCOL_VERSION",
    "AdminClient",
    "ConfigfsEvidence",
    "EvidenceSource",
    "KbsAnchor",
    "KbsClient",
    "KbsConfig",
    "KbsPolicy",
    "LedgerAnswer",
    "SampleEvidence",
    "SimulatorEvidence",
    "load_config",
    "parse_kbs_policy",
]
