"""Projects (OCI compartments): every resource belongs to one, keys belong to one with a role (and may expire);
everything that existed moves into the `default` project; the append-only audit log

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# table -> the rows that get a project ("" = all); base models and the shared local fine-tuning cluster keep NULL
OWNED = {'api_keys': '', 'files': '', 'models': "WHERE kind != 'base'", 'fine_tuning_jobs': '',
         'dedicated_ai_clusters': "WHERE id != 'dac-local-fine-tuning'", 'endpoints': '', 'usage_records': '',
         'evals': ''}
NULLABLE = {'models', 'dedicated_ai_clusters'}


def upgrade() -> None:
    op.create_table('projects',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('data_policy', sa.String(length=10), server_default='warn', nullable=False),
    sa.Column('max_clusters', sa.Integer(), nullable=True),
    sa.Column('max_units', sa.Integer(), nullable=True),
    sa.Column('max_file_bytes', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('deleted_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.execute("INSERT INTO projects (id, description, data_policy, created_at) "
               "VALUES ('default', 'everything made before projects existed', 'warn', "
               "CAST(strftime('%s', 'now') AS INTEGER))" if op.get_bind().dialect.name == 'sqlite' else
               "INSERT INTO projects (id, description, data_policy, created_at) "
               "VALUES ('default', 'everything made before projects existed', 'warn', "
               "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT))")
    for table, where in OWNED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('project_id', sa.String(length=64), nullable=True))
        op.execute(f"UPDATE {table} SET project_id = 'default' {where}")
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table not in NULLABLE:
                batch_op.alter_column('project_id', existing_type=sa.String(length=64), nullable=False)
            batch_op.create_index(batch_op.f(f'ix_{table}_project_id'), ['project_id'], unique=False)
            batch_op.create_foreign_key(f'fk_{table}_project_id', 'projects', ['project_id'], ['id'])
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.BigInteger(), nullable=True))
    op.create_table('knowledge_base_projects',
    sa.Column('knowledge_base_id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ),
    sa.PrimaryKeyConstraint('knowledge_base_id')
    )
    with op.batch_alter_table('knowledge_base_projects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_knowledge_base_projects_project_id'), ['project_id'], unique=False)
    op.create_table('audit_events',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=True),
    sa.Column('project_id', sa.String(length=64), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=True),
    sa.Column('action', sa.String(length=200), nullable=False),
    sa.Column('resource_id', sa.String(length=300), nullable=True),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=10), nullable=False),
    sa.Column('client', sa.String(length=100), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id')
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_project_seq', ['project_id', 'seq'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_key_id'), ['key_id'], unique=False)
    # append-only: the database itself refuses to change or remove an audit event
    if op.get_bind().dialect.name == 'sqlite':
        for verb in ('UPDATE', 'DELETE'):
            op.execute(f"CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events "
                       "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END")
    else:
        op.execute("CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$")
        op.execute("CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
                   "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    op.drop_table('audit_events')
    op.drop_table('knowledge_base_projects')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('expires_at')
    for table in OWNED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f'fk_{table}_project_id', type_='foreignkey')
            batch_op.drop_index(batch_op.f(f'ix_{table}_project_id'))
            batch_op.drop_column('project_id')
    op.drop_table('projects')
