"""Instance headers received by a C-STORE listener (DIMSE push mode).

`received_instances` holds, per source and study key, the header of each instance a PACS
or modality sent (pixel data dropped on arrival), as compressed DICOM JSON. The listener
answers Success only after the row is committed, together with the study's dirty mark:
what a sender was told is stored is stored. For a push-only source these rows are the
study's present state.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "received_instances",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("study_key", sa.String(200), nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("header", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.UniqueConstraint("source", "sop_uid", name="uq_received_source_sop"),
    )
    op.create_index("ix_received_source_key", "received_instances", ["source", "study_key"])


def downgrade() -> None:
    op.drop_index("ix_received_source_key", "received_instances")
    op.drop_table("received_instances")
