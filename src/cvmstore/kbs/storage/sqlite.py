"""`SqliteRepository`: the KBS's embedded backend, one SQLite file (stdlib `sqlite3`).

Durability: the database runs in WAL mode with `synchronous=FULL`, so the WAL is fsynced at
every commit and a ledger advance that returned survives a power loss. The file is created
with mode 0600 (its `-wal` and `-shm` files inherit that mode from SQLite), in a directory
made 0700 if it was missing; the directory is fsynced after the file is created.

Concurrency: the repository is shared by the threads of a server's pool and by several
processes on the same file. Each thread gets its own connection (a `sqlite3.Connection` must
not be used by two threads at once), kept in a `threading.local` and also in a registry so
that `close` can close them all. Every write transaction starts with `BEGIN IMMEDIATE`: it
takes the database's single write lock before reading anything, so a compare-and-swap reads
and writes under the same lock in every process, and a transaction never has to upgrade a read
lock (which in WAL mode fails at once with SQLITE_BUSY instead of waiting). A writer that
finds the lock taken waits up to `BUSY_TIMEOUT` seconds. Reads are single statements in
autocommit mode, each its own consistent snapshot.

Errors: a database that cannot be opened, is locked for longer than the timeout, or fails on
disk raises `DeviceError`; a file that is not a SQLite database, or a corrupt one, raises
`FormatError`. Messages name the file, never its contents.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cvmstore.errors import DeviceError, FormatError, StateError
from cvmstore.kbs.repository import (
    AdvanceOutcome,
    AuditRecord,
    LedgerState,
    SessionRecord,
    VolumeRecord,
)
from cvmstore.kbs.storage import schema

__all__ = ["BUSY_TIMEOUT", "SqliteRepository"]

#: Seconds a writer waits for another connection's write lock before giving up.
BUSY_TIMEOUT = 5.0

_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT})


class SqliteRepository:
    """A `Repository` in one SQLite file; call `migrate` once before use."""

    backend: str = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating if missing) the database file at `path`.

        Raises:
            DeviceError: the file or its directory cannot be created or opened.
            FormatError: the file is not a SQLite database.
        """
        self._path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._closed = False
        # Writers queue here (threads) and on a lock file (processes) instead of in SQLite's
        # busy handler, which sleeps up to 100 ms between tries and so starves unlucky writers.
        self._writer = threading.RLock()
        self._writer_file: int | None = None
        _create_database_file(self._path)
        try:
            self._connection()  # fail here, not at first use, on a bad file
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def __repr__(self) -> str:
        return f"SqliteRepository({str(self._path)!r})"

    # connections and transactions ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StateError(f"the KBS repository {self._path} is closed")
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        with self._lock:
            if self._closed:
                raise StateError(f"the KBS repository {self._path} is closed")
            self._close_connections_of_finished_threads()
            connection = self._open_connection()
            self._connections.append((weakref.ref(threading.current_thread()), connection))
        self._local.connection = connection
        return connection

    def _close_connections_of_finished_threads(self) -> None:
        # Called with self._lock held. A finished thread can no longer use its connection,
        # so closing it from here is safe (the connections are opened check_same_thread=False
        # for exactly this and for `close`).
        alive = []
        for owner, connection in self._connections:
            thread = owner()
            if thread is None or not thread.is_alive():
                connection.close()
            else:
                alive.append((owner, connection))
        self._connections = alive

    def _open_connection(self) -> sqlite3.Connection:
        with _translated(self._path):
            connection = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,  # autocommit: this module issues BEGIN/COMMIT itself
                check_same_thread=False,
            )
        try:
            with _translated(self._path):
                connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                # journal_mode is a property of the file: switch only when needed, since the
                # switch takes an exclusive lock.
                mode = connection.execute("PRAGMA journal_mode").fetchall()[0][0]
                if mode != "wal":
                    mode = connection.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
                if mode != "wal":
                    raise DeviceError(
                        f"SQLite database {self._path}: cannot switch to WAL mode ({mode})"
                    )
                connection.execute("PRAGMA synchronous = FULL")
                connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            connection.close()
            raise
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its first statement."""
        connection = self._connection()
        with self._writer, self._writer_lock(), _translated(self._path):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """An exclusive flock on DB-writer.lock beside the database.

        Writers of other processes wait for it in the kernel, not in SQLite's sleeping retry
        loop. The caller holds `_writer`, so one thread per process waits here at a time.
        """
        if self._writer_file is None:
            try:
                self._writer_file = os.open(
                    f"{self._path}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
            except OSError as exc:
                raise DeviceError(f"cannot open the writer lock of {self._path}: {exc}") from None
        fcntl.flock(self._writer_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writer_file, fcntl.LOCK_UN)

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        """The rows of one query, read in autocommit mode (its own snapshot)."""
        connection = self._connection()
        with _translated(self._path):
            rows: list[tuple[object, ...]] = connection.execute(sql, params).fetchall()
        return rows

    # lifecycle -------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the schema; see `Repository.migrate`.

        The whole upgrade is one `BEGIN IMMEDIATE` transaction, so a second process waits
        for the first and then finds nothing left to do.

        Raises:
            UnsupportedVersionError: the database is newer than this code (left untouched).
            DeviceError: the database cannot be written.
        """
        with self._write() as connection:
            connection.execute(schema.VERSION_TABLE)
            row = connection.execute(schema.READ_VERSION).fetchall()[0]
            current = schema.stored_version(row[0])
            for migration in schema.pending_migrations(current, f"SQLite database {self._path}"):
                for statement in migration.sql("sqlite"):
                    connection.execute(statement)
                connection.execute(
                    "INSERT INTO kbs_schema_version (version, applied) VALUES (?, ?)",
                    (migration.version, time.time()),
                )
        return schema.LATEST_VERSION

    def close(self) -> None:
        """Close every thread's connection; later calls raise `StateError`. Idempotent."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for _, connection in connections:
            connection.close()
        with self._writer:
            if self._writer_file is not None:
                os.close(self._writer_file)
                self._writer_file = None

    # sessions --------------------------------------------------------------------------

    def put_session(self, session: SessionRecord) -> None:
        """Insert a new session.

        Raises:
            ValueError: a session with this id exists already.
        """
        with self._write() as connection:
            try:
                connection.execute(
                    f"INSERT INTO kbs_sessions ({schema.SESSION_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"session {session.session_id!r} exists already") from exc

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        rows = self._read(
            f"SELECT {schema.SESSION_COLUMNS} FROM kbs_sessions WHERE session_id = ?",
            (session_id,),
        )
        return schema.session_from_row(rows[0]) if rows else None

    def attest_session(
        self, session_id: str, nonce: str, attestation: str, token: str, expires: float
    ) -> bool:
        """Mark a pending session attested; one conditional UPDATE (see `Repository`)."""
        with self._write() as connection:
            cursor = connection.execute(
                "UPDATE kbs_sessions SET attestation = ?, token = ?, expires = ? "
                "WHERE session_id = ? AND nonce = ? AND attestation IS NULL",
                (attestation, token, expires, session_id, nonce),
            )
            return cursor.rowcount == 1

    def delete_expired_sessions(self, now: float) -> int:
        """Delete sessions whose expiry is before `now`; returns how many."""
        with self._write() as connection:
            return connection.execute("DELETE FROM kbs_sessions WHERE expires < ?", (now,)).rowcount

    # resources -------------------------------------------------------------------------

    def put_resource(self, path: str, sealed: bytes, now: float) -> None:
        """Create or replace the resource at `path`."""
        with self._write() as connection:
            connection.execute(
                "INSERT INTO kbs_resources (path, sealed, created, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET sealed = excluded.sealed, "
                "updated = excluded.updated",
                (path, sealed, now, now),
            )

    def get_resource(self, path: str) -> bytes | None:
        """The sealed resource, or None."""
        rows = self._read("SELECT sealed FROM kbs_resources WHERE path = ?", (path,))
        return schema.as_bytes(rows[0][0], "sealed resource") if rows else None

    def delete_resource(self, path: str) -> bool:
        """Delete it; False when there was none."""
        with self._write() as connection:
            cursor = connection.execute("DELETE FROM kbs_resources WHERE path = ?", (path,))
            return cursor.rowcount == 1

    def list_resources(self) -> list[str]:
        """Every resource path, sorted."""
        rows = self._read("SELECT path FROM kbs_resources ORDER BY path")
        return [schema.as_text(row[0], "resource path") for row in rows]

    # policies --------------------------------------------------------------------------

    def put_policy(self, name: str, document: str, now: float) -> None:
        """Create or replace a policy."""
        with self._write() as connection:
            connection.execute(
                "INSERT INTO kbs_policies (name, document, created, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET document = excluded.document, "
                "updated = excluded.updated",
                (name, document, now, now),
            )

    def get_policy(self, name: str) -> str | None:
        """The policy document, or None."""
        rows = self._read("SELECT document FROM kbs_policies WHERE name = ?", (name,))
        return schema.as_text(rows[0][0], "policy document") if rows else None

    def delete_policy(self, name: str) -> bool:
        """Delete it; False when there was none."""
        with self._write() as connection:
            cursor = connection.execute("DELETE FROM kbs_policies WHERE name = ?", (name,))
            return cursor.rowcount == 1

    # reference values ------------------------------------------------------------------

    def add_reference(self, kind: str, value: str, now: float) -> bool:
        """Register a reference value; False when it was already registered."""
        with self._write() as connection:
            cursor = connection.execute(
                "INSERT INTO kbs_reference_values (kind, value, added) VALUES (?, ?, ?) "
                "ON CONFLICT (kind, value) DO NOTHING",
                (kind, value, now),
            )
            return cursor.rowcount == 1

    def delete_reference(self, kind: str, value: str) -> bool:
        """Withdraw it; False when it was not registered."""
        with self._write() as connection:
            cursor = connection.execute(
                "DELETE FROM kbs_reference_values WHERE kind = ? AND value = ?", (kind, value)
            )
            return cursor.rowcount == 1

    def list_references(self, kind: str) -> list[str]:
        """Every value of `kind`, sorted."""
        rows = self._read(
            "SELECT value FROM kbs_reference_values WHERE kind = ? ORDER BY value", (kind,)
        )
        return [schema.as_text(row[0], "reference value") for row in rows]

    # sealed secrets --------------------------------------------------------------------

    def get_secret(self, name: str) -> bytes | None:
        """A sealed KBS secret, or None."""
        rows = self._read("SELECT sealed FROM kbs_secrets WHERE name = ?", (name,))
        return schema.as_bytes(rows[0][0], "sealed secret") if rows else None

    def put_secret_if_absent(self, name: str, sealed: bytes) -> bytes:
        """Store `sealed` unless `name` exists; return what is stored (first writer wins)."""
        with self._write() as connection:
            connection.execute(
                "INSERT INTO kbs_secrets (name, sealed) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, sealed),
            )
            row = connection.execute(
                "SELECT sealed FROM kbs_secrets WHERE name = ?", (name,)
            ).fetchall()[0]
        return schema.as_bytes(row[0], "sealed secret")

    # admin tokens ----------------------------------------------------------------------

    def add_admin_token(self, digest: str, label: str, now: float) -> None:
        """Register an admin token by its hex SHA-256.

        Raises:
            ValueError: a token with this digest is registered already.
        """
        with self._write() as connection:
            try:
                connection.execute(
                    "INSERT INTO kbs_admin_tokens (digest, label, created) VALUES (?, ?, ?)",
                    (digest, label, now),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError("this admin token is registered already") from exc

    def has_admin_token(self, digest: str) -> bool:
        """Whether a token with this hex SHA-256 is registered."""
        return bool(self._read("SELECT 1 FROM kbs_admin_tokens WHERE digest = ?", (digest,)))

    def count_admin_tokens(self) -> int:
        """How many admin tokens exist."""
        rows = self._read("SELECT COUNT(*) FROM kbs_admin_tokens")
        return schema.as_int(rows[0][0], "admin token count")

    # volumes and the ledger ------------------------------------------------------------

    def create_volume(self, volume: VolumeRecord, sealed_secret: bytes) -> bool:
        """Create the volume and its root-secret resource in one transaction.

        Returns False (changing nothing) when the name or the resource path is taken.
        """
        params = schema.volume_params(volume)
        with self._write() as connection:
            # Under BEGIN IMMEDIATE nobody else writes until COMMIT: check, then insert.
            taken = connection.execute(
                "SELECT 1 FROM kbs_volumes WHERE name = ? OR resource_path = ? "
                "UNION ALL SELECT 1 FROM kbs_resources WHERE path = ?",
                (volume.name, volume.resource_path, volume.resource_path),
            ).fetchall()
            if taken:
                return False
            connection.execute(
                "INSERT INTO kbs_resources (path, sealed, created, updated) VALUES (?, ?, ?, ?)",
                (volume.resource_path, sealed_secret, volume.created, volume.created),
            )
            connection.execute(
                f"INSERT INTO kbs_volumes ({schema.VOLUME_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
            return True

    def get_volume(self, name: str) -> VolumeRecord | None:
        """The volume with its ledger entry, or None."""
        rows = self._read(
            f"SELECT {schema.VOLUME_COLUMNS} FROM kbs_volumes WHERE name = ?", (name,)
        )
        return schema.volume_from_row(rows[0]) if rows else None

    def list_volumes(self) -> list[str]:
        """Every volume name, sorted."""
        rows = self._read("SELECT name FROM kbs_volumes ORDER BY name")
        return [schema.as_text(row[0], "volume name") for row in rows]

    def set_volume_policy(self, name: str, policy: str) -> bool:
        """Replace a volume's policy; False when there is no such volume."""
        with self._write() as connection:
            cursor = connection.execute(
                "UPDATE kbs_volumes SET policy = ? WHERE name = ?", (policy, name)
            )
            return cursor.rowcount == 1

    def advance_ledger(
        self,
        name: str,
        from_version: int,
        new: LedgerState,
        audit: AuditRecord,
    ) -> AdvanceOutcome:
        """Compare-and-swap the ledger entry; see `Repository.advance_ledger`.

        The swap is one conditional UPDATE (`WHERE name = ? AND version = ?`), and the audit
        record (settled by `schema.settle_audit`) is inserted in the same transaction.

        Raises:
            KeyError: there is no such volume (nothing is written).
            ValueError: the audit record does not match `name` and `new`.
        """
        schema.check_advance(name, from_version, new, audit)
        with self._write() as connection:
            cursor = connection.execute(
                "UPDATE kbs_volumes SET version = version + 1, generation = ?, root = ?, "
                "store_id = ? WHERE name = ? AND version = ?",
                (new.generation, new.root, new.store_id, name, from_version),
            )
            won = cursor.rowcount == 1
            rows = connection.execute(
                f"SELECT {schema.VOLUME_COLUMNS} FROM kbs_volumes WHERE name = ?", (name,)
            ).fetchall()
            if not rows:
                raise KeyError(name)
            current = schema.volume_from_row(rows[0])
            settled = schema.settle_audit(audit, from_version, won, current)
            connection.execute(
                f"INSERT INTO kbs_ledger_audit ({schema.AUDIT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                schema.audit_params(settled),
            )
        return AdvanceOutcome(won=won, volume=current)

    def record_audit(self, audit: AuditRecord) -> None:
        """Record an audit entry by itself."""
        params = schema.audit_params(audit)
        with self._write() as connection:
            connection.execute(
                f"INSERT INTO kbs_ledger_audit ({schema.AUDIT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )

    def audit_log(self, name: str, limit: int = 100) -> list[AuditRecord]:
        """The newest `limit` audit entries of a volume, newest first.

        Raises:
            ValueError: `limit` is negative.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        rows = self._read(
            f"SELECT {schema.AUDIT_COLUMNS} FROM kbs_ledger_audit WHERE volume = ? "
            "ORDER BY id DESC LIMIT ?",
            (name, limit),
        )
        return [schema.audit_from_row(row) for row in rows]


def _create_database_file(path: Path) -> None:
    """Create an empty database file with mode 0600 (and its directory, 0700), durably."""
    if path.exists():
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return  # another process created it first
    except OSError as exc:
        raise DeviceError(f"cannot create the SQLite database {path}: {exc.strerror}") from exc
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise DeviceError(f"cannot sync the directory of {path}: {exc.strerror}") from exc


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    """Turn sqlite3's environment failures into the cvmstore error tree.

    Constraint violations and API misuse (`IntegrityError`, `ProgrammingError`) are bugs of
    the caller or of this module, and pass through unchanged.
    """
    try:
        yield
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
        raise
    except sqlite3.OperationalError as exc:
        raise DeviceError(f"SQLite database {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode & 0xFF in _CORRUPTION_CODES:
            raise FormatError(f"{path} is not a usable SQLite database: {exc}") from exc
        raise DeviceError(f"SQLite database {path}: {exc}") from exc
