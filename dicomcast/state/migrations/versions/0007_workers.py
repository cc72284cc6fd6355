"""Workers: each worker's last sign of life, so limits meant for all of them can be shared.

`workers` holds one row per worker ID with when it last polled. A backfill's rate limits
are for the whole deployment; each worker takes its share by the number of workers seen
recently.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("seen_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
