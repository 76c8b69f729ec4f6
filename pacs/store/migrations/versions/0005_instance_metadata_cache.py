"""instance metadata cache (DICOM JSON and frame byte ranges per instance, for WADO-RS)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Starts empty: rows for instances stored earlier are built from their blobs on first use.
    op.create_table('instance_metadata',
    sa.Column('instance_pk', sa.Integer(), nullable=False),
    sa.Column('blob_key', sa.String(length=255), nullable=False),
    sa.Column('dicom_json', sa.LargeBinary(), nullable=False),
    sa.Column('frames', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['instance_pk'], ['instance.id'], name=op.f('fk_instance_metadata_instance_pk_instance'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('instance_pk', name=op.f('pk_instance_metadata'))
    )


def downgrade() -> None:
    op.drop_table('instance_metadata')
