"""The KBS `Repository` contract on both backends (SQLite, PostgreSQL), and their specifics.

Most tests take the `repository` fixture and so run once per backend. Concurrency is checked
by counting outcomes (winners, conflict rows, final versions), never by timing.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import stat
import threading
import traceback
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

from cvmstore.errors import (
    CvmstoreError,
    DeviceError,
    FormatError,
    StateError,
    UnsupportedVersionError,
)
from cvmstore.kbs.repository import (
    AdvanceOutcome,
    AuditRecord,
    Repository,
    SessionRecord,
    VolumeRecord,
)
from cvmstore.kbs.storage import open_repository, redact_url
from cvmstore.kbs.storage.postgres import STATEMENT_TIMEOUT, PostgresRepository
from cvmstore.kbs.storage.schema import (
    DIALECT_TYPES,
    LATEST_VERSION,
    MIGRATIONS,
    pending_migrations,
    stored_version,
    volume_from_row,
)
from cvmstore.kbs.storage.sqlite import BUSY_TIMEOUT, SqliteRepository
from tests.kbs.support import (
    BACKENDS,
    EVIDENCE,
    SCHEMA_PREFIX,
    RepositorySpec,
    audit_for,
    drop_abandoned_schemas,
    drop_schema,
    fresh_spec,
    make_repository,
    migrate_worker,
    new_volume,
    postgres_url,
    race_rounds_worker,
    raw_query,
    spec_of,
    state,
    table_names,
)

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

T = TypeVar("T")

#: Threads racing in one round, and rounds of the in-process race.
THREADS = 16
THREAD_ROUNDS = 4
#: Rounds of the two-process race.
PROCESS_ROUNDS = 40
#: Fresh databases migrated by two processes at once.
MIGRATE_RACES = 3

#: Names whose code-point order differs from most locales' order.
TRICKY_NAMES = ["b", "B", "a", "a-1", "a.1", "a_1", "A", "Z9", "0", "é", "e", "aa", "a"]


def session(
    session_id: str = "0" * 32, nonce: str = "bm9uY2U=", expires: float = 1300.0
) -> SessionRecord:
    return SessionRecord(
        session_id=session_id, tee="snp", nonce=nonce, created=1000.0, expires=expires
    )


def race(count: int, action: Callable[[int], T]) -> list[T]:
    """Run `action(i)` on `count` threads released together; their results, by i."""
    barrier = threading.Barrier(count)
    results: list[T | None] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[index] = action(index)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [result for result in results if result is not None]


# sessions ---------------------------------------------------------------------------------


def test_session_round_trip(repository: Repository) -> None:
    made = session()
    repository.put_session(made)
    assert repository.get_session(made.session_id) == made
    assert repository.get_session("f" * 32) is None


def test_put_session_refuses_an_existing_id(repository: Repository) -> None:
    repository.put_session(session())
    with pytest.raises(ValueError, match="exists already"):
        repository.put_session(session(nonce="b3RoZXI="))
    assert repository.get_session("0" * 32) == session()


def test_attest_session_consumes_the_nonce_once(repository: Repository) -> None:
    repository.put_session(session())
    assert repository.attest_session("0" * 32, "bm9uY2U=", '{"tcb":1}', "tok", 2000.0)
    attested = repository.get_session("0" * 32)
    assert attested == SessionRecord(
        session_id="0" * 32,
        tee="snp",
        nonce="bm9uY2U=",
        created=1000.0,
        expires=2000.0,
        attestation='{"tcb":1}',
        token="tok",
    )
    # The same nonce again: refused, and nothing changes.
    assert not repository.attest_session("0" * 32, "bm9uY2U=", '{"tcb":2}', "tok2", 3000.0)
    assert repository.get_session("0" * 32) == attested


def test_attest_session_with_another_nonce_changes_nothing(repository: Repository) -> None:
    repository.put_session(session())
    assert not repository.attest_session("0" * 32, "d3Jvbmc=", "{}", "tok", 2000.0)
    assert repository.get_session("0" * 32) == session()


def test_attest_session_of_an_unknown_id(repository: Repository) -> None:
    assert not repository.attest_session("1" * 32, "bm9uY2U=", "{}", "tok", 2000.0)
    assert repository.get_session("1" * 32) is None


def test_attest_session_race_has_one_winner(repository: Repository) -> None:
    repository.put_session(session())
    won = race(
        THREADS,
        lambda i: repository.attest_session("0" * 32, "bm9uY2U=", f'{{"i":{i}}}', f"t{i}", 2e3),
    )
    assert len(won) == THREADS
    assert won.count(True) == 1
    winner = won.index(True)
    attested = repository.get_session("0" * 32)
    assert attested is not None
    assert (attested.attestation, attested.token) == (f'{{"i":{winner}}}', f"t{winner}")


def test_delete_expired_sessions_deletes_those_before_now(repository: Repository) -> None:
    for index, expires in enumerate([10.0, 20.0, 30.0]):
        repository.put_session(session(session_id=f"{index:032x}", expires=expires))
    assert repository.delete_expired_sessions(20.0) == 1  # 20.0 is not before 20.0
    assert repository.get_session(f"{0:032x}") is None
    assert repository.get_session(f"{1:032x}") is not None
    assert repository.delete_expired_sessions(100.0) == 2
    assert repository.delete_expired_sessions(100.0) == 0
    assert repository.get_session(f"{2:032x}") is None


# resources and policies -------------------------------------------------------------------


def test_resource_round_trip_replace_and_delete(repository: Repository) -> None:
    assert repository.get_resource("repo/key/a") is None
    repository.put_resource("repo/key/a", b"\x00sealed\xff", 1.0)
    assert repository.get_resource("repo/key/a") == b"\x00sealed\xff"
    repository.put_resource("repo/key/a", b"replaced", 2.0)
    assert repository.get_resource("repo/key/a") == b"replaced"
    repository.put_resource("repo/key/empty", b"", 2.0)
    assert repository.get_resource("repo/key/empty") == b""
    assert repository.delete_resource("repo/key/a")
    assert not repository.delete_resource("repo/key/a")
    assert repository.get_resource("repo/key/a") is None


def test_list_resources_is_sorted_by_code_point(repository: Repository) -> None:
    assert repository.list_resources() == []
    paths = [f"repo/{name}/tag" for name in TRICKY_NAMES]
    for path in paths:
        repository.put_resource(path, b"x", 1.0)
    assert repository.list_resources() == sorted(set(paths))


def test_policy_round_trip_replace_and_delete(repository: Repository) -> None:
    assert repository.get_policy("attestation") is None
    repository.put_policy("attestation", '{"v":1}', 1.0)
    repository.put_policy("resource:repo/key/a", '{"v":"r"}', 1.0)
    assert repository.get_policy("attestation") == '{"v":1}'
    repository.put_policy("attestation", '{"v":2}', 2.0)
    assert repository.get_policy("attestation") == '{"v":2}'
    assert repository.get_policy("resource:repo/key/a") == '{"v":"r"}'
    assert repository.delete_policy("attestation")
    assert not repository.delete_policy("attestation")
    assert repository.get_policy("attestation") is None


# reference values, secrets, admin tokens --------------------------------------------------


def test_reference_values(repository: Repository) -> None:
    assert repository.list_references("snp-measurement") == []
    for value in TRICKY_NAMES:
        repository.add_reference("snp-measurement", value, 1.0)
    assert repository.add_reference("snp-measurement", "ff" * 48, 1.0)
    assert not repository.add_reference("snp-measurement", "ff" * 48, 2.0)
    assert repository.add_reference("snp-id-key", "ff" * 48, 1.0)  # kinds are separate
    assert repository.list_references("snp-measurement") == sorted({*TRICKY_NAMES, "ff" * 48})
    assert repository.list_references("snp-id-key") == ["ff" * 48]
    assert repository.delete_reference("snp-measurement", "ff" * 48)
    assert not repository.delete_reference("snp-measurement", "ff" * 48)
    assert repository.list_references("snp-id-key") == ["ff" * 48]
    assert repository.list_references("unknown") == []


def test_put_secret_if_absent_keeps_the_first(repository: Repository) -> None:
    assert repository.get_secret("token-key") is None
    assert repository.put_secret_if_absent("token-key", b"first") == b"first"
    assert repository.put_secret_if_absent("token-key", b"second") == b"first"
    assert repository.get_secret("token-key") == b"first"


def test_put_secret_if_absent_race_agrees_on_one_value(repository: Repository) -> None:
    stored = race(THREADS, lambda i: repository.put_secret_if_absent("k", f"v{i}".encode()))
    assert len(stored) == THREADS
    assert len(set(stored)) == 1
    assert repository.get_secret("k") == stored[0]


def test_admin_tokens(repository: Repository) -> None:
    assert repository.count_admin_tokens() == 0
    assert not repository.has_admin_token("aa" * 32)
    repository.add_admin_token("aa" * 32, "first admin", 1.0)
    repository.add_admin_token("bb" * 32, "second admin", 1.0)
    assert repository.has_admin_token("aa" * 32)
    assert not repository.has_admin_token("cc" * 32)
    assert repository.count_admin_tokens() == 2
    with pytest.raises(ValueError, match="registered already"):
        repository.add_admin_token("aa" * 32, "again", 2.0)
    assert repository.count_admin_tokens() == 2


# volumes ----------------------------------------------------------------------------------


def test_create_volume_round_trip(repository: Repository) -> None:
    volume = new_volume("vol")
    assert repository.get_volume("vol") is None
    assert repository.create_volume(volume, b"root secret")
    assert repository.get_volume("vol") == volume
    assert repository.get_resource("cvmstore/volume/vol") == b"root secret"


def test_create_volume_keeps_a_given_ledger_state(repository: Repository) -> None:
    volume = VolumeRecord("imported", "cvmstore/volume/imported", "{}", 5.0, 7, state(9))
    assert repository.create_volume(volume, b"s")
    assert repository.get_volume("imported") == volume


def test_create_volume_refuses_an_existing_name(repository: Repository) -> None:
    assert repository.create_volume(new_volume("vol"), b"first")
    other_path = VolumeRecord("vol", "cvmstore/volume/elsewhere", "{}", 2.0)
    assert not repository.create_volume(other_path, b"second")
    assert repository.get_volume("vol") == new_volume("vol")
    assert repository.get_resource("cvmstore/volume/vol") == b"first"
    assert repository.get_resource("cvmstore/volume/elsewhere") is None  # rolled back


def test_create_volume_refuses_an_existing_resource(repository: Repository) -> None:
    repository.put_resource("cvmstore/volume/vol", b"somebody else's", 1.0)
    assert not repository.create_volume(new_volume("vol"), b"root secret")
    assert repository.get_volume("vol") is None
    assert repository.list_volumes() == []
    assert repository.get_resource("cvmstore/volume/vol") == b"somebody else's"


def test_create_volume_refuses_a_path_another_volume_uses(repository: Repository) -> None:
    assert repository.create_volume(new_volume("a"), b"a")
    assert repository.delete_resource("cvmstore/volume/a")  # the admin removed its secret
    clash = VolumeRecord("b", "cvmstore/volume/a", "{}", 1.0)
    assert not repository.create_volume(clash, b"b")
    assert repository.list_volumes() == ["a"]
    assert repository.get_resource("cvmstore/volume/a") is None


def test_list_volumes_is_sorted_by_code_point(repository: Repository) -> None:
    assert repository.list_volumes() == []
    names = sorted(set(TRICKY_NAMES) - {"é"})  # volume names are ASCII
    for name in reversed(names):
        assert repository.create_volume(new_volume(name), b"s")
    assert repository.list_volumes() == names


def test_set_volume_policy(repository: Repository) -> None:
    assert not repository.set_volume_policy("vol", "{}")
    repository.create_volume(new_volume("vol"), b"s")
    assert repository.set_volume_policy("vol", '{"allow":false}')
    volume = repository.get_volume("vol")
    assert volume is not None
    assert volume.policy == '{"allow":false}'
    assert volume.version == 0  # a policy change is not a ledger change


# the ledger -------------------------------------------------------------------------------


def test_advance_ledger_win_sets_state_and_records_it(repository: Repository) -> None:
    repository.create_volume(new_volume("vol"), b"s")
    outcome = repository.advance_ledger("vol", 0, state(1), audit_for("vol", 1))
    assert outcome.won
    assert outcome.volume == dataclasses.replace(new_volume("vol"), version=1, state=state(1))
    assert repository.get_volume("vol") == outcome.volume
    assert repository.audit_log("vol") == [
        AuditRecord("vol", 2000.0, EVIDENCE, "advanced", 0, 1, None, 1)
    ]


def test_advance_ledger_conflict_changes_nothing_and_records_it(
    repository: Repository,
) -> None:
    repository.create_volume(new_volume("vol"), b"s")
    repository.advance_ledger("vol", 0, state(1), audit_for("vol", 1))
    repository.advance_ledger("vol", 1, state(2), audit_for("vol", 2, from_version=1))
    before = repository.get_volume("vol")
    # A stale writer, still at version 0, asks for generation 5.
    stale = audit_for("vol", 5, from_version=0, at=3000.0, evidence="cd" * 48)
    outcome = repository.advance_ledger("vol", 0, state(5), stale)
    assert not outcome.won
    assert outcome.volume == before
    assert repository.get_volume("vol") == before
    newest = repository.audit_log("vol", limit=1)
    # A conflict records the ledger as it stands: version 2, generation 2.
    assert newest == [AuditRecord("vol", 3000.0, "cd" * 48, "conflict", 2, 2, 2, 5)]


def test_advance_ledger_audit_log_is_newest_first(repository: Repository) -> None:
    repository.create_volume(new_volume("vol"), b"s")
    repository.create_volume(new_volume("other"), b"s")
    steps = [  # (from_version, generation, expected won)
        (0, 1, True),
        (0, 9, False),
        (1, 2, True),
        (1, 9, False),
        (2, 3, True),
        (5, 9, False),
    ]
    expected: list[AuditRecord] = []
    for at, (from_version, generation, should_win) in enumerate(steps):
        volume = repository.get_volume("vol")
        assert volume is not None
        audit = audit_for("vol", generation, from_version=from_version, at=float(at))
        outcome = repository.advance_ledger("vol", from_version, state(generation), audit)
        assert outcome.won is should_win
        if should_win:
            expected.append(
                AuditRecord("vol", float(at), EVIDENCE, "advanced", from_version,
                            from_version + 1, None, generation)
            )  # fmt: skip
        else:
            current_generation = None if volume.state is None else volume.state.generation
            expected.append(
                AuditRecord("vol", float(at), EVIDENCE, "conflict", volume.version,
                            volume.version, current_generation, generation)
            )  # fmt: skip
    repository.advance_ledger("other", 0, state(1), audit_for("other", 1))
    assert repository.audit_log("vol") == expected[::-1]
    assert repository.audit_log("vol", limit=2) == expected[::-1][:2]
    assert repository.audit_log("vol", limit=0) == []
    assert len(repository.audit_log("other")) == 1
    final = repository.get_volume("vol")
    assert final is not None
    assert (final.version, final.state) == (3, state(3))


def test_advance_ledger_of_an_unknown_volume(repository: Repository) -> None:
    with pytest.raises(KeyError):
        repository.advance_ledger("ghost", 0, state(1), audit_for("ghost", 1))
    assert repository.audit_log("ghost") == []


@pytest.mark.parametrize(
    ("audit", "generation", "from_version", "message"),
    [
        pytest.param(audit_for("other", 1), 1, 0, "about volume 'other'", id="other-volume"),
        pytest.param(audit_for("vol", 2), 1, 0, "asks for generation 2", id="other-generation"),
        pytest.param(audit_for("vol", 2**63), 2**63, 0, "outside", id="generation-too-big"),
        pytest.param(audit_for("vol", 1), 1, -1, "outside", id="negative-version"),
        pytest.param(audit_for("vol", 1), 1, 2**63 - 1, "cannot advance", id="last-version"),
    ],
)
def test_advance_ledger_refuses_bad_arguments(
    repository: Repository, audit: AuditRecord, generation: int, from_version: int, message: str
) -> None:
    repository.create_volume(new_volume("vol"), b"s")
    with pytest.raises(ValueError, match=message):
        repository.advance_ledger("vol", from_version, state(generation), audit)
    assert repository.audit_log("vol") == []


def test_advance_ledger_holds_the_largest_generation(repository: Repository) -> None:
    repository.create_volume(new_volume("vol"), b"s")
    top = 2**63 - 1
    assert repository.advance_ledger("vol", 0, state(top), audit_for("vol", top)).won
    volume = repository.get_volume("vol")
    assert volume is not None
    assert volume.state == state(top)


def test_record_audit_and_audit_log_limit(repository: Repository) -> None:
    records = [AuditRecord("vol", float(i), EVIDENCE, "conflict", 3, 3, 7, 8 + i) for i in range(5)]
    for record in records:
        repository.record_audit(record)
    repository.record_audit(AuditRecord("other", 0.0, "admin", "advanced", 0, 1, None, 1))
    assert repository.audit_log("vol") == records[::-1]
    assert repository.audit_log("vol", limit=3) == records[::-1][:3]
    assert repository.audit_log("other") == [
        AuditRecord("other", 0.0, "admin", "advanced", 0, 1, None, 1)
    ]
    assert repository.audit_log("nobody") == []
    with pytest.raises(ValueError, match="negative"):
        repository.audit_log("vol", limit=-1)


def test_audit_log_order_is_insertion_not_time(repository: Repository) -> None:
    repository.record_audit(AuditRecord("vol", 50.0, "admin", "conflict", 0, 0, None, 1))
    repository.record_audit(AuditRecord("vol", 10.0, "admin", "conflict", 0, 0, None, 2))
    assert [record.to_generation for record in repository.audit_log("vol")] == [2, 1]


def test_advance_ledger_thread_race_has_one_winner_per_round(repository: Repository) -> None:
    repository.create_volume(new_volume("vol"), b"s")
    for version in range(THREAD_ROUNDS):

        def attempt(thread: int, version: int = version) -> AdvanceOutcome:
            audit = audit_for("vol", version + 1, from_version=version, at=float(thread))
            return repository.advance_ledger("vol", version, state(version + 1), audit)

        outcomes = race(THREADS, attempt)
        assert len(outcomes) == THREADS
        assert sum(outcome.won for outcome in outcomes) == 1
        round_log = repository.audit_log("vol", limit=THREADS)
        assert [record.outcome for record in round_log].count("advanced") == 1
        conflicts = [record for record in round_log if record.outcome == "conflict"]
        assert len(conflicts) == THREADS - 1
        now = version + 1  # every loser saw the winner's version and generation
        assert all(
            (c.from_version, c.to_version, c.from_generation) == (now,) * 3 for c in conflicts
        )
    volume = repository.get_volume("vol")
    assert volume is not None
    assert (volume.version, volume.state) == (THREAD_ROUNDS, state(THREAD_ROUNDS))
    log = repository.audit_log("vol", limit=10_000)
    assert len(log) == THREADS * THREAD_ROUNDS
    assert [record.outcome for record in log].count("advanced") == THREAD_ROUNDS


def test_advance_ledger_process_race_has_one_winner_per_round(repository: Repository) -> None:
    repository.create_volume(new_volume("vol"), b"s")
    results = _run_processes(
        race_rounds_worker,
        [(spec_of(repository), "vol", PROCESS_ROUNDS, worker) for worker in range(2)],
    )
    wins = [results[0], results[1]]
    assert all(isinstance(won, list) and len(won) == PROCESS_ROUNDS for won in wins)
    for version in range(PROCESS_ROUNDS):
        round_wins = [won[version] for won in wins]  # type: ignore[index]
        assert round_wins.count(True) == 1, f"round {version}: {round_wins}"
    volume = repository.get_volume("vol")
    assert volume is not None
    assert volume.version == PROCESS_ROUNDS
    assert volume.state == state(PROCESS_ROUNDS)
    log = repository.audit_log("vol", limit=10_000)
    assert len(log) == 2 * PROCESS_ROUNDS
    assert [record.outcome for record in log].count("advanced") == PROCESS_ROUNDS
    assert [record.outcome for record in log].count("conflict") == PROCESS_ROUNDS


# migrations -------------------------------------------------------------------------------


def test_migrations_are_numbered_in_order() -> None:
    assert [migration.version for migration in MIGRATIONS] == list(range(1, LATEST_VERSION + 1))
    assert pending_migrations(0, "db") == MIGRATIONS
    assert pending_migrations(LATEST_VERSION, "db") == ()
    with pytest.raises(UnsupportedVersionError, match=f"version {LATEST_VERSION + 1}"):
        pending_migrations(LATEST_VERSION + 1, "db")


@pytest.mark.parametrize("dialect", list(DIALECT_TYPES))
def test_migration_sql_fills_every_placeholder(dialect: str) -> None:
    for migration in MIGRATIONS:
        for statement in migration.sql(dialect):  # type: ignore[arg-type]
            assert "{" not in statement
            assert "}" not in statement


def test_stored_version() -> None:
    assert stored_version(None) == 0
    assert stored_version(3) == 3
    with pytest.raises(FormatError):
        stored_version("1")
    with pytest.raises(FormatError):
        stored_version(0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrate_creates_the_schema_and_is_idempotent(backend: str, tmp_path: Path) -> None:
    with closing(make_repository(backend, tmp_path, migrate=False)) as repository:
        assert "kbs_volumes" not in table_names(repository)
        assert repository.migrate() == LATEST_VERSION
        tables = table_names(repository)
        assert {"kbs_schema_version", "kbs_volumes", "kbs_ledger_audit"} <= tables
        repository.create_volume(new_volume("vol"), b"s")
        assert repository.migrate() == LATEST_VERSION
        assert table_names(repository) == tables
        versions = raw_query(repository, "SELECT version FROM kbs_schema_version")
        assert sorted(row[0] for row in versions) == list(range(1, LATEST_VERSION + 1))
        assert repository.list_volumes() == ["vol"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrate_refuses_a_newer_empty_database_untouched(backend: str, tmp_path: Path) -> None:
    with closing(make_repository(backend, tmp_path, migrate=False)) as repository:
        raw_query(
            repository,
            "CREATE TABLE kbs_schema_version "
            "(version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)",
        )
        raw_query(repository, f"INSERT INTO kbs_schema_version VALUES ({LATEST_VERSION + 1}, 1)")
        with pytest.raises(UnsupportedVersionError, match="upgrade cvmstore"):
            repository.migrate()
        assert table_names(repository) == {"kbs_schema_version"}
        rows = raw_query(repository, "SELECT version, applied FROM kbs_schema_version")
        assert rows == [(LATEST_VERSION + 1, 1.0)]


def test_migrate_refuses_a_newer_database_untouched(repository: Repository) -> None:
    repository.create_volume(new_volume("vol"), b"s")
    raw_query(repository, f"INSERT INTO kbs_schema_version VALUES ({LATEST_VERSION + 7}, 9)")
    tables = table_names(repository)
    with pytest.raises(UnsupportedVersionError, match=f"version {LATEST_VERSION + 7}"):
        repository.migrate()
    assert table_names(repository) == tables
    versions = raw_query(repository, "SELECT version FROM kbs_schema_version")
    assert sorted(row[0] for row in versions) == [
        *range(1, LATEST_VERSION + 1),
        LATEST_VERSION + 7,
    ]
    assert repository.list_volumes() == ["vol"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrate_from_two_processes_at_once(backend: str, tmp_path: Path) -> None:
    for _ in range(MIGRATE_RACES):
        spec = fresh_spec(backend, tmp_path)
        try:
            results = _run_processes(migrate_worker, [(spec, worker) for worker in range(2)])
            assert results == {0: LATEST_VERSION, 1: LATEST_VERSION}
            with closing(spec.open()) as repository:
                versions = raw_query(repository, "SELECT version FROM kbs_schema_version")
                assert sorted(row[0] for row in versions) == list(range(1, LATEST_VERSION + 1))
                assert repository.create_volume(new_volume("vol"), b"s")
        finally:
            if spec.schema is not None:
                drop_schema(spec.location, spec.schema)


# lifecycle --------------------------------------------------------------------------------


def test_closed_repository_refuses_work(repository: Repository) -> None:
    repository.close()
    with pytest.raises(StateError, match="closed"):
        repository.get_volume("vol")
    with pytest.raises(StateError, match="closed"):
        repository.put_resource("a/b/c", b"x", 1.0)
    repository.close()  # idempotent


def test_a_second_repository_sees_the_same_database(repository: Repository) -> None:
    spec = spec_of(repository)
    assert isinstance(spec, RepositorySpec)
    repository.create_volume(new_volume("vol"), b"s")
    with closing(spec.open()) as other:
        assert other.get_volume("vol") == repository.get_volume("vol")
        assert other.advance_ledger("vol", 0, state(1), audit_for("vol", 1)).won
    assert not repository.advance_ledger("vol", 0, state(1), audit_for("vol", 1)).won


# SQLite specifics -------------------------------------------------------------------------


def test_sqlite_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "kbs.db"
    with closing(SqliteRepository(path)) as first:
        first.migrate()
        first.create_volume(new_volume("vol"), b"root")
        first.advance_ledger("vol", 0, state(1), audit_for("vol", 1))
        first.put_session(session())
        first.add_reference("snp-measurement", "aa", 1.0)
    with closing(SqliteRepository(path)) as second:
        assert second.migrate() == LATEST_VERSION
        volume = second.get_volume("vol")
        assert volume is not None
        assert (volume.version, volume.state) == (1, state(1))
        assert second.get_resource("cvmstore/volume/vol") == b"root"
        assert second.get_session("0" * 32) == session()
        assert second.list_references("snp-measurement") == ["aa"]
        assert len(second.audit_log("vol")) == 1


def test_sqlite_file_is_private_and_its_directory_is_made(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "deeper" / "kbs.db"
    with closing(SqliteRepository(path)) as repository:
        repository.migrate()
        repository.put_resource("a/b/c", b"x", 1.0)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert companion.exists()
            assert stat.S_IMODE(companion.stat().st_mode) & 0o077 == 0


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    with closing(SqliteRepository(tmp_path / "kbs.db")) as repository:
        connection = repository._connection()
        assert connection.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
        assert connection.execute("PRAGMA synchronous").fetchall() == [(2,)]  # FULL
        assert connection.execute("PRAGMA foreign_keys").fetchall() == [(1,)]
        busy = connection.execute("PRAGMA busy_timeout").fetchall()
        assert busy == [(int(BUSY_TIMEOUT * 1000),)]


def test_sqlite_uses_one_connection_per_thread_and_closes_them_all(tmp_path: Path) -> None:
    repository = SqliteRepository(tmp_path / "kbs.db")
    repository.migrate()
    connections = race(THREADS, lambda _: repository._connection())
    assert len({id(connection) for connection in connections}) == THREADS
    assert repository._connection() not in connections
    repository.close()
    for connection in connections:
        with pytest.raises(Exception, match="closed"):
            connection.execute("SELECT 1")


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(FormatError, match="not a usable SQLite database"):
        SqliteRepository(path)


def test_sqlite_cannot_create_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(DeviceError, match="cannot create"):
        SqliteRepository(blocker / "kbs.db")


def test_sqlite_rows_of_the_wrong_type_are_a_format_error(tmp_path: Path) -> None:
    with closing(make_repository("sqlite", tmp_path)) as repository:
        repository.create_volume(new_volume("vol"), b"s")
        raw_query(repository, "UPDATE kbs_volumes SET version = 'seven'")
        with pytest.raises(FormatError, match="ledger version"):
            repository.get_volume("vol")

    # The schema's CHECK keeps a ledger entry all set or all NULL; the mapping checks again.
    with pytest.raises(FormatError, match="partly set"):
        volume_from_row(("vol", "cvmstore/volume/vol", "{}", 1.0, 0, None, b"root", None))


# PostgreSQL specifics ---------------------------------------------------------------------


def test_postgres_unreachable_is_a_device_error_without_the_password() -> None:
    url = "postgresql://kbs:hunter2-Secret@127.0.0.1:1/kbs"
    with pytest.raises(DeviceError) as caught:
        PostgresRepository(url)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


def test_postgres_wrong_password_is_a_device_error_without_it() -> None:
    url = postgres_url()
    head, _, tail = url.rpartition("@")
    bad = f"{head.rpartition(':')[0]}:Wrong-Pass-xyz@{tail}"
    with pytest.raises(DeviceError) as caught:  # the test server checks passwords
        PostgresRepository(bad)
    assert "Wrong-Pass-xyz" not in _traceback_text(caught.value)
    assert "cvmstore" in str(caught.value)  # the message names the database


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        pytest.param("postgresql://kbs:Qz/Xk-Word@127.0.0.1:1/db", ["Qz", "Xk-Word"], id="slash"),
        pytest.param("postgresql://kbs:Qz?Xk@127.0.0.1:1/db", ["Qz", "Xk"], id="question-mark"),
        pytest.param("postgresql://kbs:Qz@Xk@127.0.0.1:1/db", ["Qz", "Xk"], id="at-sign"),
        pytest.param("postgresql://kbs:Qz%2FXk@127.0.0.1:1/db", ["Qz", "Xk"], id="escaped"),
        pytest.param("postgresql://kbs@127.0.0.1:1/db?password=QzXk", ["QzXk"], id="query"),
        pytest.param("postgresql://kbs:QzXk@127.0.0.1:port/db", ["QzXk"], id="bad-port"),
        pytest.param("host=127.0.0.1 port=1 password=QzXk", ["QzXk"], id="key-value"),
    ],
)
def test_postgres_errors_never_show_the_password(url: str, fragments: list[str]) -> None:
    with pytest.raises(CvmstoreError) as caught:
        PostgresRepository(url)
    assert isinstance(caught.value, DeviceError | FormatError)
    text = _traceback_text(caught.value)
    for fragment in fragments:
        assert fragment not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"schema": "Bad-Name"}, "schema must match", id="schema"),
        pytest.param({"pool_size": 0}, "pool_size", id="pool-size"),
    ],
)
def test_postgres_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostgresRepository("postgresql://h/db", **kwargs)  # type: ignore[arg-type]


def test_postgres_connection_settings(tmp_path: Path) -> None:
    with closing(make_repository("postgresql", tmp_path)) as repository:
        assert isinstance(repository, PostgresRepository)
        with repository._pool.connection() as connection:
            settings = {
                name: connection.execute(f"SHOW {name}").fetchall()[0][0]
                for name in ("statement_timeout", "search_path")
            }
        assert settings == {
            "statement_timeout": f"{STATEMENT_TIMEOUT}s",
            "search_path": repository.schema,
        }


def test_postgres_schema_keeps_tests_apart(tmp_path: Path) -> None:
    with (
        closing(make_repository("postgresql", tmp_path)) as first,
        closing(make_repository("postgresql", tmp_path)) as second,
    ):
        first.create_volume(new_volume("vol"), b"first")
        assert second.get_volume("vol") is None
        assert second.create_volume(new_volume("vol"), b"second")
        assert first.get_resource("cvmstore/volume/vol") == b"first"


def test_abandoned_test_schemas_are_dropped(tmp_path: Path) -> None:
    url = postgres_url()
    abandoned = f"{SCHEMA_PREFIX}99999999_{os.getpid()}"  # no such pid (above pid_max)
    with closing(make_repository("postgresql", tmp_path)) as live:
        with closing(PostgresRepository(url, schema=abandoned)):
            pass
        assert isinstance(live, PostgresRepository)
        dropped = drop_abandoned_schemas(url)
        assert abandoned in dropped
        assert live.schema not in dropped
        assert live.list_volumes() == []  # still there


# open_repository --------------------------------------------------------------------------


def test_open_repository_sqlite_url(tmp_path: Path) -> None:
    path = tmp_path / "with space" / "kbs.db"
    url = f"sqlite://{str(path).replace(' ', '%20')}"
    with closing(open_repository(url)) as repository:
        assert isinstance(repository, SqliteRepository)
        assert repository.path == path
        assert repository.backend == "sqlite"
    assert path.exists()


def test_open_repository_plain_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with closing(open_repository(str(tmp_path / "abs.db"))) as repository:
        assert isinstance(repository, SqliteRepository)
        assert repository.path == tmp_path / "abs.db"
    monkeypatch.chdir(tmp_path)
    with closing(open_repository("relative.db")) as repository:
        assert isinstance(repository, SqliteRepository)
    assert (tmp_path / "relative.db").exists()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_repository_postgres_url(scheme: str) -> None:
    url = postgres_url()
    url = f"{scheme}://{url.partition('://')[2]}"
    with closing(open_repository(url)) as repository:
        assert isinstance(repository, PostgresRepository)
        assert repository.backend == "postgresql"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("mysql://root:hunter2@db/kbs", "unsupported", id="mysql"),
        pytest.param("HTTP://user:hunter2@example/", "unsupported", id="http"),
        pytest.param("sqlite://user:hunter2@host/kbs.db", "malformed", id="sqlite-host"),
        pytest.param("sqlite:relative.db", "malformed", id="sqlite-no-slashes"),
        pytest.param("sqlite:///var/kbs.db?mode=ro", "malformed", id="sqlite-query"),
        pytest.param("sqlite:///var/lib/", "directory", id="sqlite-directory"),
        pytest.param("postgresql:hunter2", "malformed", id="postgres-no-slashes"),
    ],
)
def test_open_repository_refuses(url: str, message: str) -> None:
    with pytest.raises(FormatError, match=message) as caught:
        open_repository(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?password=secret&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
        ("postgresql://h/db?SSLPassword=secret#x", "postgresql://h/db?SSLPassword=***#x"),
        ("postgresql://u:se@cr/et?#@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:a%40b@h/db", "postgresql://u:***@h/db"),
        ("/var/lib/kbs.db", "/var/lib/kbs.db"),
    ],
)  # fmt: skip
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


# helpers ----------------------------------------------------------------------------------


def _traceback_text(error: BaseException) -> str:
    """What a traceback shows of `error` and the exceptions chained to it."""
    return "".join(traceback.format_exception(error))


def _run_processes(
    target: Callable[..., None], args: list[tuple[object, ...]]
) -> dict[int, object]:
    """Run `target(*args[i], barrier, queue)` in spawned processes; results by worker.

    A worker puts (worker, result) or (worker, traceback text) on the queue.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(args))
    queue: Queue[tuple[int, object]] = context.Queue()
    processes = [
        context.Process(target=target, args=(*arguments, barrier, queue)) for arguments in args
    ]
    for process in processes:
        process.start()
    try:
        results = dict(queue.get(timeout=300) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
        queue.close()
        queue.join_thread()
    failures = [result for result in results.values() if isinstance(result, str)]
    assert not failures, "\n".join(failures)
    assert all(process.exitcode == 0 for process in processes)
    return {worker: result for worker, result in results.items() if not isinstance(result, str)}
