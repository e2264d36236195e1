"""`PostgresRepository`: the KBS on PostgreSQL (psycopg 3 and a `psycopg_pool` pool).

For several KBS replicas sharing one database. Every method is one transaction on a pooled
connection at PostgreSQL's default READ COMMITTED isolation, which is enough because every
check-and-change is a single statement: the ledger's compare-and-swap is one conditional
UPDATE (`WHERE name = %s AND version = %s`; a concurrent writer's committed change makes it
match no row), a nonce is consumed by one conditional UPDATE, and inserts that may race use
`INSERT ... ON CONFLICT DO NOTHING`. `migrate` holds a transaction-scoped advisory lock, so
processes migrating at once run one after the other.

Every connection gets a connect timeout (`CONNECT_TIMEOUT`, unless the URL sets
`connect_timeout`), a `statement_timeout` (`STATEMENT_TIMEOUT`), and, when the repository is
given a `schema`, that schema as its `search_path` (the schema is created if missing; tests use
this to get a database of their own). The constructor connects once to fail early, with
libpq's own reason, on a wrong URL, host or password.

Errors: a database that cannot be reached, or a statement that fails for an environmental
reason (timeout, lost connection, server shutdown), raises `DeviceError`: the database is the
storage below the KBS. Messages name the database by host, port and name, never the password
(and libpq's text is scrubbed of it, should it ever contain it).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from cvmstore.errors import DeviceError, FormatError, StateError
from cvmstore.kbs.repository import (
    AdvanceOutcome,
    AuditRecord,
    LedgerState,
    SessionRecord,
    VolumeRecord,
)
from cvmstore.kbs.storage import redact_url, schema

__all__ = ["CONNECT_TIMEOUT", "POOL_TIMEOUT", "STATEMENT_TIMEOUT", "PostgresRepository"]

#: Seconds to establish a connection (libpq `connect_timeout`).
CONNECT_TIMEOUT = 10
#: Seconds any one statement may run (PostgreSQL `statement_timeout`).
STATEMENT_TIMEOUT = 10
#: Seconds a request waits for a free pooled connection.
POOL_TIMEOUT = 30.0

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_Connection = psycopg.Connection[tuple[Any, ...]]
_Cursor = psycopg.Cursor[tuple[Any, ...]]


class PostgresRepository:
    """A `Repository` in a PostgreSQL database; call `migrate` once before use."""

    backend: str = "postgresql"

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 8) -> None:
        """Connect to the database at `url` and open a pool of up to `pool_size` connections.

        Args:
            url: a libpq URL (`postgresql://user:password@host:port/dbname?...`).
            schema: a PostgreSQL schema to create if missing and to use as `search_path`
                (lowercase letters, digits and `_`); None uses the URL's default.
            pool_size: the most connections held at once.

        Raises:
            ValueError: `schema` is not a plain lowercase identifier, or `pool_size` < 1.
            FormatError: the URL cannot be parsed (shown redacted).
            DeviceError: the database cannot be reached or refuses the connection.
        """
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
        self._secrets = _password_candidates(url)
        # A password with an unescaped '/', '?', '#' or '@' makes libpq read part of it as
        # host, port or database name, and echo that part in its messages: then only the
        # redacted URL and the error's class are shown.
        self._withhold = _ambiguous_user_part(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise FormatError(
                f"malformed PostgreSQL URL {redact_url(url)!r}: {self._detail(exc)}"
            ) from None
        password = params.get("password")
        if isinstance(password, str) and password:
            self._secrets = sorted({*self._secrets, password}, key=len, reverse=True)
        if self._withhold:
            self._where = f"PostgreSQL database {redact_url(url)}"
        else:
            self._where = self._scrub(_describe(params))
        self._schema = schema
        self._closed = False
        self._migrate_lock = _lock_key(f"cvmstore.kbs.migrate:{schema or ''}")
        connect_kwargs: dict[str, Any] = {}
        if "connect_timeout" not in params:
            connect_kwargs["connect_timeout"] = CONNECT_TIMEOUT

        # One direct connection first: it fails with libpq's reason where the pool would only
        # time out, and it creates the schema (under the migration lock, since two processes
        # creating it at once would collide).
        with self._translated(), psycopg.connect(url, **connect_kwargs) as probe:
            self._configure(probe)
            if schema is not None:
                probe.execute("SELECT pg_advisory_xact_lock(%s)", (self._migrate_lock,))
                probe.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
                probe.commit()

        self._pool: ConnectionPool[_Connection] = ConnectionPool(
            url,
            kwargs=connect_kwargs,
            min_size=1,
            max_size=pool_size,
            open=False,
            configure=self._configure,
            check=ConnectionPool.check_connection,
            name="cvmstore-kbs",
            timeout=POOL_TIMEOUT,
        )
        try:
            with self._translated():
                self._pool.open(wait=True, timeout=float(CONNECT_TIMEOUT))
        except BaseException:
            self._pool.close()
            raise

    @property
    def schema(self) -> str | None:
        """The PostgreSQL schema in use, when one was given."""
        return self._schema

    def __repr__(self) -> str:
        schema_part = "" if self._schema is None else f", schema={self._schema!r}"
        return f"PostgresRepository(<{self._where}>{schema_part})"

    # connections and transactions ------------------------------------------------------

    def _configure(self, connection: _Connection) -> None:
        """Per-connection settings; leaves the connection idle."""
        connection.execute(
            sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{STATEMENT_TIMEOUT}s"))
        )
        if self._schema is not None:
            connection.execute(
                sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema))
            )
        connection.commit()

    def _scrub(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message

    def _detail(self, exc: psycopg.Error) -> str:
        """Psycopg's message, scrubbed of the password (or withheld, see `__init__`)."""
        if self._withhold:
            return (
                f"{type(exc).__name__} (libpq's message is withheld because the URL's user part "
                "holds an unescaped '/', '?', '#' or '@': percent-encode them)"
            )
        return self._scrub(str(exc).strip() or type(exc).__name__)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Turn psycopg's environment failures into `DeviceError`, without the password."""
        try:
            yield
        except psycopg.OperationalError as exc:
            detail = self._detail(exc)
            error = DeviceError(f"{self._where}: {detail}")
            if self._withhold or detail != str(exc).strip():
                raise error from None  # the original would show what was hidden
            raise error from exc

    @contextmanager
    def _transaction(self) -> Iterator[_Cursor]:
        """One transaction on a pooled connection: committed on return, rolled back on error."""
        if self._closed:
            raise StateError(f"the KBS repository ({self._where}) is closed")
        with (
            self._translated(),
            self._pool.connection() as connection,
            connection.cursor() as cursor,
        ):
            yield cursor

    def _rows(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._transaction() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()

    # lifecycle -------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the schema; see `Repository.migrate`.

        Runs in one transaction holding `pg_advisory_xact_lock`, so a second process waits
        for the first and then finds nothing left to do (PostgreSQL DDL is transactional).

        Raises:
            UnsupportedVersionError: the database is newer than this code (left untouched).
            DeviceError: the database cannot be written.
        """
        where = self._where if self._schema is None else f"{self._where}, schema {self._schema}"
        with self._transaction() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self._migrate_lock,))
            cursor.execute(schema.VERSION_TABLE)
            cursor.execute(schema.READ_VERSION)
            current = schema.stored_version(_one(cursor)[0])
            for migration in schema.pending_migrations(current, where):
                for statement in migration.sql("postgresql"):
                    cursor.execute(statement)
                cursor.execute(
                    "INSERT INTO kbs_schema_version (version, applied) VALUES (%s, %s)",
                    (migration.version, time.time()),
                )
        return schema.LATEST_VERSION

    def close(self) -> None:
        """Close the pool; later calls raise `StateError`. Idempotent."""
        if not self._closed:
            self._closed = True
            self._pool.close()

    # sessions --------------------------------------------------------------------------

    def put_session(self, session: SessionRecord) -> None:
        """Insert a new session.

        Raises:
            ValueError: a session with this id exists already.
        """
        with self._transaction() as cursor:
            try:
                cursor.execute(
                    f"INSERT INTO kbs_sessions ({schema.SESSION_COLUMNS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        session.session_id,
                        session.tee,
                        session.nonce,
                        session.created,
                        session.expires,
                        session.attestation,
                        session.token,
                    ),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise ValueError(f"session {session.session_id!r} exists already") from exc

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        rows = self._rows(
            f"SELECT {schema.SESSION_COLUMNS} FROM kbs_sessions WHERE session_id = %s",
            (session_id,),
        )
        return schema.session_from_row(rows[0]) if rows else None

    def attest_session(
        self, session_id: str, nonce: str, attestation: str, token: str, expires: float
    ) -> bool:
        """Mark a pending session attested; one conditional UPDATE (see `Repository`)."""
        with self._transaction() as cursor:
            cursor.execute(
                "UPDATE kbs_sessions SET attestation = %s, token = %s, expires = %s "
                "WHERE session_id = %s AND nonce = %s AND attestation IS NULL",
                (attestation, token, expires, session_id, nonce),
            )
            return cursor.rowcount == 1

    def delete_expired_sessions(self, now: float) -> int:
        """Delete sessions whose expiry is before `now`; returns how many."""
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM kbs_sessions WHERE expires < %s", (now,))
            return cursor.rowcount

    # resources -------------------------------------------------------------------------

    def put_resource(self, path: str, sealed: bytes, now: float) -> None:
        """Create or replace the resource at `path`."""
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO kbs_resources (path, sealed, created, updated) "
                "VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (path) DO UPDATE SET sealed = excluded.sealed, "
                "updated = excluded.updated",
                (path, sealed, now, now),
            )

    def get_resource(self, path: str) -> bytes | None:
        """The sealed resource, or None."""
        rows = self._rows("SELECT sealed FROM kbs_resources WHERE path = %s", (path,))
        return schema.as_bytes(rows[0][0], "sealed resource") if rows else None

    def delete_resource(self, path: str) -> bool:
        """Delete it; False when there was none."""
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM kbs_resources WHERE path = %s", (path,))
            return cursor.rowcount == 1

    def list_resources(self) -> list[str]:
        """Every resource path, sorted (by code point)."""
        rows = self._rows("SELECT path FROM kbs_resources ORDER BY path")
        return [schema.as_text(row[0], "resource path") for row in rows]

    # policies --------------------------------------------------------------------------

    def put_policy(self, name: str, document: str, now: float) -> None:
        """Create or replace a policy."""
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO kbs_policies (name, document, created, updated) "
                "VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET document = excluded.document, "
                "updated = excluded.updated",
                (name, document, now, now),
            )

    def get_policy(self, name: str) -> str | None:
        """The policy document, or None."""
        rows = self._rows("SELECT document FROM kbs_policies WHERE name = %s", (name,))
        return schema.as_text(rows[0][0], "policy document") if rows else None

    def delete_policy(self, name: str) -> bool:
        """Delete it; False when there was none."""
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM kbs_policies WHERE name = %s", (name,))
            return cursor.rowcount == 1

    # reference values ------------------------------------------------------------------

    def add_reference(self, kind: str, value: str, now: float) -> bool:
        """Register a reference value; False when it was already registered."""
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO kbs_reference_values (kind, value, added) VALUES (%s, %s, %s) "
                "ON CONFLICT (kind, value) DO NOTHING",
                (kind, value, now),
            )
            return cursor.rowcount == 1

    def delete_reference(self, kind: str, value: str) -> bool:
        """Withdraw it; False when it was not registered."""
        with self._transaction() as cursor:
            cursor.execute(
                "DELETE FROM kbs_reference_values WHERE kind = %s AND value = %s", (kind, value)
            )
            return cursor.rowcount == 1

    def list_references(self, kind: str) -> list[str]:
        """Every value of `kind`, sorted (by code point)."""
        rows = self._rows(
            "SELECT value FROM kbs_reference_values WHERE kind = %s ORDER BY value", (kind,)
        )
        return [schema.as_text(row[0], "reference value") for row in rows]

    # sealed secrets --------------------------------------------------------------------

    def get_secret(self, name: str) -> bytes | None:
        """A sealed KBS secret, or None."""
        rows = self._rows("SELECT sealed FROM kbs_secrets WHERE name = %s", (name,))
        return schema.as_bytes(rows[0][0], "sealed secret") if rows else None

    def put_secret_if_absent(self, name: str, sealed: bytes) -> bytes:
        """Store `sealed` unless `name` exists; return what is stored (first writer wins).

        A racing INSERT waits for the other transaction and then does nothing; the SELECT
        after it (a new snapshot at READ COMMITTED) sees the winner's row.
        """
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO kbs_secrets (name, sealed) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, sealed),
            )
            cursor.execute("SELECT sealed FROM kbs_secrets WHERE name = %s", (name,))
            return schema.as_bytes(_one(cursor)[0], "sealed secret")

    # admin tokens ----------------------------------------------------------------------

    def add_admin_token(self, digest: str, label: str, now: float) -> None:
        """Register an admin token by its hex SHA-256.

        Raises:
            ValueError: a token with this digest is registered already.
        """
        with self._transaction() as cursor:
            try:
                cursor.execute(
                    "INSERT INTO kbs_admin_tokens (digest, label, created) VALUES (%s, %s, %s)",
                    (digest, label, now),
                )
            except psycopg.errors.UniqueViolation as exc:
                raise ValueError("this admin token is registered already") from exc

    def has_admin_token(self, digest: str) -> bool:
        """Whether a token with this hex SHA-256 is registered."""
        return bool(self._rows("SELECT 1 FROM kbs_admin_tokens WHERE digest = %s", (digest,)))

    def count_admin_tokens(self) -> int:
        """How many admin tokens exist."""
        rows = self._rows("SELECT COUNT(*) FROM kbs_admin_tokens")
        return schema.as_int(rows[0][0], "admin token count")

    # volumes and the ledger ------------------------------------------------------------

    def create_volume(self, volume: VolumeRecord, sealed_secret: bytes) -> bool:
        """Create the volume and its root-secret resource in one transaction.

        Returns False (changing nothing: the transaction is rolled back) when the name or the
        resource path is taken.
        """
        params = schema.volume_params(volume)
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO kbs_resources (path, sealed, created, updated) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (volume.resource_path, sealed_secret, volume.created, volume.created),
            )
            if cursor.rowcount != 1:
                return False
            cursor.execute(
                f"INSERT INTO kbs_volumes ({schema.VOLUME_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                params,
            )
            if cursor.rowcount != 1:
                cursor.connection.rollback()  # drop the resource inserted above
                return False
            return True

    def get_volume(self, name: str) -> VolumeRecord | None:
        """The volume with its ledger entry, or None."""
        rows = self._rows(
            f"SELECT {schema.VOLUME_COLUMNS} FROM kbs_volumes WHERE name = %s", (name,)
        )
        return schema.volume_from_row(rows[0]) if rows else None

    def list_volumes(self) -> list[str]:
        """Every volume name, sorted (by code point)."""
        rows = self._rows("SELECT name FROM kbs_volumes ORDER BY name")
        return [schema.as_text(row[0], "volume name") for row in rows]

    def set_volume_policy(self, name: str, policy: str) -> bool:
        """Replace a volume's policy; False when there is no such volume."""
        with self._transaction() as cursor:
            cursor.execute("UPDATE kbs_volumes SET policy = %s WHERE name = %s", (policy, name))
            return cursor.rowcount == 1

    def advance_ledger(
        self,
        name: str,
        from_version: int,
        new: LedgerState,
        audit: AuditRecord,
    ) -> AdvanceOutcome:
        """Compare-and-swap the ledger entry; see `Repository.advance_ledger`.

        The swap is one conditional UPDATE; when another transaction changed the row first,
        PostgreSQL re-checks the condition on the committed row, which no longer matches. The
        audit record (settled by `schema.settle_audit`) is inserted in the same transaction.

        Raises:
            KeyError: there is no such volume (nothing is written).
            ValueError: the audit record does not match `name` and `new`.
        """
        schema.check_advance(name, from_version, new, audit)
        with self._transaction() as cursor:
            cursor.execute(
                "UPDATE kbs_volumes SET version = version + 1, generation = %s, root = %s, "
                f"store_id = %s WHERE name = %s AND version = %s RETURNING {schema.VOLUME_COLUMNS}",
                (new.generation, new.root, new.store_id, name, from_version),
            )
            row = cursor.fetchone()
            won = row is not None
            if row is None:
                cursor.execute(
                    f"SELECT {schema.VOLUME_COLUMNS} FROM kbs_volumes WHERE name = %s", (name,)
                )
                row = cursor.fetchone()
                if row is None:
                    raise KeyError(name)
            current = schema.volume_from_row(row)
            settled = schema.settle_audit(audit, from_version, won, current)
            cursor.execute(
                f"INSERT INTO kbs_ledger_audit ({schema.AUDIT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                schema.audit_params(settled),
            )
        return AdvanceOutcome(won=won, volume=current)

    def record_audit(self, audit: AuditRecord) -> None:
        """Record an audit entry by itself."""
        params = schema.audit_params(audit)
        with self._transaction() as cursor:
            cursor.execute(
                f"INSERT INTO kbs_ledger_audit ({schema.AUDIT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                params,
            )

    def audit_log(self, name: str, limit: int = 100) -> list[AuditRecord]:
        """The newest `limit` audit entries of a volume, newest first.

        Raises:
            ValueError: `limit` is negative.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        rows = self._rows(
            f"SELECT {schema.AUDIT_COLUMNS} FROM kbs_ledger_audit WHERE volume = %s "
            "ORDER BY id DESC LIMIT %s",
            (name, limit),
        )
        return [schema.audit_from_row(row) for row in rows]


def _one(cursor: _Cursor) -> tuple[Any, ...]:
    row = cursor.fetchone()
    if row is None:
        raise AssertionError("a query that always returns a row returned none")
    return row


def _describe(params: dict[str, Any]) -> str:
    """How messages name the database: by name, host and port, never with the password."""
    host = params.get("host") or params.get("hostaddr") or "the local socket"
    port = params.get("port") or "5432"
    name = params.get("dbname") or params.get("user") or "(default)"
    return f"PostgreSQL database {name} at {host}:{port}"


def _password_candidates(url: str) -> list[str]:
    """Every spelling of the URL's password that a message could echo, longest first.

    The password as written and percent-decoded, and the pieces an unescaped `/`, `?` or `#`
    would split it into when libpq reports the URL as malformed.
    """
    found: set[str] = set()
    _, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if sep and at != -1:
        _, colon, password = rest[:at].partition(":")
        if colon and password:
            found.update({password, unquote(password)})
            found.update(piece for piece in re.split(r"[/?#@]", password) if len(piece) >= 3)
    for match in re.finditer(r"(?i)(?:^|[?&])(?:ssl)?password=([^&#]*)", rest):
        if match[1]:
            found.update({match[1], unquote(match[1])})
    return sorted(found, key=len, reverse=True)


def _ambiguous_user_part(url: str) -> bool:
    """Whether the text before the URL's last `@` has a password with `/`, `?`, `#` or `@`."""
    _, sep, rest = url.partition("://")
    _, colon, password = rest[: max(rest.rfind("@"), 0)].partition(":")
    return bool(sep and colon and re.search(r"[/?#@]", password))


def _lock_key(text: str) -> int:
    """A signed 64-bit advisory-lock key derived from `text`."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)
