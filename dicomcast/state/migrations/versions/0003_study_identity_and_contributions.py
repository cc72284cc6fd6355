"""What each source contributes to a study that several sources hold, and the FHIR match key
each study was written under.

`contributions` keeps each source's mapped part of a study (zlib-compressed JSON) so that a
sync from one source can write the union of all of them, and a removal from one source can
write what the others still hold. It is used only when several sources are configured.
`studies.match_key` lets a deleted study be found on the FHIR server by exactly the
identifier it was written with (a partition's studies are not found by UID alone).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("match_key", sa.String(300)))
    op.create_table(
        "contributions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("study_key", sa.String(200), nullable=False),
        sa.Column("match_key", sa.String(300), nullable=False, index=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("source", "study_key", name="uq_contributions_source_key"),
    )


def downgrade() -> None:
    op.drop_table("contributions")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("match_key")
