"""What a listing says identifies a study's patient (a digest), to see corrections; why
a source's feed stopped on a stored value it cannot use.

A PACS polled by C-FIND that corrects a patient in place keeps the study's UIDs and its
instance count: only the identity it answers changes. `studies.listed_identity` holds a
digest of PatientID, IssuerOfPatientID and PatientName as the listing last showed them;
another digest marks the study for a sync.

`sources.feed_error` says why a source's feed stopped on a value stored in this database
that it cannot use (a cursor from an older version or typed by hand): `status` shows it
until the feed reads again.

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
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("feed_error", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("feed_error")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("listed_identity")
