"""Initial schema: papers, keywords, matches, subscriptions, the outbox, options, runs, state.

Revision ID: 0001_initial
Revises:
Create Date: 2025-02-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are frozen history: they spell the schema out instead of importing the models.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table and index."""
    op.create_table(
        "papers",
        sa.Column("arxiv_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("authors", sa.JSON, nullable=False),
        sa.Column("abstract", sa.Text, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("journal_ref", sa.Text, nullable=True),
        sa.Column("doi", sa.Text, nullable=True),
        sa.Column("categories", sa.JSON, nullable=False),
        sa.Column("primary_category", sa.String(64), nullable=False),
        sa.Column("published", TIMESTAMP, nullable=False),
        sa.Column("updated", TIMESTAMP, nullable=False),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_papers_first_seen", "papers", ["first_seen"])
    op.create_index("ix_papers_updated", "papers", ["updated", "arxiv_id"])

    op.create_table(
        "keywords",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("from_config", sa.Boolean, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("backfilled_at", TIMESTAMP, nullable=True),
        sa.UniqueConstraint("key", name="uq_keywords_key"),
    )

    op.create_table(
        "matches",
        sa.Column(
            "keyword_id",
            sa.Integer,
            sa.ForeignKey("keywords.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "arxiv_id",
            sa.String(64),
            sa.ForeignKey("papers.arxiv_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("first_matched", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_matches_arxiv_id", "matches", ["arxiv_id"])

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("target_kind", sa.String(32), nullable=False),
        sa.Column("target_address", sa.String(512), nullable=False),
        sa.Column(
            "keyword_id",
            sa.Integer,
            sa.ForeignKey("keywords.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint(
            "target_kind", "target_address", "keyword_id", name="uq_subscriptions_target_keyword"
        ),
    )
    op.create_index("ix_subscriptions_keyword_id", "subscriptions", ["keyword_id"])

    op.create_table(
        "deliveries",
        sa.Column(
            "subscription_id",
            sa.Integer,
            sa.ForeignKey("subscriptions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "arxiv_id",
            sa.String(64),
            sa.ForeignKey("papers.arxiv_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
    )
    op.create_index(
        "ix_deliveries_status_next_attempt", "deliveries", ["status", "next_attempt_at"]
    )
    op.create_index("ix_deliveries_arxiv_id", "deliveries", ["arxiv_id"])

    op.create_table(
        "target_options",
        sa.Column("target_kind", sa.String(32), primary_key=True),
        sa.Column("target_address", sa.String(512), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )

    op.create_table(
        "translations",
        sa.Column(
            "arxiv_id",
            sa.String(64),
            sa.ForeignKey("papers.arxiv_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("language", sa.String(16), primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("abstract", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("throttled", sa.Integer, nullable=False),
        sa.Column("harvested", sa.Integer, nullable=False),
        sa.Column("new_papers", sa.Integer, nullable=False),
        sa.Column("new_matches", sa.Integer, nullable=False),
        sa.Column("sent", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("disabled", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("warnings", sa.JSON, nullable=False),
    )
    op.create_index("ix_runs_started_at", "runs", ["started_at"])

    op.create_table(
        "state",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    """Drop everything this revision created."""
    for table in (
        "state",
        "runs",
        "translations",
        "target_options",
        "deliveries",
        "subscriptions",
        "matches",
        "keywords",
        "papers",
    ):
        op.drop_table(table)
