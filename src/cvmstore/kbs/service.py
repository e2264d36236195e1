"""What the KBS does, apart from HTTP: RCAR sessions, key release, the ledger, administration.

Every public method takes decoded request parts and returns plain values, or raises a
`Problem` (an RFC 7807 refusal). `cvmstore.kbs.app` maps HTTP onto these methods; tests call
them directly too. Methods are synchronous (database and crypto) and safe from many threads.

The rollback ledger. A volume's entry holds the secure store's newest anchored commit
(generation, root digest, store id) and a version that counts changes. An attested session
whose evidence satisfies the volume's policy may read it, or advance it by compare-and-swap:
the advance names the state it saw; if the entry moved on meanwhile (another copy of the
image advanced it), the answer is 409, a fork. Every answer is a JWS signed with the KBS's
key and carries the guest's own fresh nonce, so nothing between guest and KBS can forge or
replay one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

from cvmstore.errors import FormatError
from cvmstore.kbs.config import PROTOCOL_VERSION, KbsConfig
from cvmstore.kbs.jose import (
    JoseError,
    b64url_decode,
    jwe_digest,
    jwe_encrypt,
    parse_tee_jwk,
)
from cvmstore.kbs.policy import DEFAULT_POLICY, KbsPolicy, parse_kbs_policy
from cvmstore.kbs.problems import Problem
from cvmstore.kbs.protocol import (
    LEDGER_PATH,
    RESOURCE_PART,
    VOLUME_NAME,
    VOLUME_PREFIX,
    ledger_mac_input,
    volume_resource_path,
)
from cvmstore.kbs.repository import (
    AuditRecord,
    LedgerState,
    Repository,
    SessionRecord,
    VolumeRecord,
)
from cvmstore.kbs.sealing import Sealer
from cvmstore.kbs.tokens import SigningKey
from cvmstore.kbs.verifier import Attested, EvidenceVerifier, snp_claims

__all__ = ["Credentials", "KbsService", "resource_path", "volume_resource_path"]

#: TEE names of Trustee's protocol (kbs-types); all but snp and sample are refused as unsupported.
TRUSTEE_TEES = (
    "snp",
    "tdx",
    "sgx",
    "az-snp-vtpm",
    "az-tdx-vtpm",
    "cca",
    "csv",
    "se",
    "tpm",
    "hygondcu",
    "nvidia",
    "sample",
    "sampledevice",
)
KNOWN_TEES = frozenset(TRUSTEE_TEES)
ATTESTATION_POLICY = "attestation"
REFERENCE_KIND = "snp-measurement"
_SESSION = re.compile(r"[0-9a-f]{32}")
_HEX48 = re.compile(r"[0-9a-fA-F]{96}")
ROOT_SECRET_BYTES = 32
LEDGER_KEY_BYTES = 32
MAX_NONCE_BYTES = 64


@dataclass(frozen=True, slots=True)
class Credentials:
    """How a request proves it is attested: the session cookie and/or a Bearer token."""

    session_id: str | None = None
    bearer: str | None = None


def resource_path(repository: str, kind: str, tag: str) -> str:
    """The canonical "repository/type/tag", each part checked.

    Raises:
        Problem: 400 for a part with characters outside [A-Za-z0-9._-] (or starting with . - _).
    """
    for name, part in (("repository", repository), ("type", kind), ("tag", tag)):
        if not RESOURCE_PART.fullmatch(part):
            raise Problem(400, "InvalidResourcePath", f"resource {name} {part[:40]!r} is not valid")
    return f"{repository}/{kind}/{tag}"


class KbsService:
    """The KBS's behaviour over one repository."""

    def __init__(
        self,
        repository: Repository,
        config: KbsConfig,
        sealer: Sealer,
        verifier: EvidenceVerifier,
        signer: SigningKey,
    ) -> None:
        self.repository = repository
        self.config = config
        self.sealer = sealer
        self.verifier = verifier
        self.signer = signer
        self._sweep_at = 0.0

    # ================================================================== RCAR

    def auth(self, body: object) -> tuple[SessionRecord, dict[str, Any]]:
        """POST /auth: check the request, make a session with a fresh nonce.

        Returns the session (its id goes in the cookie) and the Challenge body.
        """
        request = _object(body, "request")
        version = request.get("version")
        if not isinstance(version, str):
            raise Problem(400, "InvalidRequest", "request.version: expected a string")
        if version != PROTOCOL_VERSION:
            raise Problem(
                401,
                "ProtocolVersion",
                f"protocol version {version[:20]!r} is not supported; this KBS speaks"
                f" {PROTOCOL_VERSION} exactly",
            )
        tee = request.get("tee")
        if not isinstance(tee, str):
            raise Problem(400, "InvalidRequest", "request.tee: expected a string")
        if tee not in KNOWN_TEES:
            raise Problem(400, "UnknownTee", f"unknown TEE {tee[:20]!r}")
        if tee not in ("snp", "sample") or (tee == "sample" and not self.config.allow_sample_tee):
            raise Problem(400, "UnsupportedTee", f"this KBS does not accept TEE {tee!r}")
        now = time.time()
        self._sweep(now)
        session = SessionRecord(
            session_id=secrets.token_hex(16),
            tee=tee,
            nonce=base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
            created=now,
            expires=now + self.config.session_lifetime,
        )
        self.repository.put_session(session)
        return session, {"nonce": session.nonce, "extra-params": ""}

    def attest(
        self, session_id: str | None, body: object
    ) -> tuple[str, SessionRecord, dict[str, str]]:
        """POST /attest: verify the evidence of a pending session.

        Returns its token, the session, and the session's ledger key as a JWE to the guest's
        key (only the attested guest can read it, so only it can MAC ledger advances).
        """
        session = self._session(session_id)
        if session.attestation is not None:
            raise Problem(
                401, "NonceReused", "this session is already attested: its nonce is spent"
            )
        attestation = _object(body, "attestation")
        init_data = attestation.get("init-data")
        if init_data is not None:
            raise Problem(400, "InvalidRequest", "init-data is not supported by this KBS")
        runtime = _object(attestation.get("runtime-data"), "runtime-data")
        nonce = runtime.get("nonce")
        if not isinstance(nonce, str):
            raise Problem(400, "InvalidRequest", "runtime-data.nonce: expected a string")
        if not hmac.compare_digest(nonce.encode(), session.nonce.encode()):
            raise Problem(401, "NonceMismatch", "runtime-data.nonce is not this session's nonce")
        try:
            key = parse_tee_jwk(runtime.get("tee-pubkey"), allow_rsa1_5=self.config.allow_rsa1_5)
        except JoseError as exc:
            raise Problem(400, "InvalidTeePublicKey", f"runtime-data.tee-pubkey: {exc}") from None
        evidence = _object(attestation.get("tee-evidence"), "tee-evidence")
        primary = evidence.get("primary_evidence")
        additional = evidence.get("additional_evidence", "")
        if not isinstance(additional, str):
            raise Problem(400, "InvalidRequest", "additional_evidence: expected a string")
        now = time.time()
        attested = self.verifier.attest(
            session.tee,
            primary,
            nonce=session.nonce,
            key=key,
            additional_evidence=additional,
            policy=self._attestation_policy(),
            references=self._references(),
            now=now,
        )
        annotated: dict[str, Any] = {
            "runtime_data_claims": {"nonce": session.nonce, "tee-pubkey": attested.tee_pubkey},
            "init_data": None,
            "tee": attested.tee,
            "binding": attested.binding,
            "evidence-sha384": attested.evidence_sha384,
        }
        if attested.report is not None:
            annotated["snp"] = snp_claims(attested.report)
        token = self.signer.attestation_token(
            session.session_id, self.config.token_lifetime, annotated
        )
        ledger_key = secrets.token_bytes(LEDGER_KEY_BYTES)
        attested = replace(
            attested, ledger_key=self.sealer.seal(_ledger_key_name(attested), ledger_key)
        )
        # The session lives as long as its token, so a Bearer token finds its evidence.
        expires = max(session.expires, now + self.config.token_lifetime)
        if not self.repository.attest_session(
            session.session_id, session.nonce, attested.document(), token, expires
        ):
            raise Problem(401, "NonceReused", "this session was attested concurrently")
        return token, session, jwe_encrypt(key, ledger_key)

    def resource(self, credentials: Credentials, path: str) -> tuple[dict[str, str], str]:
        """GET /resource: the resource as a JWE to the session's key, and its signature."""
        attested = self._attested(credentials)
        self._authorize_resource(attested, path)
        sealed = self.repository.get_resource(path)
        if sealed is None:
            raise Problem(404, "ResourceNotFound", f"no resource at {path}")
        secret = self.sealer.unseal(f"resource:{path}", sealed)
        try:
            key = parse_tee_jwk(attested.tee_pubkey, allow_rsa1_5=self.config.allow_rsa1_5)
        except JoseError as exc:  # RSA1_5 disabled since this session attested
            raise Problem(
                403, "PolicyDeny", f"the session's key is no longer accepted: {exc}"
            ) from None
        try:
            jwe = jwe_encrypt(key, secret)
        except ValueError:  # a key OpenSSL will not encrypt to, whatever the checks missed
            raise Problem(
                400, "InvalidTeePublicKey", "the session's key cannot be encrypted to"
            ) from None
        return jwe, self.sign_body(path, jwe)

    def sign_body(self, path: str, jwe: dict[str, str]) -> str:
        """A JWS over a resource answer: which path, and the SHA-256 of the JWE's members."""
        return self.signer.sign({"resource": path, "jwe-sha256": jwe_digest(jwe)})

    # ================================================================== the ledger

    def ledger_read(self, credentials: Credentials, volume: str, nonce: object) -> str:
        """GET the ledger entry: a signed answer bound to the guest's nonce."""
        attested = self._attested(credentials)
        record = self._volume_for(attested, volume)
        return self._answer(record, _nonce(nonce), "current")

    def ledger_advance(
        self,
        credentials: Credentials,
        volume: str,
        body: object,
        *,
        raw: bytes,
        mac: str | None,
    ) -> tuple[int, str]:
        """POST a compare-and-swap advance; (200, answer) when it won, (409, answer) if not.

        `raw` is the request body as received and `mac` its Cvmstore-Ledger-Mac header:
        HMAC-SHA256 under the session's ledger key of `ledger_mac_input(path, raw)`. A cookie
        or token alone (which a host without TLS can read) cannot advance a ledger.
        """
        attested = self._attested(credentials)
        if not VOLUME_NAME.fullmatch(volume):
            raise Problem(400, "InvalidRequest", f"{volume[:40]!r} is not a volume name")
        self._check_ledger_mac(attested, f"{LEDGER_PATH}/{volume}", raw, mac)
        request = _object(body, "advance")
        nonce = _nonce(request.get("nonce"))
        expected = _state(request.get("expected"), "expected", None, allow_null=True)
        store_id = _hex(request.get("store-id"), "store-id", 1, 64)
        new = _state(request.get("new"), "new", store_id)
        assert new is not None
        if expected is not None and new.generation <= expected.generation:
            raise Problem(
                400,
                "InvalidRequest",
                f"new.generation {new.generation} does not follow {expected.generation}",
            )
        record = self._volume_for(attested, volume)
        audit = AuditRecord(
            volume=volume,
            at=time.time(),
            evidence=attested.evidence_sha384,
            outcome="conflict",
            from_version=record.version,
            to_version=record.version,
            from_generation=record.state.generation if record.state else None,
            to_generation=new.generation,
        )
        if not _same(record.state, expected, store_id):
            self.repository.record_audit(audit)
            return 409, self._answer(record, nonce, "conflict")
        outcome = self.repository.advance_ledger(volume, record.version, new, audit)
        if not outcome.won:
            return 409, self._answer(outcome.volume, nonce, "conflict")
        return 200, self._answer(outcome.volume, nonce, "advanced")

    def _check_ledger_mac(self, attested: Attested, path: str, raw: bytes, mac: str | None) -> None:
        if attested.ledger_key is None:
            raise Problem(401, "LedgerMacInvalid", "this session has no ledger key: attest again")
        if mac is None:
            raise Problem(
                401,
                "LedgerMacInvalid",
                "a ledger advance needs the Cvmstore-Ledger-Mac header (HMAC-SHA256 under the"
                " session's ledger key)",
            )
        key = self.sealer.unseal(_ledger_key_name(attested), attested.ledger_key)
        expected = hmac.new(key, ledger_mac_input(path, raw), hashlib.sha256).digest()
        try:
            given = b64url_decode(mac, "Cvmstore-Ledger-Mac")
        except JoseError:
            given = b""
        if not hmac.compare_digest(given, expected):
            raise Problem(
                401,
                "LedgerMacInvalid",
                "the ledger advance's MAC does not verify: the attested guest did not make it",
            )

    def _answer(self, record: VolumeRecord, nonce: str, result: str) -> str:
        state = record.state
        return self.signer.sign(
            {
                "volume": record.name,
                "version": record.version,
                "generation": state.generation if state else None,
                "root": state.root.hex() if state else None,
                "store-id": state.store_id.hex() if state else None,
                "nonce": nonce,
                "result": result,
            }
        )

    def _volume_for(self, attested: Attested, volume: str) -> VolumeRecord:
        if not VOLUME_NAME.fullmatch(volume):
            raise Problem(400, "InvalidRequest", f"{volume[:40]!r} is not a volume name")
        record = self.repository.get_volume(volume)
        if record is None:
            raise Problem(404, "VolumeNotFound", f"no volume named {volume!r}")
        policy = parse_kbs_policy(record.policy, source=f"volume {volume}")
        self.verifier.authorize(attested, policy, self._references(), f"volume {volume}")
        return record

    # ================================================================== administration

    def check_admin(self, bearer: str | None) -> None:
        """Refuse a request without a registered admin token (401)."""
        if not bearer:
            raise Problem(401, "AdminUnauthorized", "an admin token is required (Bearer)")
        digest = hashlib.sha256(bearer.encode("utf-8", "replace")).hexdigest()
        if not self.repository.has_admin_token(digest):
            raise Problem(401, "AdminUnauthorized", "the admin token is not valid")

    def set_resource(self, path: str, value: bytes) -> None:
        """Create or replace a resource (sealed under the master key)."""
        if path.startswith(VOLUME_PREFIX):
            raise Problem(409, "Conflict", "volume root secrets are made by `volume create`")
        if not value:
            raise Problem(400, "InvalidRequest", "a resource cannot be empty")
        self.repository.put_resource(path, self.sealer.seal(f"resource:{path}", value), time.time())

    def delete_resource(self, path: str) -> None:
        """Delete a resource (404 if there is none)."""
        if path.startswith(VOLUME_PREFIX):
            raise Problem(409, "Conflict", "a volume's root secret goes with the volume")
        if not self.repository.delete_resource(path):
            raise Problem(404, "ResourceNotFound", f"no resource at {path}")
        self.repository.delete_policy(f"resource:{path}")

    def set_policy(self, text: bytes) -> KbsPolicy:
        """Replace the attestation policy (checked at /attest)."""
        policy = _parse_policy(text, "attestation policy")
        self.repository.put_policy(ATTESTATION_POLICY, policy.document(), time.time())
        return policy

    def set_resource_policy(self, path: str, text: bytes) -> KbsPolicy:
        """Set which evidence may read the resource at `path` (a volume's: its policy)."""
        policy = _parse_policy(text, f"policy of {path}")
        prefix = VOLUME_PREFIX
        if path.startswith(prefix):
            if not self.repository.set_volume_policy(path[len(prefix) :], policy.document()):
                raise Problem(404, "VolumeNotFound", f"no volume for {path}")
        else:
            self.repository.put_policy(f"resource:{path}", policy.document(), time.time())
        return policy

    def delete_resource_policy(self, path: str) -> None:
        """Remove a resource's own policy (404 if it has none)."""
        if not self.repository.delete_policy(f"resource:{path}"):
            raise Problem(404, "NotFound", f"no policy for {path}")

    def add_reference(self, measurement: object) -> bool:
        """Register a reference launch measurement; False when already registered."""
        if not isinstance(measurement, str) or not _HEX48.fullmatch(measurement):
            raise Problem(400, "InvalidRequest", "a measurement is 96 hex digits (SHA-384)")
        return self.repository.add_reference(REFERENCE_KIND, measurement.lower(), time.time())

    def delete_reference(self, measurement: str) -> None:
        """Withdraw a reference measurement (404 if it was not registered)."""
        if not _HEX48.fullmatch(measurement) or not self.repository.delete_reference(
            REFERENCE_KIND, measurement.lower()
        ):
            raise Problem(404, "NotFound", "that measurement is not registered")

    def create_volume(self, name: object, policy_text: object) -> VolumeRecord:
        """Make a volume: a random root secret (a resource), its policy, a ledger entry at 0."""
        if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
            raise Problem(
                400,
                "InvalidRequest",
                "a volume name is 1-64 of [A-Za-z0-9._-], not starting with . - _",
            )
        if not isinstance(policy_text, str):
            raise Problem(400, "InvalidRequest", "policy: expected the policy document as text")
        policy = _parse_policy(policy_text.encode(), f"policy of volume {name}")
        path = volume_resource_path(name)
        record = VolumeRecord(name, path, policy.document(), time.time())
        secret = secrets.token_bytes(ROOT_SECRET_BYTES)
        if not self.repository.create_volume(record, self.sealer.seal(f"resource:{path}", secret)):
            raise Problem(409, "Conflict", f"volume {name!r} already exists")
        return record

    def volume_info(self, name: str) -> dict[str, Any]:
        """A volume's ledger entry and audit log (no secret)."""
        record = self.repository.get_volume(name) if VOLUME_NAME.fullmatch(name) else None
        if record is None:
            raise Problem(404, "VolumeNotFound", f"no volume named {name!r}")
        return volume_document(record, self.repository.audit_log(name))

    def policies(self) -> dict[str, Any]:
        """The attestation policy and the registered references."""
        stored = self.repository.get_policy(ATTESTATION_POLICY)
        policy = parse_kbs_policy(stored) if stored else DEFAULT_POLICY
        return {
            "attestation-policy": _json_document(policy),
            "default": stored is None,
            "references": self.repository.list_references(REFERENCE_KIND),
        }

    # ================================================================== helpers

    def _session(self, session_id: str | None) -> SessionRecord:
        if session_id is None:
            raise Problem(401, "MissingSession", "no kbs-session-id cookie: start with /auth")
        if not _SESSION.fullmatch(session_id):
            raise Problem(401, "InvalidSession", "the kbs-session-id cookie is malformed")
        session = self.repository.get_session(session_id)
        if session is None:
            raise Problem(401, "InvalidSession", "unknown session: start again with /auth")
        if session.expires < time.time():
            raise Problem(401, "SessionExpired", "the session expired: start again with /auth")
        return session

    def _attested(self, credentials: Credentials) -> Attested:
        if credentials.bearer is not None:
            try:
                claims = self.signer.verify(credentials.bearer, require=("iat", "exp", "jti"))
            except JoseError as exc:
                raise Problem(
                    401, "TokenInvalid", f"the attestation token is refused: {exc}"
                ) from None
            session_id = claims["jti"]
            session = self.repository.get_session(str(session_id))
            if session is None or session.attestation is None:
                raise Problem(401, "TokenInvalid", "the attestation token's session is gone")
            if session.expires < time.time():  # exact, where the JWT check allows clock skew
                raise Problem(401, "TokenInvalid", "the attestation token expired")
        else:
            session = self._session(credentials.session_id)
            if session.attestation is None:
                raise Problem(401, "NotAttested", "the session is not attested: POST /attest first")
        return Attested.from_document(session.attestation)

    def _authorize_resource(self, attested: Attested, path: str) -> None:
        prefix = VOLUME_PREFIX
        if path.startswith(prefix):
            self._volume_for(attested, path[len(prefix) :])
            return
        stored = self.repository.get_policy(f"resource:{path}")
        policy = (
            parse_kbs_policy(stored, source=f"policy of {path}")
            if stored
            else self._attestation_policy()
        )
        self.verifier.authorize(attested, policy, self._references(), f"resource {path}")

    def _attestation_policy(self) -> KbsPolicy:
        stored = self.repository.get_policy(ATTESTATION_POLICY)
        return parse_kbs_policy(stored, source="attestation policy") if stored else DEFAULT_POLICY

    def _references(self) -> list[bytes]:
        return [bytes.fromhex(v) for v in self.repository.list_references(REFERENCE_KIND)]

    def _sweep(self, now: float) -> None:
        # Expired sessions go at most once a minute per process: cheap, and bounded.
        if now - self._sweep_at > 60:
            self._sweep_at = now
            self.repository.delete_expired_sessions(now)


def _ledger_key_name(attested: Attested) -> str:
    # Every session's evidence is unique (it binds the session's nonce), so is this name.
    return f"ledger-key:{attested.evidence_sha384}"


def volume_document(record: VolumeRecord, audit: list[AuditRecord]) -> dict[str, Any]:
    """A volume as JSON for the admin API."""
    state = record.state
    return {
        "name": record.name,
        "resource": record.resource_path,
        "created": record.created,
        "version": record.version,
        "generation": state.generation if state else None,
        "root": state.root.hex() if state else None,
        "store-id": state.store_id.hex() if state else None,
        "policy": _json_document(parse_kbs_policy(record.policy)),
        "audit": [
            {
                "at": a.at,
                "outcome": a.outcome,
                "evidence-sha384": a.evidence,
                "from-version": a.from_version,
                "to-version": a.to_version,
                "from-generation": a.from_generation,
                "to-generation": a.to_generation,
            }
            for a in audit
        ],
    }


def _json_document(policy: KbsPolicy) -> dict[str, object]:
    document: dict[str, object] = json.loads(policy.document())
    return document


def _parse_policy(text: bytes, source: str) -> KbsPolicy:
    try:
        return parse_kbs_policy(text, source=source)
    except FormatError as exc:
        raise Problem(400, "InvalidPolicy", str(exc)) from None


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Problem(400, "InvalidRequest", f"{where}: expected a JSON object")
    return value


def _nonce(value: object) -> str:
    if not isinstance(value, str):
        raise Problem(400, "InvalidRequest", "nonce: expected a base64url string")
    try:
        raw = b64url_decode(value, "nonce")
    except JoseError as exc:
        raise Problem(400, "InvalidRequest", str(exc)) from None
    if not 16 <= len(raw) <= MAX_NONCE_BYTES:
        raise Problem(
            400, "InvalidRequest", f"nonce: 16 to {MAX_NONCE_BYTES} bytes, not {len(raw)}"
        )
    return value


def _hex(value: object, where: str, low: int, high: int) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"(?:[0-9a-f]{2})+", value):
        raise Problem(400, "InvalidRequest", f"{where}: expected lowercase hex")
    raw = bytes.fromhex(value)
    if not low <= len(raw) <= high:
        raise Problem(400, "InvalidRequest", f"{where}: {low} to {high} bytes, not {len(raw)}")
    return raw


def _state(
    value: object, where: str, store_id: bytes | None, *, allow_null: bool = False
) -> LedgerState | None:
    if value is None and allow_null:
        return None
    state = _object(value, where)
    if set(state) != {"generation", "root"}:
        raise Problem(400, "InvalidRequest", f"{where}: expected exactly generation and root")
    generation = state["generation"]
    if (
        not isinstance(generation, int)
        or isinstance(generation, bool)
        or not 0 <= generation < 2**63
    ):
        raise Problem(400, "InvalidRequest", f"{where}.generation: expected an integer >= 0")
    root = _hex(state["root"], f"{where}.root", 16, 64)
    return LedgerState(generation, root, store_id or b"")


def _same(current: LedgerState | None, expected: LedgerState | None, store_id: bytes) -> bool:
    if current is None or expected is None:
        return current is None and expected is None
    return (
        current.generation == expected.generation
        and hmac.compare_digest(current.root, expected.root)
        and hmac.compare_digest(current.store_id, store_id)
    )
