"""Source lease (which worker tails a source, until when) and richer failure records.

The lease lets `cursor set` refuse while a worker runs, and lets several workers share one
source with one tailer. `error_status` and `failed_at` let operators read failures back.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("holder", sa.String(100)))
        batch.add_column(sa.Column("held_until", sa.Float))
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("error_status", sa.Integer))
        batch.add_column(sa.Column("failed_at", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("failed_at")
        batch.drop_column("error_status")
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("held_until")
        batch.drop_column("holder")
