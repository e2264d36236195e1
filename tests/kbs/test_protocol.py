"""The KBS over real HTTP on loopback, against both backends: RCAR, key release, the ledger.

Every guarantee is tried from the attacker's side too: wrong nonce, replayed nonce, forged
binding, unpinned signer, stale answers, rollback and fork through the secure store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cvmstore.block.memory import MemoryDevice
from cvmstore.errors import (
    AnchorError,
    ForkError,
    KbsAuthError,
    KbsIdentityError,
    ResourceNotFoundError,
    RollbackError,
)
from cvmstore.integrity import SecureStore
from cvmstore.kbs.admin import AdminClient
from cvmstore.kbs.anchor import KbsAnchor
from cvmstore.kbs.binding import trustee_digest
from cvmstore.kbs.client import KbsClient
from cvmstore.kbs.evidence_source import SampleEvidence, SimulatorEvidence
from cvmstore.kbs.jose import tee_jwk
from cvmstore.kbs.repository import Repository
from tests.kbs.live import MEASUREMENT, SIMULATOR, LiveKbs, live_kbs

POLICY = f'measurements = ["{MEASUREMENT.hex()}"]\n'
OTHER_MEASUREMENT = bytes.fromhex("cd" * 48)


@pytest.fixture
def kbs(tmp_path: Path, repository: Repository) -> Iterator[LiveKbs]:
    with live_kbs(tmp_path / "kbs", repository) as live:
        yield live


@pytest.fixture
def admin(kbs: LiveKbs) -> Iterator[AdminClient]:
    with AdminClient(kbs.url, kbs.admin_token) as client:
        client.add_reference(MEASUREMENT.hex())
        yield client


def guest(
    kbs: LiveKbs, *, measurement: bytes = MEASUREMENT, pin: bool = True, **kw: object
) -> KbsClient:
    source = SimulatorEvidence(SIMULATOR, {"measurement": measurement}, **kw)  # type: ignore[arg-type]
    return KbsClient(kbs.url, source, kbs_key=kbs.thumbprint if pin else None, retries=0)


def test_handshake_releases_a_resource_to_an_attested_guest(
    kbs: LiveKbs, admin: AdminClient
) -> None:
    admin.set_resource("default/key/one", b"the secret")
    with guest(kbs) as client:
        claims = client.attest()
        assert (
            claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["snp"]["measurement"]
            == MEASUREMENT.hex()
        )
        assert client.resource("default/key/one") == b"the secret"
        with pytest.raises(ResourceNotFoundError):
            client.resource("default/key/two")


def test_the_wrong_measurement_gets_no_token(kbs: LiveKbs, admin: AdminClient) -> None:
    with (
        guest(kbs, measurement=OTHER_MEASUREMENT) as client,
        pytest.raises(KbsAuthError, match="measurement"),
    ):
        client.attest()


def test_no_reference_and_no_measurements_accepts_nobody(kbs: LiveKbs) -> None:
    with guest(kbs) as client, pytest.raises(KbsAuthError, match="no reference measurement"):
        client.attest()


def test_resource_policy_denies_with_403(kbs: LiveKbs, admin: AdminClient) -> None:
    admin.set_resource("default/key/one", b"s")
    admin.set_resource_policy(
        "default/key/one", f'measurements = ["{OTHER_MEASUREMENT.hex()}"]'.encode()
    )
    with guest(kbs) as client:
        client.attest()
        with pytest.raises(KbsAuthError, match="403"):
            client.resource("default/key/one")


def test_aproxy_shape_needs_the_svsm_binding_allowed(kbs: LiveKbs, admin: AdminClient) -> None:
    admin.set_resource("default/sample/test", b"svsm secret")
    with KbsClient(
        kbs.url,
        SimulatorEvidence(SIMULATOR, {"measurement": MEASUREMENT}, shape="aproxy"),
        kbs_key=kbs.thumbprint,
        binding="svsm",
        retries=0,
    ) as client:
        with pytest.raises(KbsAuthError, match="svsm binding, which the policy does not allow"):
            client.attest()
        admin.set_policy(b'bindings = ["trustee", "svsm"]\n')
        client.attest()
        assert client.resource("default/sample/test") == b"svsm secret"


def test_bearer_token_works_without_the_cookie(kbs: LiveKbs, admin: AdminClient) -> None:
    admin.set_resource("default/key/one", b"by token")
    with guest(kbs) as client:
        client.attest()
        token = client.token
    with guest(kbs) as other:
        other.attest()  # its own key; the token below decides what is released
        response = httpx.get(
            f"{kbs.url}/kbs/v0/resource/default/key/one",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200
    assert set(response.json()) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    assert token is not None
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    response = httpx.get(
        f"{kbs.url}/kbs/v0/resource/default/key/one", headers={"Authorization": f"Bearer {forged}"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_a_client_pinned_to_another_key_refuses_the_kbs(kbs: LiveKbs, admin: AdminClient) -> None:
    impostor = "A" * 43
    with (
        KbsClient(
            kbs.url,
            SimulatorEvidence(SIMULATOR, {"measurement": MEASUREMENT}),
            kbs_key=impostor,
            retries=0,
        ) as client,
        pytest.raises(KbsIdentityError, match="another key"),
    ):
        client.attest()


def raw_auth(kbs: LiveKbs, tee: str = "snp") -> tuple[httpx.Client, str]:
    http = httpx.Client(base_url=kbs.url)
    response = http.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": tee, "extra-params": ""})
    assert response.status_code == 200, response.text
    assert "kbs-session-id" in response.cookies
    nonce = response.json()["nonce"]
    assert len(base64.b64decode(nonce)) == 32
    return http, nonce


def attestation(
    nonce: str, key: ec.EllipticCurvePrivateKey, *, bind_nonce: str | None = None
) -> dict[str, Any]:
    jwk = tee_jwk(key.public_key())
    report_data = trustee_digest(bind_nonce or nonce, jwk, "").ljust(64, b"\0")
    evidence = SimulatorEvidence(SIMULATOR, {"measurement": MEASUREMENT}).evidence(report_data)
    return {
        "init-data": None,
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    }


def problem(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/" + kind), body
    assert body["status"] == status
    assert "Traceback" not in response.text


def test_protocol_refusals_are_problem_documents(kbs: LiveKbs, admin: AdminClient) -> None:
    cases = 0
    with httpx.Client(base_url=kbs.url) as http:
        for body, status, kind in [
            (b"{not json", 400, "InvalidRequest"),
            (b'{"version": "0.3.0", "tee": "snp"}', 401, "ProtocolVersion"),
            (b'{"version": "0.4.0", "tee": "klingon"}', 400, "UnknownTee"),
            (b'{"version": "0.4.0", "tee": "tdx"}', 400, "UnsupportedTee"),
            (b'{"version": "0.4.0", "tee": "sample"}', 400, "UnsupportedTee"),
            (b"[]", 400, "InvalidRequest"),
            (b'{"version": 4, "tee": "snp"}', 400, "InvalidRequest"),
            (b'{"version": "0.4.0", "version": "0.4.0", "tee": "snp"}', 400, "InvalidRequest"),
        ]:
            problem(http.post("/kbs/v0/auth", content=body), status, kind)
            cases += 1
        problem(
            http.post("/kbs/v0/auth", content=b"x" * (kbs.config.max_body_bytes + 1)),
            413,
            "PayloadTooLarge",
        )
        problem(http.post("/kbs/v0/attest", json={}), 401, "MissingSession")
        problem(http.get("/kbs/v0/resource/a/b/c"), 401, "MissingSession")
        problem(http.get("/kbs/v0/resource/a/b/-x"), 400, "InvalidResourcePath")
        problem(http.get("/kbs/v0/cvmstore/ledger/v1?nonce=x"), 401, "MissingSession")
        problem(http.get("/nowhere"), 404, "NotFound")
        problem(http.delete("/kbs/v0/auth"), 405, "MethodNotAllowed")
        http.cookies.set("kbs-session-id", "0" * 32)
        problem(http.post("/kbs/v0/attest", json={}), 401, "InvalidSession")
        cases += 7
    key = ec.generate_private_key(ec.SECP256R1())
    http, nonce = raw_auth(kbs)
    try:
        problem(http.get("/kbs/v0/resource/a/b/c"), 401, "NotAttested")
        wrong = attestation(nonce, key)
        wrong["runtime-data"]["nonce"] = base64.b64encode(b"\0" * 32).decode()
        problem(http.post("/kbs/v0/attest", json=wrong), 401, "NonceMismatch")
        bad_key = attestation(nonce, key)
        bad_key["runtime-data"]["tee-pubkey"] = {
            "kty": "EC",
            "crv": "P-256",
            "x": "AA",
            "y": "AA",
            "alg": "ECDH-ES+A256KW",
        }
        problem(http.post("/kbs/v0/attest", json=bad_key), 400, "InvalidTeePublicKey")
        unbound = attestation(nonce, key, bind_nonce=base64.b64encode(b"\1" * 32).decode())
        problem(http.post("/kbs/v0/attest", json=unbound), 401, "AttestationFailed")
        init = attestation(nonce, key)
        init["init-data"] = {"format": "toml", "body": ""}
        problem(http.post("/kbs/v0/attest", json=init), 400, "InvalidRequest")
        assert http.post("/kbs/v0/attest", json=attestation(nonce, key)).status_code == 200
        problem(http.post("/kbs/v0/attest", json=attestation(nonce, key)), 401, "NonceReused")
        cases += 7
    finally:
        http.close()
    assert cases == 22


def test_sample_tee_only_when_enabled(tmp_path: Path, repository: Repository) -> None:
    with (
        live_kbs(tmp_path / "kbs", repository, allow_sample_tee=True) as kbs,
        AdminClient(kbs.url, kbs.admin_token) as admin,
    ):
        admin.set_resource("one/two/three", b"sample secret")
        with (
            KbsClient(kbs.url, SampleEvidence(), kbs_key=kbs.thumbprint, retries=0) as client,
            pytest.raises(KbsAuthError, match="does not accept TEE 'sample'"),
        ):
            client.attest()  # enabled in the configuration, but not in the policy
        admin.set_policy(b'tees = ["snp", "sample"]\n')
        with KbsClient(kbs.url, SampleEvidence(), kbs_key=kbs.thumbprint, retries=0) as client:
            client.attest()
            assert client.resource("one/two/three") == b"sample secret"


# ---------------------------------------------------------------------------- the ledger


def test_ledger_compare_and_swap_and_audit(kbs: LiveKbs, admin: AdminClient) -> None:
    admin.create_volume("vol1", POLICY)
    with guest(kbs) as client:
        client.attest()
        first = client.ledger_read("vol1")
        assert (first.version, first.generation, first.root) == (0, None, None)
        store = b"\x11" * 16
        a = client.ledger_advance("vol1", None, (0, b"\xaa" * 32), store)
        assert (a.version, a.generation, a.result) == (1, 0, "advanced")
        b = client.ledger_advance("vol1", (0, b"\xaa" * 32), (1, b"\xbb" * 32), store)
        assert (b.version, b.generation) == (2, 1)
        with pytest.raises(ForkError, match="generation 1"):
            client.ledger_advance("vol1", (0, b"\xaa" * 32), (1, b"\xcc" * 32), store)
        with pytest.raises(ForkError):
            client.ledger_advance("vol1", (1, b"\xbb" * 32), (2, b"\xcc" * 32), b"\x22" * 16)
    info = admin.volume("vol1")
    assert (info["version"], info["generation"], info["root"]) == (2, 1, "bb" * 32)
    outcomes = [entry["outcome"] for entry in info["audit"]]
    assert outcomes == ["conflict", "conflict", "advanced", "advanced"]


def test_ledger_needs_attestation_and_the_volume_policy(kbs: LiveKbs, admin: AdminClient) -> None:
    admin.create_volume("vol1", f'measurements = ["{OTHER_MEASUREMENT.hex()}"]')
    with guest(kbs) as client:
        with pytest.raises(KbsAuthError):
            client.ledger_read("vol1")  # never attested
        client.attest()
        with pytest.raises(KbsAuthError, match="403"):
            client.ledger_read("vol1")
        with pytest.raises(KbsAuthError, match="403"):
            client.resource("cvmstore/volume/vol1")
        with pytest.raises(ResourceNotFoundError):
            client.ledger_read("novolume")


def test_volume_root_secret_is_released_under_the_volume_policy(
    kbs: LiveKbs, admin: AdminClient
) -> None:
    admin.create_volume("vol1", POLICY)
    with guest(kbs) as a, guest(kbs) as b:
        a.attest()
        b.attest()
        secret = a.resource("cvmstore/volume/vol1")
        assert len(secret) == 32
        assert b.resource("cvmstore/volume/vol1") == secret


def test_a_replayed_ledger_answer_is_refused(
    kbs: LiveKbs, admin: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.create_volume("vol1", POLICY)
    with guest(kbs) as client:
        client.attest()
        recorded = client._http.get(
            "/kbs/v0/cvmstore/ledger/vol1", params={"nonce": "A" * 43}
        ).json()
        # A proxy answers every later read with the recorded (validly signed) answer.
        original = client._request

        def replaying(method: str, path: str, **kw: object) -> httpx.Response:
            response = original(method, path, **kw)  # type: ignore[arg-type]
            return httpx.Response(200, json=recorded, request=response.request)

        monkeypatch.setattr(client, "_request", replaying)
        with pytest.raises(KbsIdentityError, match="replayed"):
            client.ledger_read("vol1")


# ---------------------------------------------------------------------------- as an anchor


def test_kbs_anchor_detects_rollback_and_fork_of_a_store(kbs: LiveKbs, admin: AdminClient) -> None:
    admin.create_volume("vol1", POLICY)
    device = MemoryDevice(64)
    with guest(kbs) as client:
        client.attest()
        root_secret = client.resource("cvmstore/volume/vol1")
        anchor = KbsAnchor(client, "vol1")
        store = SecureStore.format(device, root_secret, anchor)
        store.write(0, b"\1" * 4096)
        store.commit()
        snapshot = device.image()
        store.write(0, b"\2" * 4096)
        store.commit()
        store.close()
        current = device.image()
        # The host restores the older image: the ledger knows better.
        with pytest.raises(RollbackError):
            SecureStore.open(MemoryDevice.from_image(snapshot), root_secret, anchor)
    # A clone: two guests open copies of one image; the second to commit is refused.
    with guest(kbs) as one, guest(kbs) as two:
        one.attest()
        two.attest()
        first = SecureStore.open(
            MemoryDevice.from_image(current), root_secret, KbsAnchor(one, "vol1")
        )
        second = SecureStore.open(
            MemoryDevice.from_image(current), root_secret, KbsAnchor(two, "vol1")
        )
        first.write(1, b"\3" * 4096)
        first.commit()
        second.write(1, b"\4" * 4096)
        with pytest.raises(ForkError):
            second.commit()
    assert admin.volume("vol1")["audit"][0]["outcome"] == "conflict"


def test_anchor_refuses_another_store(kbs: LiveKbs, admin: AdminClient) -> None:
    admin.create_volume("vol1", POLICY)
    with guest(kbs) as client:
        client.attest()
        secret = client.resource("cvmstore/volume/vol1")
        anchor = KbsAnchor(client, "vol1")
        SecureStore.format(MemoryDevice(64), secret, anchor).close()
        with pytest.raises(AnchorError):
            SecureStore.format(MemoryDevice(64), secret, anchor)


def test_evidence_digest_in_audit(kbs: LiveKbs, admin: AdminClient) -> None:
    admin.create_volume("vol1", POLICY)
    with guest(kbs) as client:
        client.attest()
        client.ledger_advance("vol1", None, (0, b"\xaa" * 32), b"\x11" * 16)
        digest = client.token_claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"][
            "evidence-sha384"
        ]
    assert admin.volume("vol1")["audit"][0]["evidence-sha384"] == digest
    assert len(bytes.fromhex(digest)) == hashlib.sha384().digest_size


def test_expired_sessions_and_tokens_are_refused(tmp_path: Path, repository: Repository) -> None:
    with (
        live_kbs(tmp_path / "kbs", repository, session_lifetime=0.2, token_lifetime=1) as kbs,
        AdminClient(kbs.url, kbs.admin_token) as admin,
    ):
        admin.add_reference(MEASUREMENT.hex())
        http, nonce = raw_auth(kbs)
        try:
            session = http.cookies["kbs-session-id"]
            http.cookies.clear()  # the jar would drop it itself; the server must refuse it too
            time.sleep(0.5)
            key = ec.generate_private_key(ec.SECP256R1())
            late = http.post(
                "/kbs/v0/attest",
                json=attestation(nonce, key),
                headers={"Cookie": f"kbs-session-id={session}"},
            )
            problem(late, 401, "SessionExpired")
        finally:
            http.close()
        with guest(kbs) as client:
            client.attest()
            token = client.token
            time.sleep(1.5)  # past the token's lifetime
            response = httpx.get(
                f"{kbs.url}/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {token}"}
            )
            problem(response, 401, "TokenInvalid")


def test_auth_is_rate_limited_per_client(tmp_path: Path, repository: Repository) -> None:
    with (
        live_kbs(tmp_path / "kbs", repository, auth_rate=0.01, auth_burst=3) as kbs,
        httpx.Client(base_url=kbs.url) as http,
    ):
        request = {"version": "0.4.0", "tee": "snp", "extra-params": ""}
        statuses = [http.post("/kbs/v0/auth", json=request).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        problem(http.post("/kbs/v0/auth", json=request), 429, "TooManyRequests")


def test_health_and_metrics(kbs: LiveKbs, admin: AdminClient) -> None:
    with httpx.Client(base_url=kbs.url) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        http.post("/kbs/v0/auth", json={"version": "0.1.0", "tee": "snp"})
        metrics = http.get("/metrics").text
    assert 'kbs_requests_total{endpoint="auth",status="401"} 1.0' in metrics


def test_a_retried_advance_that_already_landed_is_not_a_fork(
    kbs: LiveKbs, admin: AdminClient
) -> None:
    """The answer to a retry after a dropped connection holds exactly what was asked for."""
    admin.create_volume("vol1", POLICY)
    store = b"\x11" * 16
    with guest(kbs) as client:
        client.attest()
        first = client.ledger_advance("vol1", None, (0, b"\xaa" * 32), store)
        again = client.ledger_advance("vol1", None, (0, b"\xaa" * 32), store)  # the retry
        assert (again.version, again.generation, again.result) == (1, 0, "conflict")
        assert first.version == again.version
        with pytest.raises(ForkError):  # the same retry from another store is a fork
            client.ledger_advance("vol1", None, (0, b"\xaa" * 32), b"\x22" * 16)


def test_refusals_carry_their_http_headers(kbs: LiveKbs) -> None:
    with httpx.Client(base_url=kbs.url) as http:
        assert http.delete("/kbs/v0/auth").headers["allow"] == "POST"
        unauthorized = http.get("/kbs/v0/resource/a/b/c")
        assert unauthorized.status_code == 401
        assert unauthorized.headers["www-authenticate"].startswith("Bearer")


def test_a_read_answer_passed_off_as_an_advance_is_refused(
    kbs: LiveKbs, admin: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that saw the advance's nonce fetches a signed read with it and answers 200."""
    admin.create_volume("vol1", POLICY)
    with guest(kbs) as client:
        client.attest()
        original = client._request

        def swallow(method: str, path: str, **kw: object) -> httpx.Response:
            if method != "POST":
                return original(method, path, **kw)  # type: ignore[arg-type]
            nonce = json.loads(kw["content"])["nonce"]  # type: ignore[arg-type]
            return original("GET", path, params={"nonce": nonce})

        monkeypatch.setattr(client, "_request", swallow)
        with pytest.raises(KbsIdentityError, match="does not say it advanced"):
            client.ledger_advance("vol1", None, (0, b"\xaa" * 32), b"\x11" * 16)
    assert admin.volume("vol1")["generation"] is None  # the ledger never moved


def test_an_advance_needs_the_guests_mac_not_just_its_cookie(
    kbs: LiveKbs, admin: AdminClient
) -> None:
    """The cookie travels in the clear without TLS; the ledger key never does."""
    admin.create_volume("vol1", POLICY)
    with guest(kbs) as client:
        client.attest()
        stolen = client._http.cookies["kbs-session-id"]
        body = json.dumps(
            {
                "nonce": "A" * 43,
                "expected": None,
                "new": {"generation": 2**62, "root": "bb" * 32},
                "store-id": "11" * 16,
            }
        )
        with httpx.Client(base_url=kbs.url, headers={"Cookie": f"kbs-session-id={stolen}"}) as host:
            url = "/kbs/v0/cvmstore/ledger/vol1"
            problem(host.post(url, content=body), 401, "LedgerMacInvalid")
            forged = {"Cvmstore-Ledger-Mac": "A" * 43}
            problem(host.post(url, content=body, headers=forged), 401, "LedgerMacInvalid")
        client.ledger_advance("vol1", None, (0, b"\xaa" * 32), b"\x11" * 16)  # the guest can
    info = admin.volume("vol1")
    assert (info["version"], info["generation"]) == (1, 0)


def test_evidence_with_too_many_certificates_is_refused_before_verifying(
    kbs: LiveKbs, admin: AdminClient
) -> None:
    http, nonce = raw_auth(kbs)
    try:
        body = attestation(nonce, ec.generate_private_key(ec.SECP256R1()))
        evidence = body["tee-evidence"]["primary_evidence"]
        evidence["cert_chain"] = evidence["cert_chain"] * 3  # 9 certificates
        problem(http.post("/kbs/v0/attest", json=body), 400, "InvalidEvidence")
    finally:
        http.close()


def test_the_auth_rate_limit_ignores_forwarded_for(tmp_path: Path, repository: Repository) -> None:
    with (
        live_kbs(tmp_path / "kbs", repository, auth_rate=0.01, auth_burst=2) as kbs,
        httpx.Client(base_url=kbs.url) as http,
    ):
        request = {"version": "0.4.0", "tee": "snp"}
        statuses = [
            http.post(
                "/kbs/v0/auth", json=request, headers={"X-Forwarded-For": f"10.0.0.{n}"}
            ).status_code
            for n in range(4)
        ]
    assert statuses == [200, 200, 429, 429]
