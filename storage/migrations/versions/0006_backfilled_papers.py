"""Mark papers first stored by a keyword's backfill.

A backfill fetches a new keyword's latest papers, some of them weeks old. They were listed (and
translated) as that day's new papers in the Markdown digest archive; the flag keeps them as
history.

Revision ID: 0006_backfilled_papers
Revises: 0005_operator_view
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_backfilled_papers"
down_revision: str | None = "0005_operator_view"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add papers.backfilled (false for every paper stored so far)."""
    with op.batch_alter_table("papers") as batch:
        batch.add_column(
            sa.Column("backfilled", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    """Drop it again."""
    with op.batch_alter_table("papers") as batch:
        batch.drop_column("backfilled")
