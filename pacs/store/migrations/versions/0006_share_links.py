"""shared study links and their consultation notes

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('share_link',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uids', sa.Text(), nullable=False),
    sa.Column('label', sa.String(length=128), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pin_hash', sa.String(length=255), nullable=False),
    sa.Column('pin_failures', sa.Integer(), nullable=False),
    sa.Column('pin_locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deidentify', sa.Boolean(), nullable=False),
    sa.Column('allow_download', sa.Boolean(), nullable=False),
    sa.Column('allow_notes', sa.Boolean(), nullable=False),
    sa.Column('views', sa.Integer(), nullable=False),
    sa.Column('last_access_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('uid_salt', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_share_link')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_share_link_token_hash'))
    )
    with op.batch_alter_table('share_link', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_share_link_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_share_link_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('share_note',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('share_pk', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('author', sa.String(length=128), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['share_pk'], ['share_link.id'], name=op.f('fk_share_note_share_pk_share_link'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_share_note'))
    )
    with op.batch_alter_table('share_note', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_share_note_share_pk'), ['share_pk'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('share_note', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_share_note_share_pk'))

    op.drop_table('share_note')
    with op.batch_alter_table('share_link', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_share_link_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_share_link_expires_at'))

    op.drop_table('share_link')
