"""Add the leases table: one cycle at a time across processes and machines.

Two `daily-papers run`s, or a `serve` replica's scheduled cycle and a manual run, both
delivered everything owed. A cycle now holds the `cycle` lease row, renewed while it runs and
taken over after its expiry when its holder was killed.

Revision ID: 0003_leases
Revises: 0002_deliveries_by_subscription
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_leases"
down_revision: str | None = "0002_deliveries_by_subscription"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are frozen history: they spell the schema out instead of importing the models.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the leases table."""
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("acquired_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
    )


def downgrade() -> None:
    """Drop it again."""
    op.drop_table("leases")
