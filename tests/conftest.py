"""Fixtures shared by the whole test suite, one section per area.

Add a new area as its own headed section; keep each fixture's docstring one line.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from storage.models import FOREIGN_TABLES, Base
from storage.sql_store import SqlStore

# =============================================================================================
# Database (storage): `store` (SQLite and PostgreSQL), `sqlite_store`, `postgres_url`
# =============================================================================================
# PostgreSQL tests use one throw-away database per test session (created with a random name,
# dropped at the end) and empty its tables before each test: far faster than migrating per test.
# They FAIL when the server is unreachable; DAILY_PAPERS_TEST_SKIP_POSTGRES=1 skips them on a
# machine without PostgreSQL (./scripts/test sets it when it cannot start one), never under CI.

IN_CI = os.environ.get("CI") == "true"  # CI must run every test: no skip variable counts there
POSTGRES_ADMIN_DSN = os.environ.get(
    "DAILY_PAPERS_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)
SKIP_POSTGRES = os.environ.get("DAILY_PAPERS_TEST_SKIP_POSTGRES") == "1" and not IN_CI
SKIP_POSTGRES_REASON = "DAILY_PAPERS_TEST_SKIP_POSTGRES=1 is set"


def _sqlalchemy_url(dsn: str, dbname: str) -> str:
    """A postgresql+psycopg URL for `dbname` on the server of a libpq `dsn`."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    return f"postgresql+psycopg://{user}@{host}:{port}/{dbname}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this test session (dropped at the end)."""
    if SKIP_POSTGRES:
        pytest.skip(SKIP_POSTGRES_REASON)
    name = f"daily_papers_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is unreachable ({POSTGRES_ADMIN_DSN}): {exc}. Start it, or set "
            "DAILY_PAPERS_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL tests on purpose."
        )
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _sqlalchemy_url(POSTGRES_ADMIN_DSN, name)
        try:
            with SqlStore(url=url) as store:
                store.migrate()
            yield url
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _empty_postgres(url: str) -> None:
    """Remove every row (and restart id sequences) of our tables in the test database."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    tables = [t.name for t in Base.metadata.sorted_tables if t.name not in FOREIGN_TABLES]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in tables)
            )
        )


def _sqlite_store(folder: Path) -> SqlStore:
    """A migrated store on a new SQLite file in `folder`."""
    store = SqlStore(url=f"sqlite:///{folder / 'daily-papers.sqlite3'}")
    store.migrate()
    return store


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlStore]:
    """A migrated SqlStore on a fresh SQLite file (retry backoff 30 min, 8 attempts)."""
    with _sqlite_store(tmp_path) as store:
        yield store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A migrated, empty SqlStore on SQLite and on PostgreSQL (test runs once per backend)."""
    if request.param == "sqlite":
        with _sqlite_store(tmp_path) as sqlite:
            yield sqlite
        return
    url: str = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    with SqlStore(url=url) as postgres:
        yield postgres


# =============================================================================================
# Browser: tests marked `browser` drive Debian's chromium
# =============================================================================================
# They FAIL when chromium is missing; DAILY_PAPERS_TEST_SKIP_BROWSER=1 skips them on a machine
# where it cannot be installed (./scripts/test sets it there), never under CI.

SKIP_BROWSER = os.environ.get("DAILY_PAPERS_TEST_SKIP_BROWSER") == "1" and not IN_CI


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the browser tests when DAILY_PAPERS_TEST_SKIP_BROWSER=1 says chromium cannot be had."""
    if not SKIP_BROWSER:
        return
    skip = pytest.mark.skip(reason="DAILY_PAPERS_TEST_SKIP_BROWSER=1 is set")
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(skip)
