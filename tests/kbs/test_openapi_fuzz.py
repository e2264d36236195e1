"""Schemathesis against the KBS app in process: no 5xx, and every answer as the document says.

The cases come from `openapi_document()` (the same dict GET /kbs/v0/openapi.json serves; the
document tests check that) and go to one ASGI app over SQLite in a temporary directory. The
checks: not_a_server_error, status_code_conformance, content_type_conformance,
response_schema_conformance and response_headers_conformance (the Set-Cookie, Retry-After and
Cvmstore-Signature headers). Each problem document is checked down to its kind: the document
lists, per status, the `title`s the code may answer.

Four runs: guest endpoints with no credentials; /attest inside a fresh session; the resource
and ledger endpoints with a valid attestation token (a `sample` TEE session, so that policy,
volume, nonce and compare-and-swap paths are reached; each ledger advance carries a valid
Cvmstore-Ledger-Mac under the session's ledger key, computed over the exact body bytes sent);
the admin API with a valid admin token (and without one). Generation is deterministic (the
`ci` hypothesis profile derandomizes; so does schemathesis's `deterministic`) and bounded by
the profile's max_examples.

At the end, requests the generator cannot make (JSON escapes of lone surrogates; a NUL on
PostgreSQL), each a 500 once, now refused with a 4xx; and ledger advances without a valid MAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpx
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import settings
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

from cvmstore.kbs.app import SESSION_COOKIE, create_app
from cvmstore.kbs.binding import trustee_digest
from cvmstore.kbs.config import PROTOCOL_VERSION, KbsConfig
from cvmstore.kbs.jose import b64url_encode, jwe_decrypt, tee_jwk
from cvmstore.kbs.openapi import openapi_document
from cvmstore.kbs.problems import PROBLEM_CONTENT_TYPE
from cvmstore.kbs.server import build_service, new_admin_token
from cvmstore.kbs.service import KbsService
from cvmstore.kbs.storage import open_repository
from tests.kbs.support import make_repository

#: Fuzzing examples per operation and run: the `ci` profile's bound (60) capped at 25, so the
#: file stays well under a minute; a larger profile (`deep`) is taken as it is.
_PROFILE_EXAMPLES = settings().max_examples
MAX_EXAMPLES = min(_PROFILE_EXAMPLES, 25) if _PROFILE_EXAMPLES <= 60 else _PROFILE_EXAMPLES


TestFunction = Callable[..., None]


def load(*, coverage: bool, max_examples: int) -> BaseSchema:
    """The document as schemathesis sees it: positive and negative cases, deterministic."""
    config = SchemathesisConfig.from_dict(
        {
            "generation": {"mode": "all", "deterministic": True, "max-examples": max_examples},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": coverage},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
        }
    )
    return schemathesis.openapi.from_dict(openapi_document(), config=config)


def cases(schema: BaseSchema) -> Callable[[TestFunction], TestFunction]:
    """`schema.parametrize()`, typed: one pytest item per operation, `case` generated."""
    decorator: Callable[[TestFunction], TestFunction] = schema.parametrize()
    return decorator


SCHEMA = load(coverage=True, max_examples=MAX_EXAMPLES)
#: Without a token every admin request is the same 401: a few cases per operation suffice.
LIGHT = load(coverage=False, max_examples=5)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: (run, operation, status, problem kind) of every case sent: test_fuzz_case_count reports them.
CASES: Counter[tuple[str, str, int, str]] = Counter()

SAMPLE_POLICY = b'tees = ["sample"]\n'
TOKEN_RUN = "guest, attestation token"
LEDGER_ADVANCE = "POST /kbs/v0/cvmstore/ledger/{volume}"
LEDGER_MAC_HEADER = "Cvmstore-Ledger-Mac"
#: Answers past the first checks that a run must reach on an operation (when it ran).
DEEP = [
    (TOKEN_RUN, "GET /kbs/v0/resource/{repository}/{type}/{tag}", 200),
    (TOKEN_RUN, "GET /kbs/v0/cvmstore/ledger/{volume}", 200),
    (TOKEN_RUN, LEDGER_ADVANCE, 200),
    (TOKEN_RUN, LEDGER_ADVANCE, 409),
    ("attest, fresh session", "POST /kbs/v0/attest", 200),
]


@dataclass
class Kbs:
    app: Starlette
    service: KbsService
    admin_token: str
    attestation_token: str
    ledger_key: bytes


def attest_sample(service: KbsService) -> tuple[str, bytes]:
    """A token and its ledger key for a `sample` TEE session (the service's calls, no HTTP).

    The ledger key comes as a JWE to the session's TEE key: only its private half opens it.
    """
    session, challenge = service.auth({"version": PROTOCOL_VERSION, "tee": "sample"})
    tee_key = ec.generate_private_key(ec.SECP256R1())
    jwk = tee_jwk(tee_key.public_key())
    digest = trustee_digest(challenge["nonce"], jwk, "")
    token, _, wrapped_ledger_key = service.attest(
        session.session_id,
        {
            "runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": jwk},
            "tee-evidence": {
                "primary_evidence": {"svn": 1, "report_data": base64.b64encode(digest).decode()},
                "additional_evidence": "",
            },
        },
    )
    return token, jwe_decrypt(wrapped_ledger_key, tee_key)


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kbs]:
    data_dir: Path = tmp_path_factory.mktemp("kbs")
    # The token must outlive a long soak (the `deep` profile runs for many minutes).
    config = KbsConfig(
        data_dir=data_dir, allow_sample_tee=True, auth_burst=1_000_000, token_lifetime=86_400
    )
    repository = open_repository(f"sqlite:///{data_dir / 'kbs.db'}")
    service = build_service(config, repository=repository)
    try:
        admin_token = new_admin_token(repository, "test")
        # Something for the guest runs to find, at the paths the document's examples name:
        # the resource default/sample/test and the volume vtpm, both readable by `sample`.
        service.set_policy(SAMPLE_POLICY)
        service.set_resource("default/sample/test", b"the secret")
        service.create_volume("vtpm", SAMPLE_POLICY.decode())
        token, ledger_key = attest_sample(service)
        yield Kbs(create_app(service), service, admin_token, token, ledger_key)
    finally:
        repository.close()


def call(case: Any, kbs: Kbs, run: str, **kwargs: Any) -> None:
    response = case.call_and_validate(app=kbs.app, checks=CHECKS, **kwargs)
    kind = ""
    if response.headers.get("content-type", [""])[0] == PROBLEM_CONTENT_TYPE:
        kind = response.json()["title"]
    CASES[run, case.operation.label, response.status_code, kind] += 1


@cases(SCHEMA.include(path_regex="^/(kbs/v0|healthz|metrics)"))
def test_guest_endpoints_without_credentials(case: Any, kbs: Kbs) -> None:
    call(case, kbs, "guest, no credentials")


def bind_to_session(body: object, nonce: str) -> None:
    """Aim a generated Attestation at the session: its nonce, and a sample binding to it.

    Without this nearly every case would stop at NonceMismatch; with it the key and evidence
    checks are reached, and a well-formed body (the document's example) attests.
    """
    if not isinstance(body, dict) or not isinstance(body.get("runtime-data"), dict):
        return
    runtime = body["runtime-data"]
    runtime["nonce"] = nonce
    evidence = body.get("tee-evidence")
    if not isinstance(evidence, dict):
        return
    primary = evidence.get("primary_evidence")
    additional = evidence.get("additional_evidence", "")
    jwk = runtime.get("tee-pubkey")
    if isinstance(primary, dict) and "report_data" in primary and isinstance(additional, str):
        try:
            digest = trustee_digest(nonce, jwk, additional)
        except (TypeError, ValueError):  # not a JSON value RFC 8785 can encode
            return
        primary["report_data"] = base64.b64encode(digest).decode()


@cases(SCHEMA.include(path="/kbs/v0/attest"))
def test_attest_in_a_fresh_session(case: Any, kbs: Kbs) -> None:
    session, challenge = kbs.service.auth({"version": PROTOCOL_VERSION, "tee": "sample"})
    bind_to_session(case.body, challenge["nonce"])
    call(case, kbs, "attest, fresh session", cookies={SESSION_COOKIE: session.session_id})


def ledger_mac(key: bytes, path: str, body: bytes) -> str:
    """Cvmstore-Ledger-Mac: base64url HMAC-SHA256 of b"POST " + path + b"\\n" + body."""
    return b64url_encode(
        hmac.new(key, b"POST " + path.encode() + b"\n" + body, hashlib.sha256).digest()
    )


def with_ledger_mac(case: Any, key: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The call's keyword arguments that send `case` as a guest holding `key` would.

    The body is serialized here, as the transport would (`as_transport_kwargs`, then requests'
    own encoding of a `json` body), and handed back as `data`: the transport sends exactly
    those bytes, so the MAC covers what the server receives. The path is the one the server
    routes on: the URL's path, percent-decoded as the ASGI client does. A negative case that
    drops the header (it is a required parameter) still goes without it: schemathesis removes
    it after this, and the server answers 401 LedgerMacInvalid.
    """
    base_url = "http://testserver"  # the ASGI client's host; given to the call too
    sent = case.as_transport_kwargs(base_url=base_url, headers=headers)
    prepared = requests.Request(
        method=sent["method"],
        url=sent["url"],
        params=sent.get("params"),
        data=sent.get("data"),
        json=sent.get("json"),
    ).prepare()
    encoded = prepared.body or b""
    if isinstance(encoded, str):
        encoded = encoded.encode("utf-8")
    assert isinstance(encoded, bytes), type(encoded)  # never a stream: no files are sent
    body: bytes = encoded
    assert prepared.url is not None
    path = unquote(urlsplit(prepared.url).path)
    mac: str | None = ledger_mac(key, path, body) if path.isascii() else "A" * 43
    kwargs: dict[str, Any] = {
        "base_url": base_url,
        "headers": {**headers, LEDGER_MAC_HEADER: mac},
    }
    if "data" in sent or "json" in sent:  # else no body at all: nothing to replace
        kwargs["data"] = body
    return kwargs


@cases(SCHEMA.include(path_regex="^/kbs/v0/(resource|cvmstore)/"))
def test_guest_endpoints_with_an_attestation_token(case: Any, kbs: Kbs) -> None:
    headers = {"Authorization": f"Bearer {kbs.attestation_token}"}
    if case.operation.label == LEDGER_ADVANCE:
        call(case, kbs, TOKEN_RUN, **with_ledger_mac(case, kbs.ledger_key, headers))
    else:
        call(case, kbs, TOKEN_RUN, headers=headers)


@cases(SCHEMA.include(path_regex="^/admin/v0/"))
def test_admin_api_with_the_admin_token(case: Any, kbs: Kbs) -> None:
    call(case, kbs, "admin, admin token", headers={"Authorization": f"Bearer {kbs.admin_token}"})


@cases(LIGHT.include(path_regex="^/admin/v0/"))
def test_admin_api_without_a_token(case: Any, kbs: Kbs) -> None:
    call(case, kbs, "admin, no token")


def test_fuzz_case_count() -> None:
    """Runs after the fuzz tests above (file order): how many cases, and the deep paths reached."""
    if not CASES:
        pytest.skip("the fuzz tests did not run in this session")
    runs: Counter[str] = Counter()
    for (run, *_), count in CASES.items():
        runs[run] += count
    print(f"\nschemathesis: {sum(runs.values())} cases; {dict(runs)}")
    for key, count in sorted(CASES.items()):
        print(f"{count:6}  {key}")
    assert sum(runs.values()) < 200 * MAX_EXAMPLES  # bounded by the profile (ci: 5,000)
    # The deep answers each operation must have reached (checked for the operations that ran,
    # so that a -k selection still passes).
    ran = {(run, label) for run, label, _, _ in CASES}
    reached = {(run, label, status) for run, label, status, _ in CASES}
    for run, label, status in DEEP:
        if (run, label) in ran:
            assert (run, label, status) in reached, (run, label, status)


# ------------------------------------------------------------------ what the generator cannot make
# Schemathesis only generates strings it can encode as UTF-8, so it never sends the JSON escape
# of a lone surrogate ("\\ud800"), which Python's json module decodes into a str that cannot be
# encoded. These requests are sent raw. Each one was a server error (a 500) until the fix
# (app.json_body refuses lone surrogates; admin path values are checked before the database).

LONE_SURROGATE = "\\ud800"  # the six characters of the JSON escape


def exchange(
    app: Starlette, method: str, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://kbs") as client:
            return await client.request(method, path, content=body, headers=headers)

    return anyio.run(go)


def send(app: Starlette, method: str, path: str, body: str, headers: dict[str, str]) -> int:
    return exchange(app, method, path, body.encode("ascii"), headers).status_code


def test_a_lone_surrogate_in_the_attest_nonce_is_refused(kbs: Kbs) -> None:
    session, _ = kbs.service.auth({"version": PROTOCOL_VERSION, "tee": "sample"})
    body = f'{{"runtime-data": {{"nonce": "{LONE_SURROGATE}"}}}}'
    cookie = {"Cookie": f"{SESSION_COOKIE}={session.session_id}"}
    assert send(kbs.app, "POST", "/kbs/v0/attest", body, cookie) == 400


def test_a_lone_surrogate_in_additional_evidence_is_refused(kbs: Kbs) -> None:
    kbs.service.set_policy(SAMPLE_POLICY)  # the admin fuzz run may have replaced it
    session, challenge = kbs.service.auth({"version": PROTOCOL_VERSION, "tee": "sample"})
    jwk = tee_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    attestation = {
        "runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": {"svn": 1, "report_data": "AAAA"},
            "additional_evidence": "@",
        },
    }
    body = json.dumps(attestation).replace('"@"', f'"{LONE_SURROGATE}"')
    cookie = {"Cookie": f"{SESSION_COOKIE}={session.session_id}"}
    assert send(kbs.app, "POST", "/kbs/v0/attest", body, cookie) in (400, 401)


def test_a_lone_surrogate_in_a_volume_policy_is_refused(kbs: Kbs) -> None:
    body = f'{{"name": "surrogate", "policy": "{LONE_SURROGATE}"}}'
    admin = {"Authorization": f"Bearer {kbs.admin_token}"}
    assert send(kbs.app, "POST", "/admin/v0/volumes", body, admin) == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/v0/volumes/a%00b"), ("DELETE", "/admin/v0/references/a%00b")],
)
def test_a_nul_in_an_admin_path_is_not_a_server_error_on_postgresql(
    tmp_path: Path, method: str, path: str
) -> None:
    repository = make_repository("postgresql", tmp_path)
    try:
        service = build_service(KbsConfig(data_dir=tmp_path), repository=repository)
        admin = {"Authorization": f"Bearer {new_admin_token(repository, 'test')}"}
        assert send(create_app(service), method, path, "", admin) == 404
    finally:
        repository.close()


# ------------------------------------------------------------------ ledger advances and their MAC
# The fuzz above always sends a valid Cvmstore-Ledger-Mac (but where schemathesis drops the
# required header). These are the advances a host that sees the token, but not the ledger key,
# could send.


def problem_kind(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE, response.text
    return response.status_code, response.json()["title"]


def test_an_advance_without_a_valid_mac_is_refused(kbs: Kbs) -> None:
    kbs.service.create_volume("mac-check", SAMPLE_POLICY.decode())
    path = "/kbs/v0/cvmstore/ledger/mac-check"
    state = {"generation": 1, "root": "5a" * 32}
    advance = {"nonce": "A" * 43, "expected": None, "new": state, "store-id": "c0" * 16}
    body = json.dumps(advance, separators=(",", ":")).encode()
    bearer = {"Authorization": f"Bearer {kbs.attestation_token}"}

    def post(mac: str | None, content: bytes = body) -> httpx.Response:
        headers = {**bearer, "Content-Type": "application/json"}
        if mac is not None:
            headers[LEDGER_MAC_HEADER] = mac
        return exchange(kbs.app, "POST", path, content, headers)

    refused = (401, "LedgerMacInvalid")
    assert problem_kind(post(None)) == refused  # the token alone
    assert problem_kind(post("A" * 43)) == refused  # a guess
    assert problem_kind(post("not base64url!")) == refused
    assert problem_kind(post(ledger_mac(bytes(32), path, body))) == refused  # another key
    other_volume = "/kbs/v0/cvmstore/ledger/vtpm"
    assert problem_kind(post(ledger_mac(kbs.ledger_key, other_volume, body))) == refused
    # The MAC covers the bytes, not the JSON value: the same advance spaced differently.
    spaced = json.dumps(advance).encode()
    assert problem_kind(post(ledger_mac(kbs.ledger_key, path, body), spaced)) == refused
    assert kbs.service.volume_info("mac-check")["version"] == 0  # none of them moved the ledger

    # The guest's own MAC: the advance lands; sent again (a retry), it is a 409 that holds
    # exactly the requested state.
    mac = ledger_mac(kbs.ledger_key, path, body)
    assert post(mac).status_code == 200
    again = post(mac)
    assert problem_kind(again) == (409, "LedgerConflict")
    assert kbs.service.volume_info("mac-check")["version"] == 1


def test_an_advance_to_a_non_ascii_volume_is_not_a_server_error(kbs: Kbs) -> None:
    headers = {
        "Authorization": f"Bearer {kbs.attestation_token}",
        LEDGER_MAC_HEADER: "A" * 43,
    }
    response = exchange(kbs.app, "POST", "/kbs/v0/cvmstore/ledger/%C3%A9", b"{}", headers)
    assert 400 <= response.status_code < 500
