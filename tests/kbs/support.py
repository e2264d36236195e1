"""Fresh KBS repositories of either backend for tests, and raw access to their databases.

`make_repository(backend, tmp_path)` is the one entry point other tests need; the `repository`
fixture of `tests/kbs/conftest.py` wraps it for both backends. PostgreSQL comes from
`CVMSTORE_TEST_POSTGRES` (a libpq URL); without it a PostgreSQL case skips, or fails under
CI=true. Each PostgreSQL repository gets a schema of its own, dropped when it is closed.

The worker functions at the bottom run in child processes (multiprocessing "spawn"), so they
live in an importable module and take only picklable arguments.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import traceback
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from cvmstore.kbs.repository import AuditRecord, LedgerState, Repository, VolumeRecord
from cvmstore.kbs.storage.postgres import PostgresRepository
from cvmstore.kbs.storage.sqlite import SqliteRepository
from tests.conftest import require_or_skip

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

BACKENDS = ("sqlite", "postgresql")
POSTGRES_ENV = "CVMSTORE_TEST_POSTGRES"
#: Every schema a test makes starts so; a leftover one is safe to drop.
SCHEMA_PREFIX = "cvmstore_test_"
#: Hex SHA-384 of some evidence, as the audit log records it.
EVIDENCE = "ab" * 48


def postgres_url() -> str:
    """The test server's URL; skips (fails under CI=true) when none is configured."""
    url = os.environ.get(POSTGRES_ENV, "")
    require_or_skip(bool(url), f"PostgreSQL ({POSTGRES_ENV})")
    return url


def fresh_schema() -> str:
    """A schema name no other test uses."""
    return f"{SCHEMA_PREFIX}{os.getpid()}_{secrets.token_hex(6)}"


def drop_schema(url: str, schema: str) -> None:
    """DROP SCHEMA ... CASCADE, if it exists."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


def drop_abandoned_schemas(url: str) -> list[str]:
    """Drop the test schemas whose process (the pid in the name) no longer runs; their names.

    A test run that was killed never closes its repositories, so their schemas stay behind.
    """
    pattern = SCHEMA_PREFIX.replace("_", "\\_") + "%"
    dropped: list[str] = []
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (pattern,)
        ).fetchall()
        for (name,) in rows:
            pid = str(name).removeprefix(SCHEMA_PREFIX).partition("_")[0]
            if pid.isdigit() and not _process_exists(int(pid)):
                connection.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )
                dropped.append(str(name))
    return dropped


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ScratchPostgresRepository(PostgresRepository):
    """A `PostgresRepository` in a schema of its own that `close` drops."""

    def __init__(self, url: str, schema: str, pool_size: int = 8) -> None:
        self._scratch_url = url
        self._dropped = False
        try:
            super().__init__(url, schema=schema, pool_size=pool_size)
        except BaseException:
            drop_schema(url, schema)
            raise

    def close(self) -> None:
        super().close()
        if not self._dropped and self.schema is not None:
            self._dropped = True
            drop_schema(self._scratch_url, self.schema)


def make_repository(backend: str, tmp_path: Path, *, migrate: bool = True) -> Repository:
    """A fresh, empty repository of `backend` ("sqlite" or "postgresql"), migrated by default.

    Every call makes a new database: a new file under `tmp_path` for SQLite, a new schema
    for PostgreSQL (dropped by `close()`, so always close what this returns). Skips when
    PostgreSQL is asked for and `CVMSTORE_TEST_POSTGRES` is unset (fails under CI=true).
    """
    repository: Repository
    if backend == "sqlite":
        repository = SqliteRepository(tmp_path / f"kbs-{secrets.token_hex(4)}.db")
    elif backend == "postgresql":
        repository = ScratchPostgresRepository(postgres_url(), fresh_schema())
    else:
        raise ValueError(f"unknown backend {backend!r}")
    if migrate:
        try:
            repository.migrate()
        except BaseException:
            repository.close()
            raise
    return repository


@dataclass(frozen=True)
class RepositorySpec:
    """Where a repository's database is, in a form a child process can be handed."""

    backend: str
    location: str  # the SQLite file, or the PostgreSQL URL
    schema: str | None = None

    def open(self) -> Repository:
        """Open another repository on the same database (not migrated, never dropped)."""
        if self.backend == "sqlite":
            return SqliteRepository(self.location)
        return PostgresRepository(self.location, schema=self.schema)


def spec_of(repository: Repository) -> RepositorySpec:
    """The `RepositorySpec` of a repository made by `make_repository`."""
    if isinstance(repository, SqliteRepository):
        return RepositorySpec("sqlite", str(repository.path))
    if isinstance(repository, PostgresRepository):
        return RepositorySpec("postgresql", postgres_url(), repository.schema)
    raise TypeError(f"unknown repository {repository!r}")


def fresh_spec(backend: str, tmp_path: Path) -> RepositorySpec:
    """A database that does not exist yet (no file; no schema)."""
    if backend == "sqlite":
        return RepositorySpec("sqlite", str(tmp_path / f"new-{secrets.token_hex(4)}" / "kbs.db"))
    return RepositorySpec("postgresql", postgres_url(), fresh_schema())


def raw_query(repository: Repository, statement: str) -> list[tuple[Any, ...]]:
    """Run one SQL statement on the repository's database behind its back, and commit."""
    if isinstance(repository, SqliteRepository):
        with closing(sqlite3.connect(repository.path)) as connection:
            with connection:
                rows: list[tuple[Any, ...]] = connection.execute(statement).fetchall()
            return rows
    if isinstance(repository, PostgresRepository):
        with psycopg.connect(postgres_url(), autocommit=True) as connection:
            if repository.schema is not None:
                connection.execute(
                    sql.SQL("SET search_path TO {}").format(sql.Identifier(repository.schema))
                )
            cursor = connection.execute(statement)
            return cursor.fetchall() if cursor.description is not None else []
    raise TypeError(f"unknown repository {repository!r}")


def table_names(repository: Repository) -> set[str]:
    """The tables of the repository's database (its schema, for PostgreSQL)."""
    if isinstance(repository, SqliteRepository):
        query = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    else:
        query = (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return {str(row[0]) for row in raw_query(repository, query)}


def new_volume(name: str = "vol", created: float = 1000.0) -> VolumeRecord:
    """A volume as the admin API creates it: version 0, nothing anchored."""
    return VolumeRecord(
        name=name,
        resource_path=f"cvmstore/volume/{name}",
        policy='{"allow":true}',
        created=created,
    )


def state(generation: int) -> LedgerState:
    """A ledger state whose root names its generation."""
    return LedgerState(
        generation=generation,
        root=generation.to_bytes(8, "big") * 4,
        store_id=b"\x00\x01" * 8,
    )


def audit_for(
    name: str,
    generation: int,
    *,
    from_version: int = 0,
    from_generation: int | None = None,
    at: float = 2000.0,
    evidence: str = EVIDENCE,
) -> AuditRecord:
    """The audit record a caller hands to `advance_ledger` (outcome and to_version unset)."""
    return AuditRecord(
        volume=name,
        at=at,
        evidence=evidence,
        outcome="advanced",
        from_version=from_version,
        to_version=from_version,
        from_generation=from_generation,
        to_generation=generation,
    )


# child processes ----------------------------------------------------------------------------


def race_rounds_worker(
    spec: RepositorySpec,
    name: str,
    rounds: int,
    worker: int,
    barrier: Barrier,
    results: Queue[tuple[int, list[bool] | str]],
) -> None:
    """In a child process: race `advance_ledger` from version r in round r, `rounds` times.

    Puts (worker, [won in round 0, won in round 1, ...]) on `results`, or (worker, a
    traceback) when anything failed.
    """
    try:
        repository = spec.open()
        try:
            wins: list[bool] = []
            for version in range(rounds):
                barrier.wait(timeout=120)
                outcome = repository.advance_ledger(
                    name,
                    version,
                    state(version + 1),
                    audit_for(name, version + 1, from_version=version, evidence=f"{worker:096x}"),
                )
                wins.append(outcome.won)
            results.put((worker, wins))
        finally:
            repository.close()
    except BaseException:
        barrier.abort()
        results.put((worker, traceback.format_exc()))


def migrate_worker(
    spec: RepositorySpec,
    worker: int,
    barrier: Barrier,
    results: Queue[tuple[int, int | str]],
) -> None:
    """In a child process: open the (fresh) database and migrate it as the others do.

    Puts (worker, the version migrate returned) on `results`, or (worker, a traceback).
    """
    try:
        barrier.wait(timeout=120)
        repository = spec.open()
        try:
            results.put((worker, repository.migrate()))
        finally:
            repository.close()
    except BaseException:
        barrier.abort()
        results.put((worker, traceback.format_exc()))
