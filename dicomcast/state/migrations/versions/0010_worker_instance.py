"""Which process last spoke for a worker name: two workers started with the same
`WORKER_ID` on one state database (the default, the host name, on one machine) both
believed they held the feed. `workers.instance` is the host and process of the last
heartbeat; a second live one under the same name is refused at start.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("instance", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("instance")
