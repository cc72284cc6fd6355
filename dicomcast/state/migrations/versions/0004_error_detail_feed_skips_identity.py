"""Keep patient data apart, record skipped feed entries, and give each state DB an identity.

- `studies.error_detail`: the server's own words about a failure (an OperationOutcome, the
  identifier two resources share). It can hold patient data, so it is kept out of
  `last_error`, which logs, `failures list` and `/readyz` may show.
- `feed_skips`: feed entries that could not be used (a malformed sequence number, a study
  key no URL may carry, a jump past the feed's own head), with their position and reason,
  so a bad entry is skipped and recorded instead of stopping the feed.
- `identity`: one row, written when the database is created. A worker that finds another
  identity (the file was replaced) or none (it was deleted) says so instead of replaying
  the feed from its beginning without a word.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("error_detail", sa.Text))
    op.create_table(
        "feed_skips",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False, index=True),
        sa.Column("position", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    identity = op.create_table(
        "identity",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.bulk_insert(identity, [{"id": str(uuid.uuid4()), "created_at": time.time()}])


def downgrade() -> None:
    op.drop_table("identity")
    op.drop_table("feed_skips")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("error_detail")
