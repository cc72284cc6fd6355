"""What a listing says identifies a study's patient (a digest), to see corrections.

A PACS polled by C-FIND that corrects a patient in place keeps the study's UIDs and its
instance count: only the identity it answers changes. `studies.listed_identity` holds a
digest of PatientID, IssuerOfPatientID and PatientName as the listing last showed them;
another digest marks the study for a sync.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("listed_identity", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("listed_identity")
