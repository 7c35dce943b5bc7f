"""evals, eval runs and RAG ingestion jobs move from JSON files into the store

The JSON files a previous version wrote (GRAFT_HOME/evals/<id>/eval.json, .../runs/<run>.json and
GRAFT_HOME/rag_ingestions/<id>.json) are imported once; they stay on disk, unread afterwards.

Revision ID: 0003
Revises: 0002
"""
import json
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    evals = op.create_table('evals',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=500), nullable=False),
    sa.Column('data_path', sa.Text(), nullable=False),
    sa.Column('scorers', sa.JSON(), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('evals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evals_created_at'), ['created_at'], unique=False)

    runs = op.create_table('eval_runs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('eval_id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=300), nullable=True),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('saved_ns', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['eval_id'], ['evals.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('eval_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_eval_runs_eval_id'), ['eval_id'], unique=False)

    ingestions = op.create_table('rag_ingestions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('knowledge_base_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=30), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('owner', sa.String(length=300), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rag_ingestions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rag_ingestions_knowledge_base_id'), ['knowledge_base_id'], unique=False)

    import_json_state(evals, runs, ingestions)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # a torn or unreadable file is skipped, not a failed upgrade
        return None


def import_json_state(evals, runs, ingestions) -> None:
    from graftlm.config import get_settings

    home = get_settings().home
    eval_rows, run_rows, ingestion_rows = [], [], []
    for path in sorted((home / "evals").glob("*/eval.json")):
        ev = _read(path)
        if not ev or "id" not in ev:
            continue
        eval_rows.append({"id": ev["id"], "name": ev.get("name") or ev["id"], "data_path": str(ev.get("data_path", "")),
                          "scorers": ev.get("scorers") or [], "description": ev.get("description"),
                          "created_at": int(ev.get("created_at") or time.time())})
        for run_path in sorted((path.parent / "runs").glob("*.json")):
            run = _read(run_path)
            if not run or "id" not in run:
                continue
            created = int(run.get("created_at") or time.time())
            run_rows.append({"id": run["id"], "eval_id": ev["id"], "model": run.get("model"), "body": run,
                             "created_at": created, "saved_ns": int(run.get("saved_ns") or created * 10**9)})
    for path in sorted((home / "rag_ingestions").glob("*.json")):
        job = _read(path)
        if not job or "id" not in job:
            continue
        if job.get("status") == "running":  # the process that ran it is gone
            job.update(status="failed", error="interrupted: the server stopped during ingestion")
        ingestion_rows.append({"id": job["id"], "knowledge_base_id": job.get("knowledge_base_id", ""),
                               "status": job["status"], "body": job, "owner": None,
                               "created_at": int(job.get("created_at") or time.time()), "updated_at": time.time()})
    for table, rows in ((evals, eval_rows), (runs, run_rows), (ingestions, ingestion_rows)):
        if rows:
            op.bulk_insert(table, rows)


def downgrade() -> None:
    with op.batch_alter_table('rag_ingestions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rag_ingestions_knowledge_base_id'))
    op.drop_table('rag_ingestions')
    with op.batch_alter_table('eval_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_eval_runs_eval_id'))
    op.drop_table('eval_runs')
    with op.batch_alter_table('evals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_evals_created_at'))
    op.drop_table('evals')
