"""Request logs per endpoint (off by default) with feedback on each logged completion

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('log_requests', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('log_retention_days', sa.Integer(), nullable=False, server_default='30'))
    op.create_table('request_logs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('endpoint_id', sa.String(length=64), nullable=False),
    sa.Column('endpoint_name', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=300), nullable=False),
    sa.Column('adapter', sa.String(length=300), nullable=True),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('finish_reason', sa.String(length=20), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('ttft_ms', sa.Float(), nullable=True),
    sa.Column('prompt_sha256', sa.String(length=64), nullable=False),
    sa.Column('body', sa.JSON(), nullable=True),
    sa.Column('body_sha256', sa.String(length=64), nullable=True),
    sa.Column('body_bytes', sa.Integer(), nullable=False),
    sa.Column('rating', sa.Integer(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('correction', sa.Text(), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('feedback_at', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('created_ns', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('request_logs', schema=None) as batch_op:
        batch_op.create_index('ix_request_logs_endpoint_created', ['endpoint_id', 'created_ns'], unique=False)
        batch_op.create_index(batch_op.f('ix_request_logs_body_sha256'), ['body_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_request_logs_prompt_sha256'), ['prompt_sha256'], unique=False)


def downgrade() -> None:
    op.drop_table('request_logs')
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.drop_column('log_retention_days')
        batch_op.drop_column('log_requests')
