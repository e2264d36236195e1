"""Fixtures of the KBS tests: `repository`, a fresh migrated repository of each backend.

`make_repository` (from `tests.kbs.support`, re-exported here) makes one by hand.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cvmstore.kbs.repository import Repository
from tests.kbs.support import BACKENDS, POSTGRES_ENV, drop_abandoned_schemas
from tests.kbs.support import make_repository as make_repository

__all__ = ["make_repository"]


@pytest.fixture(scope="session", autouse=True)
def _drop_abandoned_postgres_schemas() -> None:
    """Clear what killed test runs left on the PostgreSQL test server (once per session)."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        # Without a server the PostgreSQL cases fail or skip on their own.
        with contextlib.suppress(psycopg.OperationalError):
            drop_abandoned_schemas(url)


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def repository(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    """A fresh, migrated repository: SQLite in `tmp_path`, or PostgreSQL in its own schema.

    The PostgreSQL case skips without CVMSTORE_TEST_POSTGRES (fails under CI=true).
    """
    backend: str = request.param
    made = make_repository(backend, tmp_path)
    try:
        yield made
    finally:
        made.close()
