"""Files remember the data policy they were uploaded under and what redaction replaced

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('data_policy', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('redactions', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_column('redactions')
        batch_op.drop_column('data_policy')
