"""Deletions on proof, within a budget; failed studies that stay parked.

`deletions` logs every study a source deleted from FHIR (the hourly budget counts it, and
operators read it back). A deletion over budget leaves its study `held` (nothing deleted)
until `deletions approve` (`studies.deletion` = `approved`) or `reject` (status `kept`:
FHIR stays as it is until the study changes again).

`studies.seen_count` is the instance count the source showed when the study was last
marked by a listing or failed: a failed study is marked again only when that changes.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deletions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("study_key", sa.String(200), nullable=False),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("approved", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_deletions_source_at", "deletions", ["source", "at"])
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("seen_count", sa.Integer))
        batch.add_column(sa.Column("deletion", sa.String(16)))
        batch.add_column(sa.Column("held_at", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("held_at")
        batch.drop_column("deletion")
        batch.drop_column("seen_count")
    op.drop_index("ix_deletions_source_at", "deletions")
    op.drop_table("deletions")
