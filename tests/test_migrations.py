"""Alembic migrations: they build the schema the models describe, and upgrades keep data."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect

from digest.domain import Target
from storage.models import Base, include_object
from storage.sql_store import MIGRATIONS_DIR, SqlStore
from tests.test_sql_store import harvest, paper

T0 = datetime(2025, 2, 3, 21, 0, tzinfo=UTC)


def schema_diffs(url: str) -> list[Any]:
    """What alembic autogenerate would change to make the database match the models."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_object": include_object, "compare_type": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def add_apscheduler_table(url: str) -> None:
    """Create a stand-in for APScheduler's job store table, which is not ours to migrate."""
    engine = create_engine(url)
    try:
        metadata = MetaData()
        Table("apscheduler_jobs", metadata, Column("id", Integer, primary_key=True))
        metadata.create_all(engine)
    finally:
        engine.dispose()


def test_migrated_sqlite_matches_the_models(tmp_path: Path) -> None:
    """On an empty SQLite file, upgrade head creates exactly the models' schema."""
    url = f"sqlite:///{tmp_path / 'nested' / 'data' / 'daily-papers.sqlite3'}"
    with SqlStore(url=url) as store:
        store.migrate()  # also creates the missing data folders
    add_apscheduler_table(url)
    assert schema_diffs(url) == []
    engine = create_engine(url)
    try:
        names = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {t.name for t in Base.metadata.sorted_tables} <= names
    assert "alembic_version" in names


@pytest.mark.postgres
def test_migrated_postgres_matches_the_models(postgres_url: str) -> None:
    """On PostgreSQL, upgrade head creates exactly the models' schema."""
    add_apscheduler_table(postgres_url)
    assert schema_diffs(postgres_url) == []


def test_schema_drift_is_detected(tmp_path: Path) -> None:
    """The comparison is not vacuous: a missing index shows up as a difference."""
    url = f"sqlite:///{tmp_path / 'daily-papers.sqlite3'}"
    with SqlStore(url=url) as store:
        store.migrate()
    connection = sqlite3.connect(tmp_path / "daily-papers.sqlite3")
    with connection:
        connection.execute("DROP INDEX ix_papers_first_seen")
    connection.close()
    diffs = schema_diffs(url)
    assert [d[0] for d in diffs] == ["add_index"]


def test_one_head_and_the_store_is_at_it(tmp_path: Path) -> None:
    """The revision history is linear and a migrated database stands at its head."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    assert len(script.get_heads()) == 1
    url = f"sqlite:///{tmp_path / 'daily-papers.sqlite3'}"
    with SqlStore(url=url) as store:
        store.migrate()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert (
                MigrationContext.configure(conn).get_current_revision() == script.get_current_head()
            )
    finally:
        engine.dispose()


def test_reopening_and_migrating_again_keeps_the_data(tmp_path: Path) -> None:
    """Upgrading an existing database (as every start does) keeps keywords, papers, outbox."""
    url = f"sqlite:///{tmp_path / 'daily-papers.sqlite3'}"
    with SqlStore(url=url) as store:
        store.migrate()
        store.add_subscription(Target("slack", "C1"), "LLM Agents", now=T0)
        harvest(store, [paper("2501.00001")], watermark=T0)
    with SqlStore(url=url) as reopened:
        reopened.migrate()
        assert [k.query for k in reopened.list_keywords()] == ["LLM Agents"]
        assert reopened.known_versions(["2501.00001"]) == {"2501.00001": 1}
        assert reopened.get_watermark() == T0
        (batch,) = reopened.pending_batches(now=T0)
        assert batch.deliveries[0].paper == paper("2501.00001")


def test_from_settings_uses_the_data_folder(tmp_path: Path) -> None:
    """With no database.url the store lives in data_dir, which migrate() creates."""
    from digest.config import DatabaseSettings, ServiceSettings, Settings

    settings = Settings(
        service=ServiceSettings(data_dir=str(tmp_path / "data")), database=DatabaseSettings()
    )
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.add_keyword("x")
    assert (tmp_path / "data" / "daily-papers.sqlite3").exists()


def test_0004_classifies_the_keywords_already_stored(tmp_path: Path) -> None:
    """Upgrading from 0003: a keyword an email sign-up created is private, a chat one chat."""
    url = f"sqlite:///{tmp_path / 'daily-papers.sqlite3'}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0003_leases")
    created = "2025-02-03 21:00:00.000000"
    later = "2025-02-04 09:00:00.000000"
    connection = sqlite3.connect(tmp_path / "daily-papers.sqlite3")
    with connection:
        connection.executemany(
            "INSERT INTO keywords (id, query, key, from_config, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                (1, "from config", "from config", 1, created),
                (2, "added by hand", "added by hand", 0, created),
                (3, "a stranger's query", "a stranger's query", 0, created),
                (4, "a channel's query", "a channel's query", 0, created),
            ],
        )
        connection.executemany(
            "INSERT INTO subscriptions (target_kind, target_address, keyword_id, active, "
            "created_at) VALUES (?, ?, ?, 1, ?)",
            [
                ("email", "a@lab.org", 1, created),  # a config keyword stays the operator's
                ("email", "a@lab.org", 2, later),  # subscribed to after `keywords add`
                ("email", "b@lab.org", 3, created),  # the sign-up created it
                ("slack", "C1", 3, later),
                ("slack", "C1", 4, created),
            ],
        )
    connection.close()
    with SqlStore(url=url) as store:
        store.migrate()
        origins = {k.query: k.origin for k in store.list_keywords()}
    assert origins == {
        "from config": "operator",
        "added by hand": "operator",
        "a stranger's query": "email",
        "a channel's query": "chat",
    }
