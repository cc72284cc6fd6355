"""Initial schema: sources (cursor, feed head) and studies (dirty set, retry state, FHIR ids).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("cursor", sa.String(200)),
        sa.Column("feed_head", sa.String(200)),
        sa.Column("last_poll_at", sa.Float),
        sa.Column("last_reconcile_at", sa.Float),
        sa.Column("last_success_at", sa.Float),
        sa.Column("resets", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("study_key", sa.String(200), nullable=False),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False, server_default="1"),
        sa.Column("dirty_since", sa.Float),
        sa.Column("event_time", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float),
        sa.Column("last_error", sa.Text),
        sa.Column("error_kind", sa.String(40)),
        sa.Column("claimed_by", sa.String(100)),
        sa.Column("claimed_until", sa.Float),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("fhir_patient_id", sa.String(64)),
        sa.Column("fhir_imagingstudy_id", sa.String(64)),
        sa.Column("instance_count", sa.Integer),
        sa.Column("warnings", sa.Text),
        sa.Column("last_synced_at", sa.Float),
        sa.UniqueConstraint("source", "study_key", name="uq_studies_source_key"),
    )
    op.create_index("ix_studies_source", "studies", ["source"])
    op.create_index("ix_studies_status", "studies", ["status"])
    op.create_index("ix_studies_study_uid", "studies", ["study_uid"])
    op.create_index("ix_studies_next_attempt_at", "studies", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_table("studies")
    op.drop_table("sources")
