"""Migration 0006: a database made at the schema before projects, with rows in every table, upgrades with every
row in the `default` project (child rows through their parent); base models and the shared local fine-tuning
cluster stay shared; nothing is lost."""

from __future__ import annotations

from sqlalchemy import inspect, text

from graftlm.store.db import alembic_config, get_engine, upgrade

ROWS = {
    "api_keys": "(id, name, prefix, key_hash, is_admin, role, created_at) values ('key1', 'k', 'gk-', 'h', 0, 'editor', 1)",
    "files": "(id, filename, purpose, bytes, sha256, status, created_at) values ('file1', 'a.jsonl', 'fine-tune', 3, 's', 'processed', 1)",
    "models": "(id, kind, family, path, created_at) values ('base1', 'base', 'llama', '/m', 1)",
    "models ": "(id, kind, family, parent, path, created_at) values ('ft:base1:x:job1', 'custom', 'llama', 'base1', '/c', 2)",
    "dedicated_ai_clusters": "(id, name, type, unit_count, base_model, lifecycle_state, deterministic, created_at) values ('dac1', 'prod', 'HOSTING', 1, 'base1', 'ACTIVE', 0, 1)",
    "dedicated_ai_clusters ": "(id, name, type, unit_count, lifecycle_state, deterministic, created_at) values ('dac-local-fine-tuning', 'local', 'FINE_TUNING', 1, 'ACTIVE', 0, 1)",
    "fine_tuning_jobs": "(id, model, training_file, seed, status, config, dedicated_ai_cluster_id, created_at) values ('job1', 'base1', 'file1', 1, 'succeeded', '{}', 'dac-local-fine-tuning', 1)",
    "job_events": "(id, job_id, level, type, message, created_at) values ('ev1', 'job1', 'info', 'message', 'm', 1)",
    "job_checkpoints": "(id, job_id, step_number, metrics, path, created_at) values ('ck1', 'job1', 1, '{}', '/p', 1)",
    "endpoints": "(id, name, model, dedicated_ai_cluster_id, lifecycle_state, log_requests, log_retention_days, created_at, updated_at) values ('ep1', 'bot', 'ft:base1:x:job1', 'dac1', 'ACTIVE', 1, 30, 1, 1)",
    "request_logs": "(id, endpoint_id, endpoint_name, model, kind, status, prompt_tokens, completion_tokens, latency_ms, prompt_sha256, body_bytes, created_at, created_ns) values ('chatcmpl-1', 'ep1', 'bot', 'ft:base1:x:job1', 'chat', 200, 1, 1, 1.0, 'p', 0, 1, 1)",
    "usage_records": "(cluster_id, kind, unit_count, minimum_unit_hours, started_at) values ('dac1', 'HOSTING', 1, 744, 1)",
    "usage_records ": "(cluster_id, kind, job_id, unit_count, minimum_unit_hours, started_at) values ('dac-local-fine-tuning', 'FINE_TUNING', 'job1', 1, 1, 1)",
    "evals": "(id, name, data_path, scorers, created_at) values ('eval1', 'e', '/d', '[]', 1)",
    "eval_runs": "(id, eval_id, model, body, created_at, saved_ns) values ('run1', 'eval1', 'base1', '{}', 1, 1)",
    "rag_ingestions": "(id, knowledge_base_id, status, body, created_at, updated_at) values ('ing1', 'kb1', 'succeeded', '{}', 1, 1)",
}
SHARED = {("models", "base1"), ("dedicated_ai_clusters", "dac-local-fine-tuning")}


def test_every_row_of_the_pre_project_schema_lands_in_the_default_project(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = alembic_config(url)
    with get_engine(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
    with get_engine(url).begin() as conn:
        for table, values in ROWS.items():
            conn.execute(text(f"insert into {table.strip()} {values}"))
        tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
    assert tables == {t.strip() for t in ROWS}, "a table of the old schema has no row in this test"
    upgrade(url)
    from graftlm.store import scope
    from graftlm.store.db import session
    from graftlm.store.models import (ApiKey, Cluster, Endpoint, Eval, EvalRun, File, FineTuningJob,
                                      JobCheckpoint, JobEvent, Model, RagIngestion, RequestLog, UsageRecord)

    with get_engine(url).connect() as conn:
        assert conn.execute(text("select id from projects")).scalars().all() == ["default"]
        for table in {t.strip() for t in ROWS}:
            cols = {c["name"] for c in inspect(conn).get_columns(table)}
            if "project_id" not in cols:
                continue  # a child row: it belongs through its parent (checked below)
            key = "id" if "id" in cols else "rowid"
            for rid, project in conn.execute(text(f"select {key}, project_id from {table}")):
                want = None if (table, rid) in SHARED else "default"
                assert project == want, (table, rid, project)
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    # every row, children included, is what the default project sees; another project sees only shared rows
    every = (ApiKey, File, Model, Cluster, FineTuningJob, JobEvent, JobCheckpoint, Endpoint, RequestLog,
             UsageRecord, Eval, EvalRun, RagIngestion)
    with session(url) as s:
        s.add(__import__("graftlm.store.models", fromlist=["Project"]).Project(id="other"))
    for project, expect in (("default", None), ("other", SHARED)):
        with scope.acting_in(project), session(url) as s:
            from sqlalchemy import select

            seen = {(cls.__tablename__, getattr(r, "id", None)) for cls in every for r in s.scalars(select(cls))}
            if expect is None:
                assert len(seen) == len(ROWS)
            else:
                assert seen == expect
