"""Backfills: an archive's existing studies synced behind live changes.

`backfills` holds one row per `dicomcast backfill` run: its source and date span, its rate
limits, where its listing of the archive got to (`after`, so a crashed run resumes there)
and how many studies it listed and marked. A study a backfill marked carries the run's id
in `studies.backfill` and `priority` 1; a live change sets `priority` back to 0, and due
studies are claimed live first.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfills",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False, index=True),
        sa.Column("since", sa.String(8)),
        sa.Column("until", sa.String(8)),
        sa.Column("max_rate", sa.Float),
        sa.Column("max_requests", sa.Float),
        sa.Column("after", sa.String(200)),
        sa.Column("listed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("marked", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("listed_at", sa.Float),
        sa.Column("finished_at", sa.Float),
    )
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("backfill", sa.Integer))
        batch.create_index("ix_studies_backfill", ["backfill"])


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_backfill")
        batch.drop_column("backfill")
        batch.drop_column("priority")
    op.drop_table("backfills")
