"""series.num_instances: the instance count kept at ingest (NumberOf*RelatedInstances)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('series') as batch:
        batch.add_column(sa.Column('num_instances', sa.Integer(), server_default='0', nullable=False))
    # Series stored before this revision: count their instances once.
    op.execute("UPDATE series SET num_instances = "
               "(SELECT count(*) FROM instance WHERE instance.series_pk = series.id)")


def downgrade() -> None:
    with op.batch_alter_table('series') as batch:
        batch.drop_column('num_instances')
