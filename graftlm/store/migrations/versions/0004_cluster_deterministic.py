"""Hosting clusters get a deterministic serving mode (fp32, batch-invariant)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dedicated_ai_clusters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deterministic', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('dedicated_ai_clusters', schema=None) as batch_op:
        batch_op.drop_column('deterministic')
