"""The KBS database schema as ordered migrations, and the row <-> record mapping of both backends.

`MIGRATIONS[i]` takes a database from version `i` to version `i + 1`; version 1 is the whole
schema as it was first shipped. To change the schema, append a `Migration` (never edit one that
has shipped: databases out there already ran it). The version a database is at is the highest
row of `kbs_schema_version`, a table that is created outside the migrations because it is what
says which of them have run. A database at a version newer than `LATEST_VERSION` is refused
with `UnsupportedVersionError` and left untouched: an older KBS must not write to the schema of
a newer one.

The SQL is written once for both dialects. The few differences are placeholders that
`Migration.sql` fills in (`DIALECT_TYPES`):

- `{bytes}`: `BLOB` / `BYTEA`, for sealed secrets, ledger roots and store ids.
- `{serial}`: `INTEGER PRIMARY KEY AUTOINCREMENT` / `BIGINT GENERATED ALWAYS AS IDENTITY
  PRIMARY KEY`, the audit log's order (never reused, so "newest first" is "highest id first").
- `{key}`: `TEXT` / `TEXT COLLATE "C"`, for names that are listed sorted.

A later migration that needs more than a type name per dialect adds a placeholder here.

`{key}` makes PostgreSQL compare and sort names by code point, as SQLite does and as Python's
`sorted` does, whatever the database's locale. Times are `DOUBLE PRECISION` (UNIX seconds) and
counters `BIGINT` in both (SQLite gives them REAL and INTEGER affinity). Every table is named
`kbs_*` so that the KBS can share a database (and its `public` schema) with other software.

The mapping helpers turn rows into the records of `cvmstore.kbs.repository` strictly: a value
of the wrong type (a database edited by hand) raises `FormatError` rather than handing back a
record that breaks its own type. They are shared by the backends and are not a public API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cvmstore.errors import FormatError, UnsupportedVersionError
from cvmstore.kbs.repository import AuditRecord, LedgerState, SessionRecord, VolumeRecord

__all__ = [
    "AUDIT_COLUMNS",
    "DIALECT_TYPES",
    "INT64_MAX",
    "LATEST_VERSION",
    "MIGRATIONS",
    "READ_VERSION",
    "SESSION_COLUMNS",
    "VERSION_TABLE",
    "VOLUME_COLUMNS",
    "Dialect",
    "Migration",
    "as_bytes",
    "as_float",
    "as_int",
    "as_text",
    "audit_from_row",
    "audit_params",
    "check_advance",
    "check_audit",
    "check_int64",
    "pending_migrations",
    "session_from_row",
    "settle_audit",
    "stored_version",
    "volume_from_row",
    "volume_params",
]

Dialect = Literal["sqlite", "postgresql"]

#: What each placeholder of the migration SQL becomes in each dialect.
DIALECT_TYPES: Final[dict[Dialect, dict[str, str]]] = {
    "sqlite": {
        "bytes": "BLOB",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "key": "TEXT",
    },
    "postgresql": {
        "bytes": "BYTEA",
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "key": 'TEXT COLLATE "C"',
    },
}

#: The largest value a BIGINT column holds (generations are u64 in the store format, but a
#: ledger never gets near 2**63 one commit at a time).
INT64_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: from `version - 1` to `version`.

    Attributes:
        version: the schema version this step produces.
        summary: one line for the history.
        statements: the DDL, in order, with `DIALECT_TYPES` placeholders.
    """

    version: int
    summary: str
    statements: tuple[str, ...]

    def sql(self, dialect: Dialect) -> list[str]:
        """The statements written out for `dialect`."""
        types = DIALECT_TYPES[dialect]
        return [statement.format_map(types) for statement in self.statements]


_V1 = Migration(
    version=1,
    summary="sessions, resources, policies, reference values, secrets, admin tokens, ledger",
    statements=(
        """CREATE TABLE kbs_sessions (
            session_id {key} PRIMARY KEY,
            tee TEXT NOT NULL,
            nonce TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            expires DOUBLE PRECISION NOT NULL,
            attestation TEXT,
            token TEXT
        )""",
        "CREATE INDEX kbs_sessions_expires ON kbs_sessions (expires)",
        """CREATE TABLE kbs_resources (
            path {key} PRIMARY KEY,
            sealed {bytes} NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE kbs_policies (
            name {key} PRIMARY KEY,
            document TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE kbs_reference_values (
            kind {key} NOT NULL,
            value {key} NOT NULL,
            added DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (kind, value)
        )""",
        """CREATE TABLE kbs_secrets (
            name {key} PRIMARY KEY,
            sealed {bytes} NOT NULL
        )""",
        """CREATE TABLE kbs_admin_tokens (
            digest {key} PRIMARY KEY,
            label TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL
        )""",
        # The ledger entry lives on the volume row: one conditional UPDATE of this row is
        # the compare-and-swap. generation, root and store_id are all NULL (nothing anchored
        # yet) or all set.
        """CREATE TABLE kbs_volumes (
            name {key} PRIMARY KEY,
            resource_path {key} NOT NULL UNIQUE,
            policy TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            version BIGINT NOT NULL CHECK (version >= 0),
            generation BIGINT CHECK (generation >= 0),
            root {bytes},
            store_id {bytes},
            CHECK ((generation IS NULL AND root IS NULL AND store_id IS NULL)
                OR (generation IS NOT NULL AND root IS NOT NULL AND store_id IS NOT NULL))
        )""",
        # Kept for ever, and deliberately without a foreign key to kbs_volumes: the history
        # of a volume must outlive any later change to it. `id` is the order of the log.
        """CREATE TABLE kbs_ledger_audit (
            id {serial},
            volume {key} NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            evidence TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('advanced', 'conflict')),
            from_version BIGINT NOT NULL,
            to_version BIGINT NOT NULL,
            from_generation BIGINT,
            to_generation BIGINT NOT NULL
        )""",
        "CREATE INDEX kbs_ledger_audit_volume ON kbs_ledger_audit (volume, id)",
    ),
)

#: Every migration, oldest first; `MIGRATIONS[i].version == i + 1`.
MIGRATIONS: Final[tuple[Migration, ...]] = (_V1,)

#: The schema version this code writes.
LATEST_VERSION: Final = MIGRATIONS[-1].version

if [m.version for m in MIGRATIONS] != list(range(1, len(MIGRATIONS) + 1)):
    raise AssertionError("MIGRATIONS must be numbered 1, 2, 3, ... in order")

#: Created (if missing) before the version is read; the same SQL in both dialects.
VERSION_TABLE: Final = """CREATE TABLE IF NOT EXISTS kbs_schema_version (
    version INTEGER PRIMARY KEY,
    applied DOUBLE PRECISION NOT NULL
)"""

#: One row, one column: the version in place, or NULL for an empty database.
READ_VERSION: Final = "SELECT MAX(version) FROM kbs_schema_version"

SESSION_COLUMNS: Final = "session_id, tee, nonce, created, expires, attestation, token"
VOLUME_COLUMNS: Final = "name, resource_path, policy, created, version, generation, root, store_id"
AUDIT_COLUMNS: Final = (
    "volume, at, evidence, outcome, from_version, to_version, from_generation, to_generation"
)


def stored_version(value: object) -> int:
    """The schema version from the result of `READ_VERSION` (0 for an empty table).

    Raises:
        FormatError: the table holds something that is not a version.
    """
    if value is None:
        return 0
    version = as_int(value, "schema version")
    if version < 1:
        raise FormatError(f"the KBS schema version table holds {version}, which is not a version")
    return version


def pending_migrations(current: int, where: str) -> tuple[Migration, ...]:
    """The migrations a database at version `current` still needs, in order.

    Raises:
        UnsupportedVersionError: the database is newer than this code (`where` names it in
            the message).
    """
    if current > LATEST_VERSION:
        raise UnsupportedVersionError(
            f"{where} holds KBS schema version {current}, but this cvmstore knows versions up "
            f"to {LATEST_VERSION} only; upgrade cvmstore (the database was left untouched)"
        )
    return MIGRATIONS[current:]


# records -> parameters --------------------------------------------------------------------


def check_int64(what: str, value: int) -> None:
    """Refuse an integer a BIGINT column cannot hold.

    Raises:
        ValueError: `value` is negative or above `INT64_MAX`.
    """
    if not 0 <= value <= INT64_MAX:
        raise ValueError(f"{what} {value} is outside 0..2**63-1")


def volume_params(volume: VolumeRecord) -> tuple[object, ...]:
    """The `VOLUME_COLUMNS` values of a volume (checked to fit their columns)."""
    check_int64("volume version", volume.version)
    state = volume.state
    if state is not None:
        check_int64("generation", state.generation)
    return (
        volume.name,
        volume.resource_path,
        volume.policy,
        volume.created,
        volume.version,
        None if state is None else state.generation,
        None if state is None else state.root,
        None if state is None else state.store_id,
    )


def check_audit(audit: AuditRecord) -> None:
    """Refuse an audit record whose fields cannot be stored.

    Raises:
        ValueError: an unknown outcome, or a version or generation out of range.
    """
    if audit.outcome not in ("advanced", "conflict"):
        raise ValueError(f"unknown audit outcome {audit.outcome!r}")
    check_int64("from_version", audit.from_version)
    check_int64("to_version", audit.to_version)
    if audit.from_generation is not None:
        check_int64("from_generation", audit.from_generation)
    check_int64("to_generation", audit.to_generation)


def audit_params(audit: AuditRecord) -> tuple[object, ...]:
    """The `AUDIT_COLUMNS` values of an audit record (checked with `check_audit`)."""
    check_audit(audit)
    return (
        audit.volume,
        audit.at,
        audit.evidence,
        audit.outcome,
        audit.from_version,
        audit.to_version,
        audit.from_generation,
        audit.to_generation,
    )


def check_advance(name: str, from_version: int, new: LedgerState, audit: AuditRecord) -> None:
    """Check the arguments of `Repository.advance_ledger` before any database work.

    Raises:
        ValueError: the audit record is about another volume or another generation than
            `new`, or a number is out of range.
    """
    check_int64("from_version", from_version)
    if from_version == INT64_MAX:
        raise ValueError("the ledger version cannot advance past 2**63-1")
    check_int64("generation", new.generation)
    if audit.volume != name:
        raise ValueError(f"the audit record is about volume {audit.volume!r}, not {name!r}")
    if audit.to_generation != new.generation:
        raise ValueError(
            f"the audit record asks for generation {audit.to_generation}, "
            f"but the new state is generation {new.generation}"
        )
    check_audit(audit)


def settle_audit(
    audit: AuditRecord, from_version: int, won: bool, current: VolumeRecord
) -> AuditRecord:
    """The audit record `advance_ledger` writes, given the outcome of its compare-and-swap.

    A win records `from_version -> from_version + 1` and keeps the caller's `from_generation`
    (the caller read it at `from_version`). A conflict records the ledger as it now stands:
    `from_version == to_version ==` the current version and `from_generation` the current
    generation (the AuditRecord contract: "the current one for a conflict").

    Args:
        audit: the caller's record; its outcome and versions are overwritten.
        from_version: the version the compare-and-swap expected.
        won: whether it matched.
        current: the volume as it stands after the compare-and-swap.
    """
    if won:
        return dataclasses.replace(
            audit, outcome="advanced", from_version=from_version, to_version=from_version + 1
        )
    return dataclasses.replace(
        audit,
        outcome="conflict",
        from_version=current.version,
        to_version=current.version,
        from_generation=None if current.state is None else current.state.generation,
    )


# rows -> records --------------------------------------------------------------------------


def session_from_row(row: Sequence[object]) -> SessionRecord:
    """A `SessionRecord` from a row of `SESSION_COLUMNS`.

    Raises:
        FormatError: a value of the wrong type.
    """
    session_id, tee, nonce, created, expires, attestation, token = _columns(row, 7, "session")
    return SessionRecord(
        session_id=as_text(session_id, "session id"),
        tee=as_text(tee, "session tee"),
        nonce=as_text(nonce, "session nonce"),
        created=as_float(created, "session created"),
        expires=as_float(expires, "session expires"),
        attestation=None if attestation is None else as_text(attestation, "session attestation"),
        token=None if token is None else as_text(token, "session token"),
    )


def volume_from_row(row: Sequence[object]) -> VolumeRecord:
    """A `VolumeRecord` from a row of `VOLUME_COLUMNS`.

    Raises:
        FormatError: a value of the wrong type, or a ledger entry only partly set.
    """
    name, path, policy, created, version, generation, root, store_id = _columns(row, 8, "volume")
    anchored = (generation is not None, root is not None, store_id is not None)
    if any(anchored) and not all(anchored):
        raise FormatError(f"volume {name!r}: the ledger entry is only partly set")
    state = None
    if generation is not None:
        state = LedgerState(
            generation=as_int(generation, "ledger generation"),
            root=as_bytes(root, "ledger root"),
            store_id=as_bytes(store_id, "ledger store id"),
        )
    return VolumeRecord(
        name=as_text(name, "volume name"),
        resource_path=as_text(path, "volume resource path"),
        policy=as_text(policy, "volume policy"),
        created=as_float(created, "volume created"),
        version=as_int(version, "ledger version"),
        state=state,
    )


def audit_from_row(row: Sequence[object]) -> AuditRecord:
    """An `AuditRecord` from a row of `AUDIT_COLUMNS`.

    Raises:
        FormatError: a value of the wrong type, or an unknown outcome.
    """
    volume, at, evidence, outcome, from_v, to_v, from_g, to_g = _columns(row, 8, "audit")
    text = as_text(outcome, "audit outcome")
    checked: Literal["advanced", "conflict"]
    if text == "advanced":
        checked = "advanced"
    elif text == "conflict":
        checked = "conflict"
    else:
        raise FormatError(f"unknown audit outcome {text!r}")
    return AuditRecord(
        volume=as_text(volume, "audit volume"),
        at=as_float(at, "audit time"),
        evidence=as_text(evidence, "audit evidence"),
        outcome=checked,
        from_version=as_int(from_v, "audit from_version"),
        to_version=as_int(to_v, "audit to_version"),
        from_generation=None if from_g is None else as_int(from_g, "audit from_generation"),
        to_generation=as_int(to_g, "audit to_generation"),
    )


def _columns(row: Sequence[object], count: int, what: str) -> Sequence[object]:
    if len(row) != count:
        raise FormatError(f"a {what} row has {len(row)} columns, expected {count}")
    return row


def as_text(value: object, what: str) -> str:
    """`value` as text.

    Raises:
        FormatError: it is not text (`what` names it in the message).
    """
    if not isinstance(value, str):
        raise FormatError(f"{what}: expected text, found {type(value).__name__}")
    return value


def as_int(value: object, what: str) -> int:
    """`value` as an integer.

    Raises:
        FormatError: it is not an integer.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"{what}: expected an integer, found {type(value).__name__}")
    return value


def as_float(value: object, what: str) -> float:
    """`value` as a float (an integer is accepted: SQLite may hand back an integral REAL so).

    Raises:
        FormatError: it is not a number.
    """
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise FormatError(f"{what}: expected a number, found {type(value).__name__}")
    return float(value)


def as_bytes(value: object, what: str) -> bytes:
    """`value` as bytes.

    Raises:
        FormatError: it is not bytes.
    """
    if isinstance(value, memoryview):
        return value.tobytes()
    if not isinstance(value, bytes):
        raise FormatError(f"{what}: expected bytes, found {type(value).__name__}")
    return value
