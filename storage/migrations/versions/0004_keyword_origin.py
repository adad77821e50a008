"""Record who first asked for each keyword, so email readers' own queries stay private.

With `email.allow_custom_queries = true`, a stranger's confirmed free-form query became a box
on the public sign-up page and a section of the README. `keywords.origin` says who asked for a
keyword first (email < chat < operator); only the operator's and (by default) chat channels'
keywords are listed publicly.

Existing keywords: one that is not in the config file and whose first subscription was made in
the same instant as the keyword (the subscription created it) takes that subscription's kind:
`email` when an email address asked for it, `chat` for a chat channel. Every other keyword was
added by the operator (`keywords add`, the config file) and stays public.

Revision ID: 0004_keyword_origin
Revises: 0003_leases
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_keyword_origin"
down_revision: str | None = "0003_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are frozen history: they spell the tables out instead of importing the models.
_KEYWORDS = sa.table(
    "keywords",
    sa.column("id", sa.Integer()),
    sa.column("from_config", sa.Boolean()),
    sa.column("origin", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_SUBSCRIPTIONS = sa.table(
    "subscriptions",
    sa.column("keyword_id", sa.Integer()),
    sa.column("target_kind", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def _created_by(*, email: bool) -> sa.ColumnElement[bool]:
    """Keywords that an email subscription (or, `email` False, a chat one) created."""
    creator = (
        sa.select(sa.literal(1))
        .select_from(_SUBSCRIPTIONS)
        .where(
            _SUBSCRIPTIONS.c.keyword_id == _KEYWORDS.c.id,
            _SUBSCRIPTIONS.c.created_at == _KEYWORDS.c.created_at,
            (_SUBSCRIPTIONS.c.target_kind == "email")
            if email
            else (_SUBSCRIPTIONS.c.target_kind != "email"),
        )
    )
    return sa.and_(_KEYWORDS.c.from_config == sa.false(), creator.exists())


def upgrade() -> None:
    """Add keywords.origin and classify the keywords already stored."""
    with op.batch_alter_table("keywords") as batch:
        batch.add_column(
            sa.Column("origin", sa.String(16), nullable=False, server_default="operator")
        )
    op.execute(_KEYWORDS.update().where(_created_by(email=False)).values(origin="chat"))
    # Last, so a keyword both kinds created in the same instant stays private.
    op.execute(_KEYWORDS.update().where(_created_by(email=True)).values(origin="email"))


def downgrade() -> None:
    """Drop the column again (every keyword is listed publicly, as before)."""
    with op.batch_alter_table("keywords") as batch:
        batch.drop_column("origin")
