"""The KBS's log never carries a secret: tokens, cookies, nonces, keys or released resources."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from cvmstore.kbs.admin import AdminClient
from cvmstore.kbs.client import KbsClient
from cvmstore.kbs.evidence_source import SimulatorEvidence
from cvmstore.kbs.repository import Repository
from cvmstore.kbs.server import JsonFormatter
from tests.kbs.live import MEASUREMENT, SIMULATOR, live_kbs

SECRET = b"resource secret that must never be logged"


def test_a_full_session_logs_no_secret(
    tmp_path: Path, repository: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cvmstore")
    with live_kbs(tmp_path / "kbs", repository) as kbs:
        with AdminClient(kbs.url, kbs.admin_token) as admin:
            admin.add_reference(MEASUREMENT.hex())
            admin.set_resource("default/key/one", SECRET)
            admin.create_volume("vol", f'measurements = ["{MEASUREMENT.hex()}"]')
        evidence = SimulatorEvidence(SIMULATOR, {"measurement": MEASUREMENT})
        with KbsClient(kbs.url, evidence, kbs_key=kbs.thumbprint) as client:
            client.attest()
            assert client.resource("default/key/one") == SECRET
            root = client.resource("cvmstore/volume/vol")
            client.ledger_advance("vol", None, (0, b"\1" * 32), b"\2" * 16)
            cookie = client._http.cookies["kbs-session-id"]
            token = client.token
        master = (tmp_path / "kbs" / "master.key").read_text().strip()
    assert token is not None
    lines = [JsonFormatter().format(record) for record in caplog.records]
    assert sum('"event": "request"' in line for line in lines) >= 7  # the log is not empty
    for line in lines:
        json.loads(line)
    text = "\n".join(lines)
    forbidden = {
        "admin token": kbs.admin_token,
        "session cookie": cookie,
        "attestation token": token,
        "token signature": token.rsplit(".", 1)[1],
        "master key": master,
        "resource": SECRET.decode(),
        "resource (base64)": base64.b64encode(SECRET).decode(),
        "volume root secret": root.hex(),
    }
    leaked = [name for name, value in forbidden.items() if value in text]
    assert leaked == []
