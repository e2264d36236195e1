"""An RCAR client for the cvmstore KBS, written only from docs/kbs-api.md.

Nothing here comes from `cvmstore.kbs` or `cvmstore.guest`: every encoding, hash, header and
check follows the documentation (section names are cited in the comments), so that a test
can show that someone with only that page can talk to the KBS. Evidence is not made here: the
caller gets an SEV-SNP report for the REPORT_DATA this client computes and hands it over.

What it does:

- `/auth` (Request, Challenge, session cookie) and `/attest` (Attestation, token), with the
  `trustee` and `svsm` REPORT_DATA bindings ("REPORT_DATA bindings");
- TEE keys on P-256, P-384 and P-521 (`ECDH-ES+A256KW`) and RSA (`RSA-OAEP-256`) ("The TEE
  public key (JWK)");
- resources: the flattened JWE, decrypted with `cryptography` ("The resource JWE"), after
  checking the `Cvmstore-Signature` header;
- the session's ledger key (`cvmstore-ledger-key` of the `/attest` answer, a JWE to the TEE
  key) and the `Cvmstore-Ledger-Mac` header it keys ("The `Cvmstore-Ledger-Mac` header");
- the ledger plugin: GET with a fresh nonce, POST compare-and-swap with its MAC, 409
  `LedgerConflict`, and only the answers "What a guest accepts" allows;
- every JWS (token, resource signature, ledger answer) is verified against a pinned RFC 7638
  thumbprint of the KBS key ("The `Cvmstore-Signature` header and pinning the KBS key").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import rfc8785
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

__all__ = [
    "CONCAT_KDF_OTHER_INFO",
    "JWE_MEMBERS",
    "ClientRefusal",
    "IndependentKbsClient",
    "KbsProblem",
    "LedgerAnswer",
    "LedgerConflict",
    "PinMismatch",
    "Resource",
    "Session",
    "TeeKey",
    "b64url_decode",
    "b64url_encode",
    "decrypt_jwe",
    "fresh_nonce",
    "jwk_thumbprint",
    "ledger_mac",
    "ledger_mac_input",
    "sample_report_data",
    "svsm_report_data",
    "trustee_report_data",
    "verify_jws",
    "verify_resource_signature",
]

Binding = Literal["trustee", "svsm"]
Credential = Literal["token", "cookie"]

PROTOCOL_VERSION = "0.4.0"
ISSUER = "cvmstore-kbs"
COOKIE_NAME = "kbs-session-id"
SIGNATURE_HEADER = "Cvmstore-Signature"
#: "The `Cvmstore-Ledger-Mac` header" and the `/attest` answer member that keys it.
LEDGER_MAC_HEADER = "Cvmstore-Ledger-Mac"
LEDGER_KEY_MEMBER = "cvmstore-ledger-key"
LEDGER_KEY_BYTES = 32
#: "The attestation token": 30 seconds of clock skew are allowed both ways.
CLOCK_SKEW = 30
#: "The resource JWE": exactly these five members, in the order `jwe-sha256` joins them.
JWE_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
#: "The resource JWE", step 2: OtherInfo of the Concat KDF, copied from the page's hex.
CONCAT_KDF_OTHER_INFO = bytes.fromhex(
    "0000000e454344482d45532b413235364b57000000000000000000000100"
)
_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_COOKIE_VALUE = re.compile(r"[0-9a-f]{32}")
_B64URL_TEXT = re.compile(r"[A-Za-z0-9_-]*")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


# ---------------------------------------------------------------- errors


class ClientRefusal(Exception):
    """This client refused an answer of the KBS (bad signature, wrong nonce, bad shape)."""


class PinMismatch(ClientRefusal):
    """A JWS was signed by a key whose thumbprint is not the pinned one."""


class KbsProblem(Exception):
    """The KBS refused a request with an RFC 7807 problem document ("Problem documents")."""

    def __init__(self, status: int, document: Mapping[str, Any]) -> None:
        self.status = status
        self.document = dict(document)
        self.kind = str(document.get("title"))
        self.detail = document.get("detail")
        self.check = document.get("check")
        super().__init__(f"{status} {self.kind}: {self.detail}")


class LedgerConflict(KbsProblem):
    """409 `LedgerConflict`; `answer` is the verified signed entry as it is now."""

    def __init__(self, status: int, document: Mapping[str, Any], answer: LedgerAnswer) -> None:
        super().__init__(status, document)
        self.answer = answer


# ---------------------------------------------------------------- encodings ("Conventions")


def b64url_encode(data: bytes) -> str:
    """Base64url (RFC 4648 §5) without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object) -> bytes:
    """Canonical base64url without padding: the only encoding of its bytes.

    Raises:
        ClientRefusal: not a string of the base64url alphabet, padded, or not canonical.
    """
    if not isinstance(text, str) or not _B64URL_TEXT.fullmatch(text) or len(text) % 4 == 1:
        raise ClientRefusal(f"not unpadded base64url: {str(text)[:40]!r}")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ClientRefusal(f"not base64url: {exc}") from None
    if b64url_encode(data) != text:
        raise ClientRefusal(f"not canonical base64url: {text[:40]!r}")
    return data


def _strict_json(data: bytes | str, what: str) -> Any:
    """JSON that refuses duplicate keys, as the KBS does ("Conventions", JSON bodies)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ClientRefusal(f"{what}: duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(data, object_pairs_hook=pairs)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientRefusal(f"{what} is not JSON: {exc}") from None


# ---------------------------------------------------------------- TEE keys


@dataclass(frozen=True)
class TeeKey:
    """A session's TEE key pair and its public JWK exactly as this client sends it."""

    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    jwk: dict[str, str]

    @classmethod
    def ec(cls, crv: str) -> TeeKey:
        """A fresh EC key on P-256, P-384 or P-521 ("The TEE public key (JWK)", EC)."""
        curve, size = _CURVES[crv]
        private = ec.generate_private_key(curve)
        numbers = private.public_key().public_numbers()
        jwk = {
            "kty": "EC",
            "crv": crv,
            "alg": "ECDH-ES+A256KW",
            "x": b64url_encode(numbers.x.to_bytes(size, "big")),
            "y": b64url_encode(numbers.y.to_bytes(size, "big")),
        }
        return cls(private, jwk)

    @classmethod
    def rsa(cls, bits: int = 2048) -> TeeKey:
        """A fresh RSA key for `RSA-OAEP-256` (minimal big-endian `n` and `e`)."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        numbers = private.public_key().public_numbers()

        def minimal(value: int) -> str:
            return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))

        jwk = {
            "kty": "RSA",
            "alg": "RSA-OAEP-256",
            "n": minimal(numbers.n),
            "e": minimal(numbers.e),
        }
        return cls(private, jwk)

    @property
    def alg(self) -> str:
        """The JWK's `alg`, which decides how resources are encrypted to this key."""
        return self.jwk["alg"]


# ---------------------------------------------------------------- REPORT_DATA bindings


def _trustee_digest(nonce: str, jwk: Mapping[str, str], additional_evidence: str) -> bytes:
    document: dict[str, Any] = {
        "nonce": nonce,
        "tee-pubkey": dict(jwk),
        "additional-evidence": additional_evidence,
    }
    return hashlib.sha384(rfc8785.dumps(document)).digest()


def trustee_report_data(nonce: str, jwk: Mapping[str, str], additional_evidence: str = "") -> bytes:
    """The `trustee` binding: SHA-384 of the JCS document, then 16 zero bytes (64 bytes)."""
    return _trustee_digest(nonce, jwk, additional_evidence) + bytes(16)


def sample_report_data(nonce: str, jwk: Mapping[str, str], additional_evidence: str = "") -> str:
    """The `sample` TEE's `report_data`: base64 of the 48-byte digest, not padded to 64."""
    return base64.b64encode(_trustee_digest(nonce, jwk, additional_evidence)).decode("ascii")


def svsm_report_data(nonce: str, jwk: Mapping[str, str]) -> bytes:
    """The `svsm` binding: SHA-512(x ‖ y ‖ base64-decoded nonce), EC keys only.

    Raises:
        ValueError: an RSA key (this binding cannot carry one).
    """
    if jwk.get("kty") != "EC":
        raise ValueError("the svsm binding is for EC keys only")
    x = b64url_decode(jwk["x"])
    y = b64url_decode(jwk["y"])
    nonce_bytes = base64.b64decode(nonce, validate=True)
    return hashlib.sha512(x + y + nonce_bytes).digest()


# ---------------------------------------------------------------- JWS and pinning


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC key: SHA-256 of the sorted crv/kty/x/y JSON, base64url."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    if not all(isinstance(value, str) for value in members.values()):
        raise ClientRefusal("a JWK member of the thumbprint is not a string")
    text = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64url_encode(hashlib.sha256(text.encode("utf-8")).digest())


def verify_jws(compact: str, pinned_thumbprint: str) -> dict[str, Any]:
    """The claims of a compact ES256 JWS by the pinned KBS key, after every check.

    The key is taken from the header's `jwk`; its thumbprint must equal the pin before the
    signature is even looked at, and the header's `kid` must name the same thumbprint.

    Raises:
        PinMismatch: the header's key is not the pinned one.
        ClientRefusal: a malformed JWS, a bad signature, or an `iss` other than cvmstore-kbs.
    """
    if not isinstance(compact, str):
        raise ClientRefusal("a JWS must be a string")
    parts = compact.split(".")
    if len(parts) != 3:
        raise ClientRefusal("not a compact JWS (three dot-separated parts)")
    header = _strict_json(b64url_decode(parts[0]), "the JWS header")
    if not isinstance(header, dict) or header.get("alg") != "ES256":
        raise ClientRefusal(f"JWS header alg is not ES256: {header!r:.80}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ClientRefusal("the JWS header has no P-256 `jwk`")
    thumbprint = jwk_thumbprint(jwk)
    if not secrets.compare_digest(thumbprint, pinned_thumbprint):
        raise PinMismatch(f"JWS key {thumbprint} is not the pinned KBS key {pinned_thumbprint}")
    if header.get("kid") != thumbprint:
        raise ClientRefusal("the JWS header's kid is not the key's thumbprint")
    x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
    if len(x) != 32 or len(y) != 32:
        raise ClientRefusal("P-256 coordinates must be 32 bytes")
    try:
        public = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError as exc:
        raise ClientRefusal(f"the JWS key is not on P-256: {exc}") from None
    signature = b64url_decode(parts[2])
    if len(signature) != 64:
        raise ClientRefusal("an ES256 signature is 64 bytes (R ‖ S)")
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        public.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ClientRefusal("the JWS signature does not verify") from None
    claims = _strict_json(b64url_decode(parts[1]), "the JWS claims")
    if not isinstance(claims, dict):
        raise ClientRefusal("the JWS claims are not an object")
    if claims.get("iss") != ISSUER:
        raise ClientRefusal(f"the JWS iss is {claims.get('iss')!r}, not {ISSUER!r}")
    if not isinstance(claims.get("iat"), int):
        raise ClientRefusal("the JWS has no integer iat")
    return claims


def jwe_sha256(jwe: Mapping[str, str]) -> str:
    """`jwe-sha256`: base64url SHA-256 of the five members as received, joined with newlines."""
    joined = "\n".join(jwe[name] for name in JWE_MEMBERS)
    return b64url_encode(hashlib.sha256(joined.encode("ascii")).digest())


def verify_resource_signature(
    header_value: str | None, path: str, jwe: Mapping[str, str], pinned_thumbprint: str
) -> dict[str, Any]:
    """Check a `Cvmstore-Signature` header for the JWE of resource `path`; its claims.

    Raises:
        PinMismatch: signed by another key.
        ClientRefusal: no header, a bad signature, or claims about another resource or JWE.
    """
    if header_value is None:
        raise ClientRefusal(f"the answer has no {SIGNATURE_HEADER} header")
    claims = verify_jws(header_value, pinned_thumbprint)
    if claims.get("resource") != path:
        raise ClientRefusal(f"the signature is for {claims.get('resource')!r}, not {path!r}")
    if claims.get("jwe-sha256") != jwe_sha256(jwe):
        raise ClientRefusal("the signature does not cover this JWE (jwe-sha256 differs)")
    return claims


# ---------------------------------------------------------------- the resource JWE


def decrypt_jwe(jwe: Mapping[str, Any], key: TeeKey) -> bytes:
    """Decrypt a Trustee-shaped flattened JWE with the TEE private key ("The resource JWE").

    Raises:
        ClientRefusal: another shape, an algorithm other than the key's, or a failed
            unwrap or authentication.
    """
    if set(jwe) != set(JWE_MEMBERS) or not all(isinstance(jwe[m], str) for m in JWE_MEMBERS):
        raise ClientRefusal(f"the JWE members are {sorted(jwe)}, not {sorted(JWE_MEMBERS)}")
    protected_text: str = jwe["protected"]
    header = _strict_json(b64url_decode(protected_text), "the JWE protected header")
    if not isinstance(header, dict) or header.get("enc") != "A256GCM":
        raise ClientRefusal(f"the JWE enc is not A256GCM: {header!r:.80}")
    alg = header.get("alg")
    if alg != key.alg:
        raise ClientRefusal(f"the JWE alg is {alg!r}, but the key's is {key.alg!r}")
    encrypted_key = b64url_decode(jwe["encrypted_key"])
    iv = b64url_decode(jwe["iv"])
    tag = b64url_decode(jwe["tag"])
    ciphertext = b64url_decode(jwe["ciphertext"])
    if len(iv) != 12 or len(tag) != 16:
        raise ClientRefusal(f"iv is {len(iv)} bytes and tag {len(tag)}: not 12 and 16")
    if isinstance(key.private, ec.EllipticCurvePrivateKey):
        cek = _ecdh_es_a256kw_cek(header, key, encrypted_key)
    else:
        try:
            cek = key.private.decrypt(
                encrypted_key,
                padding.OAEP(
                    mgf=padding.MGF1(algorithm=hashes.SHA256()),
                    algorithm=hashes.SHA256(),
                    label=None,
                ),
            )
        except ValueError:
            raise ClientRefusal("RSA-OAEP-256 decryption of the CEK failed") from None
    if len(cek) != 32:
        raise ClientRefusal(f"the CEK is {len(cek)} bytes, not 32")
    try:
        return AESGCM(cek).decrypt(iv, ciphertext + tag, protected_text.encode("ascii"))
    except InvalidTag:
        raise ClientRefusal("AES-256-GCM authentication of the resource failed") from None


def _ecdh_es_a256kw_cek(header: Mapping[str, Any], key: TeeKey, encrypted_key: bytes) -> bytes:
    assert isinstance(key.private, ec.EllipticCurvePrivateKey)
    epk = header.get("epk")
    crv = key.jwk["crv"]
    if not isinstance(epk, dict) or epk.get("kty") != "EC" or epk.get("crv") != crv:
        raise ClientRefusal(f"the protected header has no {crv} `epk`")
    curve, size = _CURVES[crv]
    x, y = b64url_decode(epk["x"]), b64url_decode(epk["y"])
    if len(x) != size or len(y) != size:
        raise ClientRefusal(f"epk coordinates must be {size} bytes")
    try:
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
    except ValueError as exc:
        raise ClientRefusal(f"epk is not on {crv}: {exc}") from None
    z = key.private.exchange(ec.ECDH(), peer)  # the x-coordinate, the field size, big-endian
    kek = hashlib.sha256(b"\x00\x00\x00\x01" + z + CONCAT_KDF_OTHER_INFO).digest()
    if len(encrypted_key) != 40:
        raise ClientRefusal(f"encrypted_key is {len(encrypted_key)} bytes, not 40")
    try:
        return aes_key_unwrap(kek, encrypted_key)
    except InvalidUnwrap:
        raise ClientRefusal("AES key unwrap of the CEK failed") from None


# ---------------------------------------------------------------- sessions and answers


@dataclass
class Session:
    """One RCAR session: its TEE key, the Challenge nonce, the cookie and, once attested,
    the token, its verified claims and the ledger key."""

    key: TeeKey
    tee: str
    nonce: str
    cookie: str
    cookie_attributes: dict[str, str]
    token: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    #: The 32-byte ledger key `/attest` gave this session (decrypted): it keys the MAC of
    #: every ledger advance.
    ledger_key: bytes | None = None

    def report_data(self, binding: Binding = "trustee", additional_evidence: str = "") -> bytes:
        """The 64 REPORT_DATA bytes of this session under `binding`."""
        if binding == "svsm":
            return svsm_report_data(self.nonce, self.key.jwk)
        return trustee_report_data(self.nonce, self.key.jwk, additional_evidence)


@dataclass(frozen=True)
class Resource:
    """A decrypted resource, the JWE it came in, and the verified signature claims."""

    plaintext: bytes
    jwe: dict[str, str]
    signature_claims: dict[str, Any]


@dataclass(frozen=True)
class LedgerAnswer:
    """A verified ledger answer ("The rollback ledger", a ledger answer)."""

    volume: str
    version: int
    generation: int | None
    root: str | None
    store_id: str | None
    nonce: str
    result: str
    iat: int
    jws: str


def _ledger_answer(
    compact: object, volume: str, nonce: str, result: str, pinned_thumbprint: str
) -> LedgerAnswer:
    if not isinstance(compact, str):
        raise ClientRefusal("the ledger answer is not a compact JWS string")
    claims = verify_jws(compact, pinned_thumbprint)
    # "a guest must refuse an answer whose `nonce` or `volume` is not its own"
    if claims.get("nonce") != nonce:
        raise ClientRefusal("the ledger answer carries another nonce")
    if claims.get("volume") != volume:
        raise ClientRefusal(f"the ledger answer is for volume {claims.get('volume')!r}")
    if claims.get("result") != result:
        raise ClientRefusal(f"the ledger answer's result is {claims.get('result')!r}")
    version = claims.get("version")
    generation = claims.get("generation")
    root = claims.get("root")
    store_id = claims.get("store-id")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ClientRefusal("the ledger answer has no valid version")
    if generation is not None and (not isinstance(generation, int) or generation < 0):
        raise ClientRefusal("the ledger answer's generation is not an integer or null")
    for name, value in (("root", root), ("store-id", store_id)):
        if value is not None and (not isinstance(value, str) or not _HEX.fullmatch(value)):
            raise ClientRefusal(f"the ledger answer's {name} is not lowercase hex or null")
    if (generation is None) != (root is None):
        raise ClientRefusal("the ledger answer's generation and root are not both set")
    return LedgerAnswer(
        volume=volume,
        version=version,
        generation=generation,
        root=root,
        store_id=store_id,
        nonce=nonce,
        result=result,
        iat=claims["iat"],
        jws=compact,
    )


def fresh_nonce(size: int = 32) -> str:
    """A ledger nonce: canonical base64url of `size` (16 to 64) fresh random bytes."""
    return b64url_encode(secrets.token_bytes(size))


def ledger_mac_input(path: str, body: bytes) -> bytes:
    """What a ledger advance's MAC covers: `"POST " || path || "\\n" || body`.

    `path` is `/kbs/v0/cvmstore/ledger/<volume>` (no host, no query), as ASCII; `body` is the
    request body exactly as sent ("The `Cvmstore-Ledger-Mac` header").
    """
    return b"POST " + path.encode("ascii") + b"\n" + body


def ledger_mac(ledger_key: bytes, path: str, body: bytes) -> str:
    """The `Cvmstore-Ledger-Mac` value: base64url (no padding) HMAC-SHA256 under the key."""
    digest = hmac.new(ledger_key, ledger_mac_input(path, body), hashlib.sha256).digest()
    return b64url_encode(digest)


# ---------------------------------------------------------------- the client


class IndependentKbsClient:
    """Talks RCAR and the ledger plugin to one KBS whose signing key is pinned."""

    def __init__(self, base_url: str, pinned_thumbprint: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.pinned_thumbprint = pinned_thumbprint
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> IndependentKbsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ HTTP

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        finally:
            # Credentials are sent by hand, per session; never from httpx's cookie jar.
            self._http.cookies.clear()

    @staticmethod
    def _problem(response: httpx.Response) -> dict[str, Any]:
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("application/problem+json"):
            raise ClientRefusal(f"a {response.status_code} answer that is not a problem document")
        document = _strict_json(response.content, "the problem document")
        if not isinstance(document, dict) or document.get("status") != response.status_code:
            raise ClientRefusal("a problem document whose status is not the HTTP status")
        kind = document.get("title")
        expected_type = f"https://github.com/confidential-containers/kbs/errors/{kind}"
        if document.get("type") != expected_type:
            raise ClientRefusal(f"a problem document whose type is {document.get('type')!r}")
        return document

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise KbsProblem(response.status_code, self._problem(response))
        return _strict_json(response.content, f"the answer to {response.request.url.path}")

    @staticmethod
    def _cookie(response: httpx.Response) -> tuple[str, dict[str, str]]:
        for line in response.headers.get_list("set-cookie"):
            name, _, rest = line.partition("=")
            if name.strip() != COOKIE_NAME:
                continue
            value, *attributes = (part.strip() for part in rest.split(";"))
            if not _COOKIE_VALUE.fullmatch(value):
                raise ClientRefusal(f"the session cookie is not 32 lowercase hex: {value!r}")
            parsed = {}
            for attribute in attributes:
                key, _, attr_value = attribute.partition("=")
                parsed[key.strip().lower()] = attr_value.strip()
            return value, parsed
        raise ClientRefusal(f"the answer sets no {COOKIE_NAME} cookie")

    @staticmethod
    def _credential(session: Session, use: Credential) -> dict[str, str]:
        if use == "token":
            if session.token is None:
                raise ValueError("the session is not attested: no token")
            return {"Authorization": f"Bearer {session.token}"}
        return {"Cookie": f"{COOKIE_NAME}={session.cookie}"}

    # ------------------------------------------------------------ RCAR

    def auth(self, key: TeeKey, tee: str = "snp") -> Session:
        """`POST /kbs/v0/auth`: a new session for `key`, with its nonce and cookie."""
        body = {"version": PROTOCOL_VERSION, "tee": tee, "extra-params": ""}
        response = self._send("POST", "/kbs/v0/auth", json=body)
        challenge = self._json(response)
        if not isinstance(challenge, dict):
            raise ClientRefusal("the Challenge is not an object")
        nonce = challenge.get("nonce")
        if not isinstance(nonce, str) or len(nonce) != 44:
            raise ClientRefusal(f"the Challenge nonce is not 44 characters: {nonce!r}")
        try:
            raw = base64.b64decode(nonce, validate=True)
        except (binascii.Error, ValueError):
            raise ClientRefusal("the Challenge nonce is not standard base64") from None
        if len(raw) != 32:
            raise ClientRefusal("the Challenge nonce is not 32 bytes")
        cookie, attributes = self._cookie(response)
        return Session(key=key, tee=tee, nonce=nonce, cookie=cookie, cookie_attributes=attributes)

    def attest(
        self,
        session: Session,
        primary_evidence: Any,
        *,
        binding: Binding = "trustee",
        additional_evidence: str = "",
    ) -> str:
        """`POST /kbs/v0/attest`; verifies the token (pin, claims) and keeps it in `session`,
        with the ledger key decrypted from the answer's `cvmstore-ledger-key`.

        `primary_evidence` must be a report whose REPORT_DATA is
        `session.report_data(binding, additional_evidence)`.
        """
        body = {
            "init-data": None,
            "runtime-data": {"nonce": session.nonce, "tee-pubkey": session.key.jwk},
            "tee-evidence": {
                "primary_evidence": primary_evidence,
                "additional_evidence": additional_evidence,
            },
        }
        response = self._send(
            "POST",
            "/kbs/v0/attest",
            json=body,
            headers={"Cookie": f"{COOKIE_NAME}={session.cookie}"},
        )
        answer = self._json(response)
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
            raise ClientRefusal("the attestation answer has no token")
        token: str = answer["token"]
        claims = verify_jws(token, self.pinned_thumbprint)
        self._check_token(session, claims, binding, additional_evidence)
        # "POST /kbs/v0/attest", 200: the ledger key is a JWE to the TEE key, of the resource
        # JWE's form, whose plaintext is the 32 key bytes.
        wrapped = answer.get(LEDGER_KEY_MEMBER)
        if not isinstance(wrapped, dict):
            raise ClientRefusal(f"the attestation answer has no {LEDGER_KEY_MEMBER} JWE")
        ledger_key = decrypt_jwe(wrapped, session.key)
        if len(ledger_key) != LEDGER_KEY_BYTES:
            raise ClientRefusal(f"the ledger key is {len(ledger_key)} bytes, not 32")
        cookie, attributes = self._cookie(response)
        session.cookie = cookie
        session.cookie_attributes = attributes
        session.token = token
        session.claims = claims
        session.ledger_key = ledger_key
        return token

    @staticmethod
    def _check_token(
        session: Session, claims: Mapping[str, Any], binding: Binding, additional_evidence: str
    ) -> None:
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(exp, int) or not isinstance(iat, int) or exp <= iat:
            raise ClientRefusal("the token's iat and exp are not integers with exp > iat")
        if iat > now + CLOCK_SKEW or exp < now - CLOCK_SKEW:
            raise ClientRefusal("the token is not valid now")
        if claims.get("jti") != session.cookie:
            raise ClientRefusal("the token's jti is not this session's id")
        try:
            cpu0 = claims["submods"]["cpu0"]
            annotated = cpu0["ear.veraison.annotated-evidence"]
            runtime = annotated["runtime_data_claims"]
        except (KeyError, TypeError):
            raise ClientRefusal("the token has no submods.cpu0 annotated evidence") from None
        if cpu0.get("ear.status") != "affirming":
            raise ClientRefusal(f"the token's ear.status is {cpu0.get('ear.status')!r}")
        # "A guest should check that `runtime_data_claims` names its own nonce and key."
        if runtime.get("nonce") != session.nonce or runtime.get("tee-pubkey") != session.key.jwk:
            raise ClientRefusal("the token's runtime_data_claims are not this session's")
        if annotated.get("tee") != session.tee or annotated.get("binding") != binding:
            raise ClientRefusal("the token names another TEE or binding")
        if session.tee == "snp":
            expected = session.report_data(binding, additional_evidence).hex()
            if annotated.get("snp", {}).get("report_data") != expected:
                raise ClientRefusal("the token's report_data is not the one this client bound")

    # ------------------------------------------------------------ resources

    def resource(self, session: Session, path: str, *, use: Credential = "token") -> Resource:
        """`GET /kbs/v0/resource/<path>`: check `Cvmstore-Signature`, then decrypt."""
        response = self._send(
            "GET", f"/kbs/v0/resource/{path}", headers=self._credential(session, use)
        )
        jwe = self._json(response)
        if not isinstance(jwe, dict):
            raise ClientRefusal("the resource answer is not a JSON object")
        claims = verify_resource_signature(
            response.headers.get(SIGNATURE_HEADER), path, jwe, self.pinned_thumbprint
        )
        return Resource(decrypt_jwe(jwe, session.key), jwe, claims)

    # ------------------------------------------------------------ the ledger plugin

    def ledger_read(
        self, session: Session, volume: str, *, use: Credential = "token"
    ) -> LedgerAnswer:
        """`GET /kbs/v0/cvmstore/ledger/<volume>?nonce=...` with a fresh nonce."""
        nonce = fresh_nonce()
        response = self._send(
            "GET",
            f"/kbs/v0/cvmstore/ledger/{volume}",
            params={"nonce": nonce},
            headers=self._credential(session, use),
        )
        answer = self._json(response)
        if not isinstance(answer, dict):
            raise ClientRefusal("the ledger answer is not an object")
        return _ledger_answer(
            answer.get("answer"), volume, nonce, "current", self.pinned_thumbprint
        )

    def ledger_advance(
        self,
        session: Session,
        volume: str,
        *,
        expected: tuple[int, str] | None,
        new: tuple[int, str],
        store_id: str,
        use: Credential = "token",
        nonce: str | None = None,
    ) -> LedgerAnswer:
        """`POST /kbs/v0/cvmstore/ledger/<volume>`: compare-and-swap `expected` to `new`.

        The body is serialized once; the `Cvmstore-Ledger-Mac` covers those bytes and those
        bytes are sent. `nonce` (default: a fresh one) lets a caller resend the same request,
        as after a lost answer. The answer is accepted as "What a guest accepts" says: a 200
        that says "advanced" to exactly `new` and `store_id`, or a 409 whose entry holds
        exactly that (this advance landed earlier; the answer's `result` is "conflict").

        Raises:
            LedgerConflict: any other 409 (a fork), with the verified current entry as
                `answer`.
            ClientRefusal: an answer that does not verify, is about another request, or is
                a 200 that does not say this advance happened.
        """
        if session.ledger_key is None:
            raise ValueError("the session is not attested: no ledger key")
        nonce = fresh_nonce() if nonce is None else nonce
        body: dict[str, Any] = {
            "nonce": nonce,
            "expected": None
            if expected is None
            else {"generation": expected[0], "root": expected[1]},
            "new": {"generation": new[0], "root": new[1]},
            "store-id": store_id,
        }
        path = f"/kbs/v0/cvmstore/ledger/{volume}"
        raw = json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers = {
            **self._credential(session, use),
            "Content-Type": "application/json",
            LEDGER_MAC_HEADER: ledger_mac(session.ledger_key, path, raw),
        }
        response = self._send("POST", path, content=raw, headers=headers)
        requested = (*new, store_id)
        if response.status_code == 409:
            document = self._problem(response)
            if document.get("title") == "LedgerConflict":
                current = _ledger_answer(
                    document.get("answer"), volume, nonce, "conflict", self.pinned_thumbprint
                )
                if (current.generation, current.root, current.store_id) == requested:
                    return current  # this very advance, landed before its answer was lost
                raise LedgerConflict(409, document, current)  # anything else: a fork
        answer = self._json(response)
        if not isinstance(answer, dict):
            raise ClientRefusal("the ledger answer is not an object")
        # A 200 must say "advanced" (a read answer bound to this nonce is refused here) ...
        result = _ledger_answer(
            answer.get("answer"), volume, nonce, "advanced", self.pinned_thumbprint
        )
        # ... to exactly the state asked for.
        if (result.generation, result.root, result.store_id) != requested:
            raise ClientRefusal("the advanced entry does not hold what was asked for")
        return result
