"""Fixtures of the sink tests: the session's PostgreSQL server and a fresh
database per test (see tests/pg.py)."""

from __future__ import annotations

import pytest

from tests import pg


@pytest.fixture(scope="session")
def postgres() -> pg.Server:
    """The session's PostgreSQL server; skips (fails under CI) where none can run."""
    return pg.server()


@pytest.fixture
def pg_db(postgres) -> str:
    """A new, empty database on the session's server; its name."""
    return postgres.new_db()

