"""A client written only from docs/kbs-api.md talks to a real KBS (SQLite and PostgreSQL).

`independent_kbs_client` imports nothing from `cvmstore.kbs` or `cvmstore.guest`. The admin
side uses raw httpx as the page documents it. The only project code used is the attestation
layer, for evidence: the simulator signs a report for the REPORT_DATA the independent client
computed, and `trustee_evidence` / `aproxy_evidence` wrap it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwcrypto import jwe as jwcrypto_jwe  # type: ignore[import-untyped]  # test-only, no stubs
from jwcrypto import jwk as jwcrypto_jwk

from cvmstore.attest.evidence import aproxy_evidence, cert_table_for, trustee_evidence
from cvmstore.kbs.repository import Repository
from tests.interop.independent_kbs_client import (
    CONCAT_KDF_OTHER_INFO,
    JWE_MEMBERS,
    ClientRefusal,
    IndependentKbsClient,
    KbsProblem,
    LedgerConflict,
    PinMismatch,
    Session,
    TeeKey,
    b64url_decode,
    b64url_encode,
    decrypt_jwe,
    jwk_thumbprint,
    ledger_mac,
    ledger_mac_input,
    sample_report_data,
    svsm_report_data,
    trustee_report_data,
    verify_jws,
    verify_resource_signature,
)
from tests.kbs.live import MEASUREMENT, SIMULATOR, LiveKbs, live_kbs

SECRET = b"the disk key, 32 bytes long!!!!!"
RESOURCE = "default/key/disk"
VOLUME = "vtpm"
KEY_KINDS = ("P-256", "P-384", "P-521", "RSA-OAEP-256")


def make_key(kind: str) -> TeeKey:
    return TeeKey.rsa(2048) if kind == "RSA-OAEP-256" else TeeKey.ec(kind)


def snp_evidence(report_data: bytes, shape: str = "trustee") -> dict[str, Any]:
    """Signed evidence for `report_data`, made exactly as tests/kbs/live.py's KBS trusts it."""
    report = SIMULATOR.report(report_data, measurement=MEASUREMENT)
    if shape == "aproxy":
        return aproxy_evidence(report, cert_table_for(SIMULATOR.chain()))
    return trustee_evidence(report, SIMULATOR.chain())


@dataclass
class Kbs:
    """A live KBS, set up through the admin API, and the thumbprint it told the admin."""

    live: LiveKbs
    pin: str
    admin: httpx.Client

    def client(self, pin: str | None = None) -> IndependentKbsClient:
        return IndependentKbsClient(self.live.url, self.pin if pin is None else pin)

    def attested(
        self,
        client: IndependentKbsClient,
        kind: str = "P-256",
        *,
        binding: str = "trustee",
        shape: str = "trustee",
        additional_evidence: str = "",
    ) -> Session:
        session = client.auth(make_key(kind))
        data = session.report_data("svsm" if binding == "svsm" else "trustee", additional_evidence)
        client.attest(
            session,
            snp_evidence(data, shape),
            binding="svsm" if binding == "svsm" else "trustee",
            additional_evidence=additional_evidence,
        )
        return session


def admin_json(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


@contextmanager
def running_kbs(data_dir: Path, repository: Repository, **settings: object) -> Iterator[Kbs]:
    """A live KBS set up through the documented admin API: reference, resource, volume."""
    with live_kbs(data_dir, repository, **settings) as live:
        headers = {"Authorization": f"Bearer {live.admin_token}"}
        with httpx.Client(base_url=live.url, headers=headers, timeout=60) as admin:
            key = admin_json(admin.get("/admin/v0/token-key"), 200)
            # The admin reads the thumbprint; the guest pins it. Both must agree with RFC 7638.
            assert key["thumbprint"] == jwk_thumbprint(key["jwk"]) == live.thumbprint
            assert key["jwk"]["alg"] == "ES256"
            assert admin_json(
                admin.post("/admin/v0/references", json={"measurement": MEASUREMENT.hex()}), 201
            ) == {"added": True}
            admin_json(
                admin.put(
                    f"/admin/v0/resource/{RESOURCE}",
                    content=SECRET,
                    headers={"Content-Type": "application/octet-stream"},
                ),
                204,
            )
            volume = admin_json(
                admin.post("/admin/v0/volumes", json={"name": VOLUME, "policy": "{}"}), 201
            )
            assert volume["resource"] == f"cvmstore/volume/{VOLUME}"
            assert volume["version"] == 0
            assert volume["generation"] is None
            assert volume["policy"]["bindings"] == ["trustee"]
            yield Kbs(live, key["thumbprint"], admin)


@pytest.fixture
def kbs(tmp_path: Path, repository: Repository) -> Iterator[Kbs]:
    with running_kbs(tmp_path / "kbs", repository) as running:
        yield running


# ---------------------------------------------------------------- offline: the page's vectors


def test_worked_example_bindings() -> None:
    """ "A worked example" of "REPORT_DATA bindings", recomputed by this client's code."""
    nonce = "JrwafR8Y9cvXi+aCm/XtHE8r5psffoYy760uwu29KPM="
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ECDH-ES+A256KW",
        "x": "QHwKmSLbPaZKSsyDdJTcCFWGRUlzrfEEbg6VvO-56G4",
        "y": "FLiU9xqWXV2aeSshTF565yZxZf-1q22zAp1eKdsULLU",
    }
    assert base64.b64decode(nonce).hex() == (
        "26bc1a7d1f18f5cbd78be6829bf5ed1c4f2be69b1f7e8632efad2ec2edbd28f3"
    )
    assert trustee_report_data(nonce, jwk).hex() == (
        "f90228aa33ba59ad00a98d013e69d47bf572fcb4868ea370e6a0a6d39c932f50"
        "bc7db83fb8730e76c1e92ed55c5aed57" + "00" * 16
    )
    assert sample_report_data(nonce, jwk) == (
        "+QIoqjO6Wa0AqY0BPmnUe/Vy/LSGjqNw5qCm05yTL1C8fbg/uHMOdsHpLtVcWu1X"
    )
    assert b64url_decode(jwk["x"]).hex() == (
        "407c0a9922db3da64a4acc837494dc085586454973adf1046e0e95bcefb9e86e"
    )
    assert svsm_report_data(nonce, jwk).hex() == (
        "b8530295283dfa510b67edad38aa21200ea19b04f44982d26d10726f07e2aa52"
        "c413d62b09fbf10fc60b197890918e28061f444150c46775e68d78aa472cf1be"
    )
    with pytest.raises(ValueError, match="EC keys only"):
        svsm_report_data(nonce, TeeKey.rsa().jwk)


def test_worked_example_ledger_mac() -> None:
    """ "A worked example" of "The `Cvmstore-Ledger-Mac` header", recomputed by this client."""
    key = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    path = "/kbs/v0/cvmstore/ledger/vtpm"
    body = (
        b'{"nonce":"bm9uY2Ugb2YgdGhlIGd1ZXN0IGZvciB0aGlzIHJlYWQ","expected":null,'
        b'"new":{"generation":1,"root":"' + b"5a" * 32 + b'"},"store-id":"' + b"c0" * 16 + b'"}'
    )
    assert len(body) == 214
    mac_input = ledger_mac_input(path, body)
    assert len(mac_input) == 248
    assert mac_input.hex().startswith(
        "504f5354202f6b62732f76302f63766d73746f72652f6c65646765722f7674706d0a7b22"
    )
    assert ledger_mac(key, path, body) == "E0IR91bulJwuga3taQx6-O6a1JBdUGGCI__2FFH2oWw"
    assert b64url_decode(ledger_mac(key, path, body)).hex() == (
        "134211f756ee949c2e81aded690c7af8ee9ad4905d50618223fff61451f6a16c"
    )


def test_concat_kdf_other_info_is_rfc7518() -> None:
    """The page's OtherInfo hex is RFC 7518 §4.6.2's for ECDH-ES+A256KW with empty parties."""
    alg = b"ECDH-ES+A256KW"
    built = len(alg).to_bytes(4, "big") + alg + bytes(4) + bytes(4) + (256).to_bytes(4, "big")
    assert built == CONCAT_KDF_OTHER_INFO


def test_base64url_is_canonical_and_unpadded() -> None:
    assert b64url_encode(b"\xff\xfe") == "__4"
    assert b64url_decode("__4") == b"\xff\xfe"
    for bad in ("__4=", "__5", "a", "ab+/", "ab cd"):
        with pytest.raises(ClientRefusal):
            b64url_decode(bad)


def test_a_forged_jws_under_another_key_is_refused() -> None:
    """A host that signs with its own key (in a well-formed header) fails the pin."""
    forger = ec.generate_private_key(ec.SECP256R1())
    numbers = forger.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
        "alg": "ES256",
        "use": "sig",
    }
    header = {"alg": "ES256", "typ": "JWT", "kid": jwk_thumbprint(jwk), "jwk": jwk}
    claims = {"iss": "cvmstore-kbs", "iat": int(time.time())}
    signing_input = ".".join(b64url_encode(json.dumps(part).encode()) for part in (header, claims))
    r, s = decode_dss_signature(forger.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    compact = f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    assert verify_jws(compact, jwk_thumbprint(jwk)) == claims  # well formed: only the pin fails
    with pytest.raises(PinMismatch):
        verify_jws(compact, b64url_encode(bytes(32)))


# ---------------------------------------------------------------- RCAR against a live KBS


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_auth_attest_resource(kbs: Kbs, kind: str) -> None:
    with kbs.client() as client:
        session = client.auth(make_key(kind))
        # "The KBS sets the cookie as kbs-session-id=<id>; HttpOnly; Max-Age=<seconds>; Path=/;
        # SameSite=strict" and /auth for session_lifetime (300 by default).
        assert session.cookie_attributes == {
            "httponly": "",
            "max-age": "300",
            "path": "/",
            "samesite": "strict",
        }
        report_data = session.report_data("trustee")
        assert report_data[48:] == bytes(16)
        evidence = snp_evidence(report_data)
        token = client.attest(session, evidence)
        assert session.token == token
        # "cvmstore-ledger-key": 32 bytes, decrypted like a resource with this key kind.
        assert session.ledger_key is not None
        assert len(session.ledger_key) == 32
        claims = session.claims
        assert claims["exp"] == claims["iat"] + 300
        assert claims["eat_profile"] == "tag:github.com,2024:confidential-containers/Trustee"
        annotated = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
        assert annotated["init_data"] is None
        assert annotated["snp"]["measurement"] == MEASUREMENT.hex()
        assert annotated["snp"]["vmpl"] == 0
        raw_report = base64.b64decode(
            aproxy_evidence(SIMULATOR.report(report_data, measurement=MEASUREMENT))["snp-report"]
        )
        assert annotated["evidence-sha384"] == hashlib.sha384(raw_report).hexdigest()

        by_token = client.resource(session, RESOURCE, use="token")
        by_cookie = client.resource(session, RESOURCE, use="cookie")
        assert by_token.plaintext == by_cookie.plaintext == SECRET
        # "Every answer uses a fresh CEK, IV and (for EC) ephemeral key."
        assert by_token.jwe["iv"] != by_cookie.jwe["iv"]
        assert by_token.signature_claims["resource"] == RESOURCE
        header = json.loads(b64url_decode(by_token.jwe["protected"]))
        if kind == "RSA-OAEP-256":
            assert header == {"alg": "RSA-OAEP-256", "enc": "A256GCM"}
        else:
            assert set(header) == {"alg", "enc", "epk"}
            assert header["epk"]["crv"] == kind
            assert by_token.jwe["protected"] == b64url_encode(
                json.dumps(header, separators=(",", ":")).encode()
            )

        # A second opinion on the JWE: jwcrypto opens it with the same private key.
        second = jwcrypto_jwe.JWE()
        second.deserialize(
            json.dumps(by_token.jwe), key=jwcrypto_jwk.JWK.from_pyca(session.key.private)
        )
        assert second.payload == SECRET

        # A wrong private key cannot open it; a tampered JWE fails the signature check.
        with pytest.raises(ClientRefusal):
            decrypt_jwe(by_token.jwe, make_key(kind))
        for member in JWE_MEMBERS:
            tampered = dict(by_token.jwe)
            text = tampered[member]
            tampered[member] = ("A" if text[0] != "A" else "B") + text[1:]
            with pytest.raises(ClientRefusal, match="jwe-sha256"):
                verify_resource_signature(
                    _signature_of(client, session), RESOURCE, tampered, kbs.pin
                )


def _signature_of(client: IndependentKbsClient, session: Session) -> str:
    response = httpx.get(
        f"{client.base_url}/kbs/v0/resource/{RESOURCE}",
        headers={"Authorization": f"Bearer {session.token}"},
    )
    assert response.status_code == 200
    return response.headers["Cvmstore-Signature"]


def test_additional_evidence_is_hashed_as_sent(kbs: Kbs) -> None:
    extra = '{"vtpm": "not looked at, only hashed"}'
    with kbs.client() as client:
        session = kbs.attested(client, additional_evidence=extra)
        assert client.resource(session, RESOURCE).plaintext == SECRET
        # Bound with "" instead: REPORT_DATA no longer matches.
        other = client.auth(make_key("P-256"))
        with pytest.raises(KbsProblem) as refused:
            client.attest(
                other, snp_evidence(other.report_data("trustee")), additional_evidence=extra
            )
        assert (refused.value.status, refused.value.kind) == (401, "AttestationFailed")
        assert refused.value.check == "report-data"


def test_documented_refusals(kbs: Kbs) -> None:
    with kbs.client() as client:
        session = kbs.attested(client)
        # "A session can be attested once."
        with pytest.raises(KbsProblem) as again:
            client.attest(session, snp_evidence(session.report_data()))
        assert (again.value.status, again.value.kind) == (401, "NonceReused")
        fresh = client.auth(make_key("P-256"))
        with pytest.raises(KbsProblem) as not_attested:
            client.resource(fresh, RESOURCE, use="cookie")
        assert (not_attested.value.status, not_attested.value.kind) == (401, "NotAttested")
        fresh.nonce = base64.b64encode(secrets.token_bytes(32)).decode()
        with pytest.raises(KbsProblem) as mismatch:
            client.attest(fresh, snp_evidence(fresh.report_data()))
        assert (mismatch.value.status, mismatch.value.kind) == (401, "NonceMismatch")
        with pytest.raises(KbsProblem) as missing:
            client.resource(session, "default/key/none")
        assert (missing.value.status, missing.value.kind) == (404, "ResourceNotFound")
    old = httpx.post(f"{kbs.live.url}/kbs/v0/auth", json={"version": "0.3.0", "tee": "snp"})
    assert old.status_code == 401
    assert old.headers["content-type"].startswith("application/problem+json")
    assert old.json()["title"] == "ProtocolVersion"


# ---------------------------------------------------------------- the ledger


def test_ledger_read_advance_and_conflict(kbs: Kbs) -> None:
    store_id = secrets.token_hex(16)
    root1, root2, root_fork = (secrets.token_hex(32) for _ in range(3))
    with kbs.client() as client:
        session = kbs.attested(client)
        root_secret = client.resource(session, f"cvmstore/volume/{VOLUME}")
        assert len(root_secret.plaintext) == 32

        first = client.ledger_read(session, VOLUME)
        assert (first.version, first.generation, first.root, first.store_id) == (
            0,
            None,
            None,
            None,
        )
        again = client.ledger_read(session, VOLUME, use="cookie")
        assert again.nonce != first.nonce

        one = client.ledger_advance(
            session, VOLUME, expected=None, new=(1, root1), store_id=store_id
        )
        assert (one.version, one.generation, one.root) == (1, 1, root1)
        two = client.ledger_advance(
            session, VOLUME, expected=(1, root1), new=(2, root2), store_id=store_id
        )
        assert (two.version, two.generation, two.root, two.store_id) == (2, 2, root2, store_id)
        assert client.ledger_read(session, VOLUME).root == root2

        # A stale copy of the image advances from generation 1 again: a fork.
        with pytest.raises(LedgerConflict) as fork:
            client.ledger_advance(
                session, VOLUME, expected=(1, root1), new=(2, root_fork), store_id=store_id
            )
        assert fork.value.status == 409
        assert fork.value.kind == "LedgerConflict"
        current = fork.value.answer
        assert (current.version, current.generation, current.root) == (2, 2, root2)
        assert current.store_id == store_id
        # "expected is null" while something is anchored is a conflict too.
        with pytest.raises(LedgerConflict):
            client.ledger_advance(session, VOLUME, expected=None, new=(9, root1), store_id=store_id)
        # The right state but another store-id: the image is not this volume.
        with pytest.raises(LedgerConflict):
            client.ledger_advance(
                session, VOLUME, expected=(2, root2), new=(3, root1), store_id="aa" * 16
            )
        # new.generation must be greater than expected.generation: 400, not 409.
        with pytest.raises(KbsProblem) as backwards:
            client.ledger_advance(
                session, VOLUME, expected=(2, root2), new=(2, root1), store_id=store_id
            )
        assert (backwards.value.status, backwards.value.kind) == (400, "InvalidRequest")

    volume = admin_json(kbs.admin.get(f"/admin/v0/volumes/{VOLUME}"), 200)
    outcomes = [entry["outcome"] for entry in volume["audit"]]
    assert outcomes == ["conflict", "conflict", "conflict", "advanced", "advanced"]
    evidence_hash = session.claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"][
        "evidence-sha384"
    ]
    assert {entry["evidence-sha384"] for entry in volume["audit"]} == {evidence_hash}
    assert volume["audit"][0]["from-version"] == volume["audit"][0]["to-version"] == 2
    assert volume["audit"][-1]["from-generation"] is None
    assert volume["audit"][-1]["to-generation"] == 1


def test_an_advance_needs_the_ledger_mac(kbs: Kbs) -> None:
    """A credential alone (which a host sees without TLS) cannot advance the ledger."""
    path = f"/kbs/v0/cvmstore/ledger/{VOLUME}"
    store_id, root1 = secrets.token_hex(16), secrets.token_hex(32)
    body = {
        "nonce": b64url_encode(secrets.token_bytes(32)),
        "expected": None,
        "new": {"generation": 1, "root": root1},
        "store-id": store_id,
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    with kbs.client() as client:
        session = kbs.attested(client)
        assert session.ledger_key is not None
        other = kbs.attested(client)  # each attestation has its own ledger key
        assert other.ledger_key is not None
        assert other.ledger_key != session.ledger_key
        bearer = {"Authorization": f"Bearer {session.token}", "Content-Type": "application/json"}
        cookie = {"Cookie": f"kbs-session-id={session.cookie}", "Content-Type": "application/json"}
        refusals = {
            "no MAC, token": (bearer, raw),
            "no MAC, cookie": (cookie, raw),
            "a guessed MAC": ({**bearer, "Cvmstore-Ledger-Mac": "A" * 43}, raw),
            "another session's key": (
                {**bearer, "Cvmstore-Ledger-Mac": ledger_mac(other.ledger_key, path, raw)},
                raw,
            ),
            "another volume's path": (
                {
                    **bearer,
                    "Cvmstore-Ledger-Mac": ledger_mac(
                        session.ledger_key, "/kbs/v0/cvmstore/ledger/other", raw
                    ),
                },
                raw,
            ),
            # The MAC is over the bytes sent: the same JSON spaced differently does not match.
            "the body re-serialized": (
                {**bearer, "Cvmstore-Ledger-Mac": ledger_mac(session.ledger_key, path, raw)},
                json.dumps(body).encode(),
            ),
            "padded base64url": (
                {**bearer, "Cvmstore-Ledger-Mac": ledger_mac(session.ledger_key, path, raw) + "="},
                raw,
            ),
        }
        for name, (headers, content) in refusals.items():
            response = httpx.post(f"{kbs.live.url}{path}", headers=headers, content=content)
            assert response.status_code == 401, name
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["title"] == "LedgerMacInvalid", name
            assert response.headers["www-authenticate"].startswith("Bearer"), name
        assert client.ledger_read(session, VOLUME).version == 0  # nothing moved

        # The same request with the session's own MAC lands.
        mac = ledger_mac(session.ledger_key, path, raw)
        landed = httpx.post(
            f"{kbs.live.url}{path}", headers={**bearer, "Cvmstore-Ledger-Mac": mac}, content=raw
        )
        assert landed.status_code == 200, landed.text
        # And the client does the same by itself, in the other session.
        two = client.ledger_advance(
            other,
            VOLUME,
            expected=(1, root1),
            new=(2, secrets.token_hex(32)),
            store_id=store_id,
        )
        assert (two.version, two.generation, two.result) == (2, 2, "advanced")
    audit = admin_json(kbs.admin.get(f"/admin/v0/volumes/{VOLUME}"), 200)["audit"]
    assert [entry["outcome"] for entry in audit] == ["advanced", "advanced"]  # 401s leave none


def test_a_retried_advance_that_landed_is_accepted(kbs: Kbs) -> None:
    """ "What a guest accepts": a 409 that holds exactly the requested state is our advance."""
    store_id, root1, root2 = secrets.token_hex(16), secrets.token_hex(32), secrets.token_hex(32)
    nonce = b64url_encode(secrets.token_bytes(32))
    with kbs.client() as client:
        session = kbs.attested(client)
        first = client.ledger_advance(
            session, VOLUME, expected=None, new=(1, root1), store_id=store_id, nonce=nonce
        )
        assert first.result == "advanced"
        # The answer was lost; the guest sends the very same request again.
        retried = client.ledger_advance(
            session, VOLUME, expected=None, new=(1, root1), store_id=store_id, nonce=nonce
        )
        assert (retried.result, retried.version, retried.generation, retried.root) == (
            "conflict",
            1,
            1,
            root1,
        )
        # A 409 holding anything else is a fork, as before.
        with pytest.raises(LedgerConflict):
            client.ledger_advance(session, VOLUME, expected=None, new=(1, root2), store_id=store_id)


def test_a_read_answer_passed_off_as_an_advance_is_refused(
    kbs: Kbs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that sees the advance's nonce drops it and answers with a signed read."""
    with kbs.client() as client:
        session = kbs.attested(client)
        original = client._send

        def host(method: str, path: str, **kwargs: Any) -> httpx.Response:
            if method != "POST":
                return original(method, path, **kwargs)
            nonce = json.loads(kwargs["content"])["nonce"]
            credential = {"Authorization": kwargs["headers"]["Authorization"]}
            return original("GET", path, params={"nonce": nonce}, headers=credential)

        monkeypatch.setattr(client, "_send", host)
        with pytest.raises(ClientRefusal, match="result is 'current'"):
            client.ledger_advance(
                session, VOLUME, expected=None, new=(1, "11" * 16), store_id="22" * 16
            )
        monkeypatch.undo()
        assert client.ledger_read(session, VOLUME).generation is None  # it never moved


# ---------------------------------------------------------------- the svsm binding


@pytest.mark.parametrize("kind", ["P-521", "P-256"])
def test_svsm_binding_with_aproxy_evidence(kbs: Kbs, kind: str) -> None:
    with kbs.client() as client:
        # Off by default: the same evidence is refused as a report-data mismatch.
        refused = client.auth(make_key(kind))
        with pytest.raises(KbsProblem) as off:
            client.attest(
                refused, snp_evidence(refused.report_data("svsm"), "aproxy"), binding="svsm"
            )
        assert (off.value.status, off.value.kind, off.value.check) == (
            401,
            "AttestationFailed",
            "report-data",
        )

        policies = admin_json(
            kbs.admin.put(
                "/admin/v0/policy", content=json.dumps({"bindings": ["trustee", "svsm"]})
            ),
            200,
        )
        assert policies["attestation-policy"]["bindings"] == ["trustee", "svsm"]
        assert policies["default"] is False

        session = kbs.attested(client, kind, binding="svsm", shape="aproxy")
        annotated = session.claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
        assert annotated["binding"] == "svsm"
        # "evidence-sha384" is of the binary report in aproxy's shape too (signing is
        # deterministic, so the simulator gives the same bytes again).
        report = SIMULATOR.report(session.report_data("svsm"), measurement=MEASUREMENT)
        raw_report = base64.b64decode(aproxy_evidence(report)["snp-report"])
        assert annotated["evidence-sha384"] == hashlib.sha384(raw_report).hexdigest()
        assert client.resource(session, RESOURCE).plaintext == SECRET
        # The trustee binding and Trustee's evidence shape still work under this policy.
        trustee = kbs.attested(client, kind)
        assert client.resource(trustee, RESOURCE).plaintext == SECRET

        # The volume's policy was made with the default bindings: it refuses this session.
        with pytest.raises(KbsProblem) as denied:
            client.ledger_read(session, VOLUME)
        assert (denied.value.status, denied.value.kind) == (403, "PolicyDeny")
        admin_json(
            kbs.admin.put(
                f"/admin/v0/resource-policy/cvmstore/volume/{VOLUME}",
                content=json.dumps({"bindings": ["svsm"]}),
            ),
            200,
        )
        assert client.ledger_read(session, VOLUME).version == 0
        assert len(client.resource(session, f"cvmstore/volume/{VOLUME}").plaintext) == 32
        with pytest.raises(KbsProblem) as trustee_denied:
            client.ledger_read(trustee, VOLUME)
        assert trustee_denied.value.status == 403


# ---------------------------------------------------------------- pinning


def test_wrong_pin_is_detected(kbs: Kbs) -> None:
    wrong = b64url_encode(hashlib.sha256(b"some other KBS").digest())
    with kbs.client(wrong) as forged, kbs.client() as honest:
        # The token itself: the KBS issued it, but not under the pinned key.
        session = forged.auth(make_key("P-384"))
        with pytest.raises(PinMismatch):
            forged.attest(session, snp_evidence(session.report_data()))
        assert session.token is None

        # A session attested with the right pin; the wrong-pin client then refuses every
        # signed answer it gets with it.
        good = kbs.attested(honest, "P-384")
        with pytest.raises(PinMismatch):
            forged.resource(good, RESOURCE)
        with pytest.raises(PinMismatch):
            forged.ledger_read(good, VOLUME)
        with pytest.raises(PinMismatch):
            forged.ledger_advance(
                good, VOLUME, expected=None, new=(1, "11" * 16), store_id="22" * 16
            )
        # The advance did happen on the server; the honest client sees it and the stale retry
        # conflicts, and the wrong pin also refuses the conflict's answer.
        assert honest.ledger_read(good, VOLUME).generation == 1
        with pytest.raises(PinMismatch):
            forged.ledger_advance(
                good, VOLUME, expected=None, new=(1, "11" * 16), store_id="22" * 16
            )
        assert honest.resource(good, RESOURCE).plaintext == SECRET


# ---------------------------------------------------------------- lifetimes and HEAD


def test_cookie_and_token_lifetimes_follow_the_configuration(
    tmp_path: Path, repository: Repository
) -> None:
    """/auth sets the cookie for session_lifetime, /attest for token_lifetime = exp - iat."""
    with (
        running_kbs(
            tmp_path / "kbs", repository, session_lifetime=200, token_lifetime=120
        ) as running,
        running.client() as client,
    ):
        session = client.auth(make_key("P-256"))
        assert session.cookie_attributes["max-age"] == "200"
        first_cookie = session.cookie
        client.attest(session, snp_evidence(session.report_data()))
        assert session.cookie == first_cookie  # "sets it again": the same session id
        assert session.cookie_attributes["max-age"] == "120"
        assert session.claims["exp"] - session.claims["iat"] == 120


def test_head_on_the_ledger_read(kbs: Kbs) -> None:
    with kbs.client() as client:
        session = kbs.attested(client)
        url = f"{kbs.live.url}/kbs/v0/cvmstore/ledger/{VOLUME}"
        params = {"nonce": b64url_encode(secrets.token_bytes(32))}
        headers = {"Authorization": f"Bearer {session.token}"}
        assert httpx.get(url, params=params, headers=headers).status_code == 200
        params = {"nonce": b64url_encode(secrets.token_bytes(32))}
        assert httpx.head(url, params=params, headers=headers).status_code == 200
