"""Index the outbox by subscription and status.

Recording a target's outcomes looks up its subscriptions' pending deliveries. With only the
(status, next_attempt_at) index, SQLite answered `subscription_id IN (...) AND status =
'pending'` by walking every pending row of every target: sending 10,000 digests re-read a
shrinking outbox of 129,000 rows once per digest.

Revision ID: 0002_deliveries_by_subscription
Revises: 0001_initial
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_deliveries_by_subscription"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ix_deliveries_subscription_status."""
    op.create_index(
        "ix_deliveries_subscription_status", "deliveries", ["subscription_id", "status"]
    )


def downgrade() -> None:
    """Drop it again."""
    op.drop_index("ix_deliveries_subscription_status", table_name="deliveries")
