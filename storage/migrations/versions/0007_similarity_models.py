"""Cache the trained model of each `like:` keyword.

A `like:` keyword (digest.similar) is a tf-idf + linear classifier trained on its seed papers
against the recent stored papers. Training costs seconds, so the model is kept, as
`SimilarityModel.dumps` JSON, with the seed key it was trained for: it is retrained only when
the seeds (or their versions, or the training parameters) change.

Revision ID: 0007_similarity_models
Revises: 0006_backfilled_papers
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_similarity_models"
down_revision: str | None = "0006_backfilled_papers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations are frozen history: they spell the schema out instead of importing the models.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the similarity_models table (one model per keyword)."""
    op.create_table(
        "similarity_models",
        sa.Column(
            "keyword_id",
            sa.Integer(),
            sa.ForeignKey("keywords.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seed_key", sa.String(64), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("trained_at", TIMESTAMP, nullable=False),
    )


def downgrade() -> None:
    """Drop it again."""
    op.drop_table("similarity_models")
