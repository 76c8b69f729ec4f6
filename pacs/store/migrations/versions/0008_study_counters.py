"""study.num_series, .num_instances, .modalities: kept at ingest (C-FIND study answers)

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import itertools

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.add_column(sa.Column('num_series', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('num_instances', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('modalities', sa.Text(), server_default='', nullable=False))
    # Studies stored before this revision: derive them once from their series' counters
    # (revision 0007), counting only series that hold an instance, as Index._add does.
    op.execute(
        "UPDATE study SET "
        "num_series = (SELECT count(*) FROM series "
        "WHERE series.study_pk = study.id AND series.num_instances > 0), "
        "num_instances = (SELECT coalesce(sum(series.num_instances), 0) FROM series "
        "WHERE series.study_pk = study.id)")
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT study_pk, modality FROM series WHERE num_instances > 0 AND modality != '' "
        "GROUP BY study_pk, modality ORDER BY study_pk, min(id)")).all()
    updates = [{"pk": pk, "modalities": ",".join(m for _, m in group)}
               for pk, group in itertools.groupby(rows, key=lambda r: r[0])]
    if updates:
        conn.execute(sa.text("UPDATE study SET modalities = :modalities WHERE id = :pk"), updates)


def downgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.drop_column('modalities')
        batch.drop_column('num_instances')
        batch.drop_column('num_series')
