"""SQLAlchemy models: the database schema. Rows never leave `storage/`.

Every timestamp is stored as UTC and read back timezone-aware (`UTCDateTime`). Lists (authors,
categories, run warnings) are JSON. The schema here and `migrations/versions/*` must agree;
`tests/test_migrations.py` checks that they do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.expression import false

# Table names of other libraries that may share our database and are not ours to migrate:
# APScheduler's job store, left by versions that kept the `serve` schedule in the database (it
# is kept in memory now: docs/operations.md, "The schedule across restarts").
FOREIGN_TABLES = frozenset({"apscheduler_jobs"})


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic filter: leave tables that belong to other libraries (APScheduler) alone."""
    return not (type_ == "table" and name in FOREIGN_TABLES)


def as_utc(value: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so the value is written as naive
    UTC and UTC is re-attached on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC (naive UTC for SQLite)."""
        if value is None:
            return None
        value = as_utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        """Re-attach UTC."""
        if value is None:
            return None
        return as_utc(value)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class PaperRow(Base):
    """One arXiv paper at its latest stored version."""

    __tablename__ = "papers"

    arxiv_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # without version
    version: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    authors: Mapped[list[str]] = mapped_column(JSON)
    abstract: Mapped[str] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)
    journal_ref: Mapped[str | None] = mapped_column(Text)
    doi: Mapped[str | None] = mapped_column(Text)
    categories: Mapped[list[str]] = mapped_column(JSON)
    primary_category: Mapped[str] = mapped_column(String(64))
    published: Mapped[datetime] = mapped_column(UTCDateTime)
    updated: Mapped[datetime] = mapped_column(UTCDateTime)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    # First stored by a keyword's backfill, not a harvest: history, never a day's new paper.
    backfilled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        # the day's new papers (digest archive, translations)
        Index("ix_papers_first_seen", "first_seen"),
        # latest matches are ordered by last-updated date
        Index("ix_papers_updated", "updated", "arxiv_id"),
    )


class KeywordRow(Base):
    """A tracked query. `key` is its normalised, case-folded text: lookups go through it."""

    __tablename__ = "keywords"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    query: Mapped[str] = mapped_column(Text)  # as first added: what headings show
    key: Mapped[str] = mapped_column(Text)
    from_config: Mapped[bool] = mapped_column(Boolean, default=False)
    # Who first asked for it (a digest.domain.KeywordOrigin value): decides whether the README
    # and the public sign-up page may list it. Only ever raised (email < chat < operator).
    origin: Mapped[str] = mapped_column(String(16), default="operator", server_default="operator")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    backfilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("key", name="uq_keywords_key"),)


class MatchRow(Base):
    """A paper matches a keyword."""

    __tablename__ = "matches"

    keyword_id: Mapped[int] = mapped_column(
        ForeignKey("keywords.id", ondelete="CASCADE"), primary_key=True
    )
    arxiv_id: Mapped[str] = mapped_column(
        ForeignKey("papers.arxiv_id", ondelete="CASCADE"), primary_key=True
    )
    first_matched: Mapped[datetime] = mapped_column(UTCDateTime)

    # the primary key (keyword_id, arxiv_id) serves "matches of a keyword"; this one serves
    # "keywords of a paper" (deletes, the day's digest)
    __table_args__ = (Index("ix_matches_arxiv_id", "arxiv_id"),)


class SimilarityModelRow(Base):
    """A `like:` keyword's trained model (digest.similar), kept until its seeds change."""

    __tablename__ = "similarity_models"

    keyword_id: Mapped[int] = mapped_column(
        ForeignKey("keywords.id", ondelete="CASCADE"), primary_key=True
    )
    seed_key: Mapped[str] = mapped_column(String(64))  # digest.similar.seed_key: what it fits
    model: Mapped[str] = mapped_column(Text)  # SimilarityModel.dumps JSON (never pickle)
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SubscriptionRow(Base):
    """A target's standing order for one keyword."""

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_kind: Mapped[str] = mapped_column(String(32))
    target_address: Mapped[str] = mapped_column(String(512))
    keyword_id: Mapped[int] = mapped_column(ForeignKey("keywords.id", ondelete="CASCADE"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # status alerts on recent

    __table_args__ = (
        UniqueConstraint(
            "target_kind", "target_address", "keyword_id", name="uq_subscriptions_target_keyword"
        ),
        Index("ix_subscriptions_keyword_id", "keyword_id"),
    )


class DeliveryRow(Base):
    """The outbox: one paper owed to one subscription. The primary key makes it exactly-once."""

    __tablename__ = "deliveries"

    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="CASCADE"), primary_key=True
    )
    arxiv_id: Mapped[str] = mapped_column(
        ForeignKey("papers.arxiv_id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16))  # a DeliveryStatus value
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # the outbox scan: pending rows that are due
        Index("ix_deliveries_status_next_attempt", "status", "next_attempt_at"),
        # "is this paper already owed to anyone" during a harvest
        Index("ix_deliveries_arxiv_id", "arxiv_id"),
        # a target's pending deliveries when its outcomes are recorded
        Index("ix_deliveries_subscription_status", "subscription_id", "status"),
    )


class TargetOptionRow(Base):
    """A per-target setting such as a channel's translation language."""

    __tablename__ = "target_options"

    target_kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    target_address: Mapped[str] = mapped_column(String(512), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class TranslationRow(Base):
    """A paper's title and abstract in another language."""

    __tablename__ = "translations"

    arxiv_id: Mapped[str] = mapped_column(
        ForeignKey("papers.arxiv_id", ondelete="CASCADE"), primary_key=True
    )
    language: Mapped[str] = mapped_column(String(16), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    abstract: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunRow(Base):
    """One daily cycle."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    throttled: Mapped[int] = mapped_column(Integer, default=0)
    harvested: Mapped[int] = mapped_column(Integer, default=0)
    new_papers: Mapped[int] = mapped_column(Integer, default=0)
    new_matches: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    disabled: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list[str]] = mapped_column(JSON)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    deferred: Mapped[int] = mapped_column(Integer, default=0)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_runs_started_at", "started_at"),)


class LeaseRow(Base):
    """A named lease (the daily cycle's): who holds it and until when.

    `owner` is NULL when the lease is free; `host`, `pid` and `acquired_at` then describe the
    last holder. Times are the database's clock where it has one (PostgreSQL), so processes on
    machines whose clocks disagree still agree on when a lease expires.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StateRow(Base):
    """A small named value kept between runs (the harvest watermark, alert bookkeeping)."""

    __tablename__ = "state"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
