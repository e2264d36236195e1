"""atheris target: SEV-SNP evidence and GHCB certificate tables raise only FormatError.

Each input goes to `load_evidence` as is (raw, hex, Azure HCL or JSON, told apart by its
content) and to `parse_cert_table`. So that the deeper parsers see fuzzed bytes inside valid
framing, it then goes in as aproxy's `certs-buf` beside a genuine simulator report, as the
only VCEK entry of a certificate table and as a Trustee `cert_chain` entry (both reach the
X.509 parser), and, when it is JSON, in place of one field of a genuine Trustee report. Only
the `FormatError` family may escape.
"""

import base64
import contextlib
import json
import sys

import atheris

with atheris.instrument_imports():
    from cvmstore.attest.certs import CertRole
    from cvmstore.attest.evidence import (
        aproxy_evidence,
        build_cert_table,
        load_evidence,
        parse_cert_table,
        trustee_evidence,
    )
    from cvmstore.attest.simulator import Simulator
    from cvmstore.errors import FormatError

_SIMULATOR = Simulator(seed="fuzz", key_size=2048)
_REPORT = _SIMULATOR.report(b"fuzz")
_TRUSTEE = trustee_evidence(_REPORT)
_FIELDS = [*_TRUSTEE["attestation_report"], "cert_chain"]


def evidence(doc: object) -> None:
    try:
        text = json.dumps(doc).encode()
    except RecursionError:  # a value nested as deep as json.loads allows, two levels down
        return
    with contextlib.suppress(FormatError):
        load_evidence(text)


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        load_evidence(data)
    with contextlib.suppress(FormatError):
        parse_cert_table(data)
    with contextlib.suppress(FormatError):
        parse_cert_table(build_cert_table([(CertRole.VCEK, data)]))
    aproxy = aproxy_evidence(_REPORT)
    evidence({**aproxy, "certs-buf": base64.b64encode(data).decode()})
    evidence({**_TRUSTEE, "cert_chain": [{"cert_type": "VCEK", "data": list(data)}]})
    if data:
        try:
            value = json.loads(data[1:])
        except (ValueError, RecursionError):
            return
        field = _FIELDS[data[0] % len(_FIELDS)]
        if field == "cert_chain":
            evidence({**_TRUSTEE, "cert_chain": value})
        else:
            evidence(
                {**_TRUSTEE, "attestation_report": {**_TRUSTEE["attestation_report"], field: value}}
            )


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
