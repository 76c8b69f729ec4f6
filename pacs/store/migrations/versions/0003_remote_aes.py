"""remote AE registry

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
    op.create_table(
        "remote_ae",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("may_store", sa.Boolean(), nullable=False),
        sa.Column("may_query", sa.Boolean(), nullable=False),
        sa.Column("may_retrieve", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remote_ae")),
        sa.UniqueConstraint("name", name=op.f("uq_remote_ae_name")),
    )
    with op.batch_alter_table("remote_ae", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_remote_ae_ae_title"), ["ae_title"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("remote_ae", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_remote_ae_ae_title"))
    op.drop_table("remote_ae")
