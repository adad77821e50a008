"""What the operator needs to tell failures apart: retries, deferred deliveries, disable times.

`runs` gains `retries` (arXiv requests that repeated a failed one), `deferred` (deliveries that
failed this time and wait for their next try, until now counted in `failed`) and
`next_retry_at`; `failed` now counts only deliveries given up for good. Rows of older cycles
keep their numbers: their `failed` still includes what was deferred. `subscriptions` gains
`disabled_at`, so `status` can alert on a subscription disabled since the last ok cycle
(subscriptions disabled before this revision have none and raise no such alert).

Revision 0004 is another branch's; this one follows 0003 here and is re-pointed at 0004 when
both are merged.

Revision ID: 0005_operator_view
Revises: 0004_keyword_origin
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_operator_view"
down_revision: str | None = "0004_keyword_origin"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are frozen history: they spell the schema out instead of importing the models.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the columns (batch mode: SQLite rebuilds the table where it must)."""
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("retries", sa.Integer, nullable=False, server_default="0"))
        runs.add_column(sa.Column("deferred", sa.Integer, nullable=False, server_default="0"))
        runs.add_column(sa.Column("next_retry_at", TIMESTAMP, nullable=True))
    with op.batch_alter_table("subscriptions") as subscriptions:
        subscriptions.add_column(sa.Column("disabled_at", TIMESTAMP, nullable=True))


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table("subscriptions") as subscriptions:
        subscriptions.drop_column("disabled_at")
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("next_retry_at")
        runs.drop_column("deferred")
        runs.drop_column("retries")
