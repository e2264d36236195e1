"""The KBS's one storage interface, and the records it keeps.

Two backends implement `Repository`: SQLite (`cvmstore.kbs.storage.sqlite`, the embedded
default) and PostgreSQL (`cvmstore.kbs.storage.postgres`, for replicas). Everything a KBS
process knows lives here, sessions included, so any number of processes sharing one database
serve one fleet. Secrets arrive already sealed under the master key (`cvmstore.kbs.sealing`):
a backend never sees a plaintext secret.

Every method is one database transaction. Times are UNIX seconds (float).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "AdvanceOutcome",
    "AuditRecord",
    "LedgerState",
    "Repository",
    "SessionRecord",
    "VolumeRecord",
]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """An RCAR session: made by /auth, attested by /attest.

    Attributes:
        session_id: 32 lowercase hex digits (the `kbs-session-id` cookie).
        tee: the TEE named in the request ("snp", "sample").
        nonce: the challenge nonce exactly as sent (standard base64 text).
        created: when /auth made it.
        expires: after this the session is refused (and may be deleted).
        attestation: None until attested; then a JSON document (text) with what the resource
            and ledger endpoints need to re-evaluate policy (see `cvmstore.kbs.service`).
        token: the attestation token issued at /attest, or None.
    """

    session_id: str
    tee: str
    nonce: str
    created: float
    expires: float
    attestation: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerState:
    """The anchored commit of a volume: the secure store's (generation, digest).

    Attributes:
        generation: the newest anchored commit's generation.
        root: its digest (the store's superblock digest).
        store_id: the secure store's volume id, bound at the first advance.
    """

    generation: int
    root: bytes
    store_id: bytes


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    """A volume: its root-secret resource, its policy and its ledger entry.

    Attributes:
        name: the volume's name (`[A-Za-z0-9][A-Za-z0-9._-]{0,63}`).
        resource_path: where its root secret lives ("cvmstore/volume/<name>").
        policy: the KBS policy document (canonical JSON text) guarding key and ledger.
        created: creation time.
        version: the ledger version: 0 at creation, +1 at every advance.
        state: the anchored commit, None until the first advance.
    """

    name: str
    resource_path: str
    policy: str
    created: float
    version: int = 0
    state: LedgerState | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One attempt to change a ledger entry, kept for ever.

    Attributes:
        volume: the volume's name.
        at: when.
        evidence: hex SHA-384 of the evidence of the session that asked ("admin" for admin
            changes).
        outcome: "advanced" or "conflict".
        from_version: the ledger version the change started from (the current one for a
            conflict).
        to_version: the version it made (equal to from_version for a conflict).
        from_generation: the anchored generation before, None when nothing was anchored.
        to_generation: the generation asked for.
    """

    volume: str
    at: float
    evidence: str
    outcome: Literal["advanced", "conflict"]
    from_version: int
    to_version: int
    from_generation: int | None
    to_generation: int


@dataclass(frozen=True, slots=True)
class AdvanceOutcome:
    """What `Repository.advance_ledger` did: `won` and the entry as it now stands."""

    won: bool
    volume: VolumeRecord


class Repository(Protocol):
    """The KBS's persistent state; one backend per database kind."""

    backend: str  # "sqlite" or "postgresql"

    def migrate(self) -> int:
        """Create or upgrade the schema (idempotent, safe from several processes at once).

        Returns the schema version now in place.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    # sessions -----------------------------------------------------------------------

    def put_session(self, session: SessionRecord) -> None:
        """Insert a new session (the id is fresh and random)."""
        ...

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None (expiry is the caller's check)."""
        ...

    def attest_session(
        self, session_id: str, nonce: str, attestation: str, token: str, expires: float
    ) -> bool:
        """Mark a pending session attested, if it is still pending with this nonce.

        Returns False (and changes nothing) when the session is gone, already attested or
        has another nonce: a compare-and-swap, so a nonce is consumed at most once.
        """
        ...

    def delete_expired_sessions(self, now: float) -> int:
        """Delete sessions whose expiry is before `now`; returns how many."""
        ...

    # resources (sealed) ---------------------------------------------------------------

    def put_resource(self, path: str, sealed: bytes, now: float) -> None:
        """Create or replace the resource at `path` ("repository/type/tag")."""
        ...

    def get_resource(self, path: str) -> bytes | None:
        """The sealed resource, or None."""
        ...

    def delete_resource(self, path: str) -> bool:
        """Delete it; False when there was none."""
        ...

    def list_resources(self) -> list[str]:
        """Every resource path, sorted."""
        ...

    # policies (documents as text) ------------------------------------------------------

    def put_policy(self, name: str, document: str, now: float) -> None:
        """Create or replace a policy: "attestation" or "resource:<path>"."""
        ...

    def get_policy(self, name: str) -> str | None:
        """The policy document, or None."""
        ...

    def delete_policy(self, name: str) -> bool:
        """Delete it; False when there was none."""
        ...

    # reference values ------------------------------------------------------------------

    def add_reference(self, kind: str, value: str, now: float) -> bool:
        """Register a reference value (e.g. kind "snp-measurement", value lowercase hex).

        Returns False when it was already registered.
        """
        ...

    def delete_reference(self, kind: str, value: str) -> bool:
        """Withdraw it; False when it was not registered."""
        ...

    def list_references(self, kind: str) -> list[str]:
        """Every value of `kind`, sorted."""
        ...

    # sealed secrets of the KBS itself (the token signing key) ----------------------------

    def get_secret(self, name: str) -> bytes | None:
        """A sealed KBS secret, or None."""
        ...

    def put_secret_if_absent(self, name: str, sealed: bytes) -> bytes:
        """Store `sealed` unless `name` exists; return what is stored (first writer wins)."""
        ...

    # admin tokens (only their SHA-256 is stored) -----------------------------------------

    def add_admin_token(self, digest: str, label: str, now: float) -> None:
        """Register an admin token by its hex SHA-256."""
        ...

    def has_admin_token(self, digest: str) -> bool:
        """Whether a token with this hex SHA-256 is registered."""
        ...

    def count_admin_tokens(self) -> int:
        """How many admin tokens exist."""
        ...

    # volumes and the rollback ledger -----------------------------------------------------

    def create_volume(self, volume: VolumeRecord, sealed_secret: bytes) -> bool:
        """Create the volume and its root-secret resource in one transaction.

        Returns False (changing nothing) when a volume of that name or a resource at its
        path already exists.
        """
        ...

    def get_volume(self, name: str) -> VolumeRecord | None:
        """The volume with its ledger entry, or None."""
        ...

    def list_volumes(self) -> list[str]:
        """Every volume name, sorted."""
        ...

    def set_volume_policy(self, name: str, policy: str) -> bool:
        """Replace a volume's policy; False when there is no such volume."""
        ...

    def advance_ledger(
        self,
        name: str,
        from_version: int,
        new: LedgerState,
        audit: AuditRecord,
    ) -> AdvanceOutcome:
        """Compare-and-swap: set `new` and version+1 if the ledger is still at `from_version`.

        The caller has checked `new` against the state it read at `from_version`. The audit
        record is written in the same transaction whatever the outcome; its outcome and
        to_version fields are set here ("advanced", from_version + 1 when won; "conflict",
        the current version when lost).

        Raises:
            KeyError: there is no such volume.
        """
        ...

    def record_audit(self, audit: AuditRecord) -> None:
        """Record an audit entry by itself (a conflict found before any write)."""
        ...

    def audit_log(self, name: str, limit: int = 100) -> list[AuditRecord]:
        """The newest `limit` audit entries of a volume, newest first."""
        ...
