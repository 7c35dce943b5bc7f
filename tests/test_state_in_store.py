"""Evals, eval runs and ingestion jobs live in the control-plane store: the JSON files of earlier versions are
imported by the migration, and a job whose process is gone reads as interrupted."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from graftlm.store.db import session
from graftlm.store.models import RagIngestion


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_upgrade_imports_the_json_state_of_earlier_versions(graft_home):
    ev = {"id": "eval-old", "object": "eval", "name": "intents", "data_path": "/data/test.jsonl",
          "scorers": ["label_accuracy"], "description": None, "created_at": 1700000000}
    runs = [{"id": f"evalrun-{i}", "object": "eval.run", "eval_id": "eval-old", "model": "m", "score": i / 2,
             "created_at": 1700000100, "saved_ns": 1700000100 * 10**9 + i, "results": [{"i": i}]} for i in (1, 0)]
    write(graft_home / "evals" / "eval-old" / "eval.json", ev)
    for run in runs:
        write(graft_home / "evals" / "eval-old" / "runs" / f"{run['id']}.json", run)
    (graft_home / "evals" / "eval-torn").mkdir(parents=True)
    (graft_home / "evals" / "eval-torn" / "eval.json").write_text("{not json")
    job = {"id": "ingest-old", "object": "knowledge_base.ingestion", "knowledge_base_id": "kb-1", "status": "running",
           "progress": 0.5, "documents": 0, "chunks": 0, "error": None, "files": [], "created_at": 1700000000,
           "finished_at": None}
    write(graft_home / "rag_ingestions" / "ingest-old.json", job)
    write(graft_home / "rag_ingestions" / "ingest-done.json", {**job, "id": "ingest-done", "status": "succeeded"})

    from graftlm.evals import store

    assert store.list_evals() == [ev]
    assert [r["id"] for r in store.list_runs("eval-old")] == ["evalrun-0", "evalrun-1"]  # saved_ns order
    assert store.get_run("evalrun-1", "eval-old") == runs[0]
    with session() as s:
        rows = {r.id: (r.status, r.body) for r in s.query(RagIngestion)}
    assert rows["ingest-old"][0] == "failed" and rows["ingest-old"][1]["error"].startswith("interrupted")
    assert rows["ingest-done"][0] == "succeeded" and rows["ingest-done"][1]["progress"] == 0.5


def test_eval_store_round_trip_and_not_found(graft_home):
    from graftlm.errors import NotFound
    from graftlm.evals import store

    ev = store.create_eval("e", "/x.jsonl", ["exact_match"], description="d")
    run = store.save_run(ev["id"], {"id": "evalrun-a", "eval_id": ev["id"], "model": "m", "created_at": 1, "n": 2})
    store.save_run(ev["id"], {**run, "n": 3})  # saving again replaces
    assert store.get_eval(ev["id"]) == ev and [r["n"] for r in store.list_runs(ev["id"])] == [3]
    for call in (lambda: store.get_eval("eval-nope"), lambda: store.get_run("evalrun-a", "eval-other"),
                 lambda: store.save_run("eval-nope", {"id": "evalrun-b"}), lambda: store.list_runs("eval-nope")):
        with pytest.raises(NotFound):
            call()


@pytest.mark.parametrize("owner, status", [
    (f"{socket.gethostname()}:{2**22 + 12345}", "failed"),   # this host, no such process
    ("another-host:1", "running"),                             # another host: trusted while the row says so
    (f"{socket.gethostname()}:{os.getpid()}", "failed"),     # this process, but no thread runs it
])
def test_a_running_job_reads_as_interrupted_only_when_its_process_is_gone(graft_home, owner, status):
    from graftlm import rag
    from graftlm.rag import ingestions

    kb = rag.create_kb("kb")
    body = {"id": "ingest-x", "object": "knowledge_base.ingestion", "knowledge_base_id": kb.id, "status": "running",
            "progress": 0.25, "documents": 0, "chunks": 0, "error": None, "files": [], "created_at": 1,
            "finished_at": None}
    with session() as s:
        s.add(RagIngestion(id="ingest-x", knowledge_base_id=kb.id, status="running", body=body, owner=owner,
                           created_at=1, updated_at=time.time()))
    job = ingestions.get(kb.id, "ingest-x")
    assert job["status"] == status and job["progress"] == 0.25
    assert (job["error"] or "").startswith("interrupted") == (status == "failed")
