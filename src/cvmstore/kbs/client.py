"""The guest's side of the KBS: the RCAR handshake, key release and the ledger, all verified.

`KbsClient.attest` runs auth and attest with a fresh key bound into the evidence; then
`resource` fetches and decrypts a secret and `ledger_read` / `ledger_advance` use the rollback
ledger. With a pinned KBS key (`kbs_key`: the RFC 7638 thumbprint of the KBS's signing key)
the client refuses, before using it, any token, resource or ledger answer that key did not
sign; a ledger answer must also carry the nonce this client just made. So a host that sits
between guest and KBS can drop requests, but cannot forge or replay an answer.

Connection failures are retried with exponential backoff (bounded), then `KbsUnreachableError`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from cvmstore.errors import (
    ForkError,
    KbsAuthError,
    KbsError,
    KbsIdentityError,
    KbsProtocolError,
    KbsUnreachableError,
    ResourceNotFoundError,
)
from cvmstore.kbs.binding import svsm_binding, trustee_report_data
from cvmstore.kbs.config import PROTOCOL_VERSION
from cvmstore.kbs.evidence_source import EvidenceSource
from cvmstore.kbs.jose import (
    JoseError,
    b64url_encode,
    ec_public_key_from_jwk,
    jwe_decrypt,
    jwe_digest,
    jwk_thumbprint,
    parse_tee_jwk,
    tee_jwk,
    verify_jws,
)
from cvmstore.kbs.protocol import (
    LEDGER_KEY_MEMBER,
    LEDGER_MAC_HEADER,
    LEDGER_PATH,
    SIGNATURE_HEADER,
    ledger_mac_input,
)

__all__ = ["KbsClient", "LedgerAnswer"]


@dataclass(frozen=True, slots=True)
class LedgerAnswer:
    """A verified ledger answer: the entry as the KBS holds it."""

    volume: str
    version: int
    generation: int | None
    root: bytes | None
    store_id: bytes | None
    result: str  # "current", "advanced" or "conflict"


class KbsClient:
    """One guest's conversation with a KBS.

    Args:
        url: the KBS's base URL (http://host:port or https://...).
        evidence: where evidence comes from.
        kbs_key: the pinned thumbprint of the KBS's signing key; None trusts any answer
            (development only: the guest then cannot tell a forged KBS).
        binding: "trustee" (Trustee's JSON binding) or "svsm" (COCONUT's raw SHA-512).
        verify: TLS verification for https: True (system CAs), a CA bundle path, or False.
        timeout: seconds per request.
        retries: attempts after the first when the KBS cannot be reached.
        backoff: the first retry's delay; it doubles each time.
        transport: an httpx transport (tests run the ASGI app in process with it).
    """

    def __init__(
        self,
        url: str,
        evidence: EvidenceSource,
        *,
        kbs_key: str | None = None,
        binding: str = "trustee",
        verify: bool | str = True,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if binding not in ("trustee", "svsm"):
            raise ValueError(f"binding {binding!r} is not trustee or svsm")
        self.url = url.rstrip("/")
        self.evidence = evidence
        self.kbs_key = kbs_key
        self.binding = binding
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.url, verify=tls_verify(verify), timeout=timeout, transport=transport
        )
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._ledger_key: bytes | None = None
        self.token: str | None = None
        self.token_claims: dict[str, Any] = {}

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> KbsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ RCAR

    def attest(self) -> dict[str, Any]:
        """Auth and attest with a fresh P-521 key; returns the token's verified claims.

        Raises:
            KbsAuthError: the KBS refused the evidence (the detail names the check).
            KbsIdentityError: the token is not signed by the pinned KBS key, or is not about
                this client's key and nonce.
            KbsUnreachableError, KbsProtocolError: as for every request.
        """
        self._http.cookies.clear()
        self._key = ec.generate_private_key(ec.SECP521R1())
        jwk = tee_jwk(self._key.public_key())
        challenge = self._json(
            "POST",
            "/kbs/v0/auth",
            json={"version": PROTOCOL_VERSION, "tee": self.evidence.tee, "extra-params": ""},
        )
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str):
            raise KbsProtocolError("the KBS's challenge has no nonce")
        if self.binding == "svsm" and self.evidence.tee == "snp":
            report_data = svsm_binding(nonce, parse_tee_jwk(jwk))
            if report_data is None:
                raise KbsProtocolError("the KBS's nonce is not standard base64")
        else:
            report_data = trustee_report_data(nonce, jwk, "")
        body = {
            "init-data": None,
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {
                "primary_evidence": self.evidence.evidence(report_data),
                "additional_evidence": "",
            },
        }
        answer = self._json("POST", "/kbs/v0/attest", json=body)
        token = answer.get("token")
        if not isinstance(token, str):
            raise KbsProtocolError("the KBS's attestation answer has no token")
        claims = self._verified(token, "the attestation token", require=("iat", "exp"))
        evidence_claims = _dig(claims, "submods", "cpu0", "ear.veraison.annotated-evidence")
        runtime = evidence_claims.get("runtime_data_claims") if evidence_claims else None
        if self.kbs_key is not None and (
            not isinstance(runtime, dict)
            or runtime.get("nonce") != nonce
            or runtime.get("tee-pubkey") != jwk
        ):
            raise KbsIdentityError("the attestation token is not about this guest's key and nonce")
        wrapped = answer.get(LEDGER_KEY_MEMBER)
        self._ledger_key = None
        if wrapped is not None:
            try:
                self._ledger_key = jwe_decrypt(wrapped, self._key)
            except JoseError as exc:
                raise KbsIdentityError(f"the ledger key does not decrypt: {exc}") from None
        self.token, self.token_claims = token, claims
        return claims

    def resource(self, path: str) -> bytes:
        """The secret at "repository/type/tag", decrypted with this session's key.

        Raises:
            ResourceNotFoundError: the KBS has no such resource.
            KbsAuthError: not attested, or the resource's policy refuses this guest.
            KbsIdentityError: the answer is not signed by the pinned KBS key.
        """
        key = self._require_key()
        response = self._request(
            "GET", "/kbs/v0/resource/" + "/".join(quote(part, safe="") for part in path.split("/"))
        )
        jwe = _json_of(response)
        if self.kbs_key is not None:
            signature = response.headers.get(SIGNATURE_HEADER)
            if signature is None:
                raise KbsIdentityError(f"the resource {path} comes without the KBS's signature")
            claims = self._verified(signature, f"the signature of resource {path}")
            if claims.get("resource") != path or claims.get("jwe-sha256") != jwe_digest(jwe):
                raise KbsIdentityError(f"the signature does not cover resource {path} as received")
        try:
            return jwe_decrypt(jwe, key)
        except JoseError as exc:
            raise KbsIdentityError(
                f"resource {path} does not decrypt with this guest's key: {exc}"
            ) from None

    # ------------------------------------------------------------------ the ledger

    def ledger_read(self, volume: str) -> LedgerAnswer:
        """The volume's ledger entry, signed by the KBS and bound to a fresh nonce."""
        nonce = b64url_encode(secrets.token_bytes(32))
        response = self._request("GET", _ledger_path(volume), params={"nonce": nonce})
        answer = self._answer(_json_of(response).get("answer"), volume, nonce)
        if answer.result != "current":
            raise KbsIdentityError("the ledger answer is not an answer to a read")
        return answer

    def ledger_advance(
        self,
        volume: str,
        expected: tuple[int, bytes] | None,
        new: tuple[int, bytes],
        store_id: bytes,
    ) -> LedgerAnswer:
        """Compare-and-swap the ledger from `expected` to `new` (generation, root).

        Raises:
            ForkError: the ledger holds something else (another copy of the volume advanced
                it); the message says what, from the KBS's signed answer.
        """
        nonce = b64url_encode(secrets.token_bytes(32))
        body = {
            "nonce": nonce,
            "expected": None
            if expected is None
            else {"generation": expected[0], "root": expected[1].hex()},
            "new": {"generation": new[0], "root": new[1].hex()},
            "store-id": store_id.hex(),
        }
        if self._ledger_key is None:
            raise KbsProtocolError("the KBS gave this session no ledger key: it cannot advance")
        path = _ledger_path(volume)
        raw = json.dumps(body, separators=(",", ":")).encode()
        mac = hmac.new(self._ledger_key, ledger_mac_input(path, raw), hashlib.sha256)
        response = self._request(
            "POST",
            path,
            content=raw,
            headers={
                "Content-Type": "application/json",
                LEDGER_MAC_HEADER: b64url_encode(mac.digest()),
            },
            accept=(200, 409),
        )
        answer = self._answer(_json_of(response).get("answer"), volume, nonce)
        holds_new = (answer.generation, answer.root) == new and answer.store_id == store_id
        if response.status_code == 200 or holds_new:
            # A 200 must say "advanced" to exactly what was asked: a signed answer of another
            # kind (a read, bound to this nonce by someone who saw it) proves nothing. A 409
            # holding exactly `new` is our own advance, applied before a connection dropped
            # and retried.
            if not holds_new or (response.status_code == 200 and answer.result != "advanced"):
                raise KbsIdentityError(
                    f"the ledger answer for volume {volume!r} does not say it advanced to the"
                    " requested state: not an answer to this advance"
                )
            return answer
        if response.status_code == 409:
            raise ForkError(
                f"the KBS ledger of volume {volume!r} is at generation {answer.generation}"
                f" (version {answer.version}), not the expected"
                f" {expected[0] if expected else 'none'}: another copy of this volume advanced it",
                location="kbs-ledger",
            )
        return answer

    def _answer(self, token: object, volume: str, nonce: str) -> LedgerAnswer:
        claims = self._verified(token, "the ledger answer")
        if self.kbs_key is not None and (
            claims.get("nonce") != nonce or claims.get("volume") != volume
        ):
            raise KbsIdentityError("the ledger answer is not an answer to this request (replayed?)")
        try:
            generation = claims["generation"]
            root, store_id = claims["root"], claims["store-id"]
            return LedgerAnswer(
                volume=str(claims["volume"]),
                version=int(str(claims["version"])),
                generation=None if generation is None else int(str(generation)),
                root=None if root is None else bytes.fromhex(str(root)),
                store_id=None if store_id is None else bytes.fromhex(str(store_id)),
                result=str(claims["result"]),
            )
        except (KeyError, ValueError) as exc:
            raise KbsProtocolError(f"the ledger answer is malformed: {exc}") from None

    # ------------------------------------------------------------------ plumbing

    def _verified(
        self, token: object, what: str, *, require: tuple[str, ...] = ("iat",)
    ) -> dict[str, Any]:
        """Claims of a JWS from the KBS, checked against the pinned key when there is one."""
        if not isinstance(token, str):
            raise KbsProtocolError(f"{what} is missing")
        try:
            header = json.loads(_b64_segment(token.split(".")[0]))
            jwk = header["jwk"]
            thumbprint, key = _signing_key(jwk["kty"], jwk["crv"], jwk["x"], jwk["y"])
            if self.kbs_key is not None and thumbprint != self.kbs_key:
                raise KbsIdentityError(f"{what} is signed by another key than the pinned KBS key")
            return verify_jws(token, key, require=require)
        except KbsIdentityError:
            raise
        except (JoseError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise KbsIdentityError(f"{what} does not verify: {exc}") from None

    def _require_key(self) -> ec.EllipticCurvePrivateKey:
        if self._key is None:
            raise KbsAuthError("not attested: call attest() first")
        return self._key

    def _json(self, method: str, path: str, json: object) -> dict[str, Any]:
        return _json_of(self._request(method, path, json=json))

    def _request(
        self,
        method: str,
        path: str,
        *,
        accept: tuple[int, ...] = (200,),
        json: object = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(
                    method, path, json=json, content=content, headers=headers, params=params
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if _tls_refused(exc):
                    raise KbsIdentityError(
                        f"the KBS at {self.url} did not prove its TLS identity: {exc}"
                    ) from None
                if attempt == self.retries:
                    raise KbsUnreachableError(
                        f"the KBS at {self.url} cannot be reached after {attempt + 1} attempts:"
                        f" {type(exc).__name__}"
                    ) from None
                self._sleep(delay)
                delay *= 2
                continue
            except httpx.TransportError as exc:
                raise KbsUnreachableError(
                    f"the KBS at {self.url} failed: {type(exc).__name__}"
                ) from None
            if response.status_code in accept:
                return response
            raise _refusal(response, method, path)
        raise AssertionError("unreachable")


@functools.lru_cache(maxsize=16)
def _signing_key(kty: str, crv: str, x: str, y: str) -> tuple[str, ec.EllipticCurvePublicKey]:
    """A KBS key's thumbprint and validated public key (the same few keys, every answer)."""
    public = {"kty": kty, "crv": crv, "x": x, "y": y}
    return jwk_thumbprint(public), ec_public_key_from_jwk(public)


def _tls_refused(exc: BaseException) -> bool:
    """Whether a connection failed because the server's certificate did not verify."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _ledger_path(volume: str) -> str:
    return f"{LEDGER_PATH}/{quote(volume, safe='')}"


def tls_verify(verify: bool | str) -> bool | ssl.SSLContext:
    """Httpx's `verify` from ours: True (system CAs), False, or a CA bundle file's path."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _refusal(response: httpx.Response, method: str, path: str) -> KbsError:
    try:
        problem = response.json()
        detail = str(problem.get("detail", "")) if isinstance(problem, dict) else ""
    except ValueError:
        detail = ""
    message = f"{method} {path}: HTTP {response.status_code}: {detail or response.reason_phrase}"
    if response.status_code in (401, 403):
        return KbsAuthError(message)
    if response.status_code == 404:
        return ResourceNotFoundError(message)
    if response.status_code >= 500:
        return KbsUnreachableError(message)
    return KbsProtocolError(message)


def _json_of(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        raise KbsProtocolError(
            f"the KBS answered {response.request.url.path} with non-JSON"
        ) from None
    if not isinstance(value, dict):
        raise KbsProtocolError("the KBS answered with JSON that is not an object")
    return value


def _b64_segment(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _dig(claims: dict[str, Any], *keys: str) -> dict[str, Any] | None:
    value: Any = claims
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, dict) else None
