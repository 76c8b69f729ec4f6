"""query indexes for C-FIND / QIDO-RS matching

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:00:00

- patient_name_folded: rebuilt with ``varchar_pattern_ops`` on PostgreSQL so a name prefix
  (``LIKE 'NGUYEN VAN%'``) uses the index whatever the database collation (a plain index
  on SQLite, where the query uses GLOB).
- referring_physician_folded: the same, for ReferringPhysicianName matching.
- series (study_pk, modality): ModalitiesInStudy and its matching from the index alone.
"""

from __future__ import annotations

from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_index('ix_patient_patient_name_folded')
        batch_op.create_index('ix_patient_name_folded', ['patient_name_folded'], unique=False,
                              postgresql_ops={'patient_name_folded': 'varchar_pattern_ops'})
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index('ix_study_referring_physician_folded', ['referring_physician_folded'],
                              unique=False,
                              postgresql_ops={'referring_physician_folded': 'varchar_pattern_ops'})
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index('ix_series_study_modality', ['study_pk', 'modality'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index('ix_series_study_modality')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index('ix_study_referring_physician_folded')
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_index('ix_patient_name_folded')
        batch_op.create_index('ix_patient_patient_name_folded', ['patient_name_folded'], unique=False)
