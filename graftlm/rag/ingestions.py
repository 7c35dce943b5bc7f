"""Ingestion as a background job: documents are checked up front (bad input is a 4xx at once), then chunked
and embedded on a thread; the job's state lives in memory and in GRAFT_HOME/rag_ingestions/{id}.json."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from graftlm import rag
from graftlm.errors import GraftError, NotFound
from graftlm.rag.kb import _check_documents

_jobs: dict[str, dict] = {}
_lock = threading.Lock()


def _dir() -> Path:
    from graftlm.config import get_settings

    d = get_settings().home / "rag_ingestions"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _save(job: dict) -> None:
    path = _dir() / f"{job['id']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    tmp.replace(path)


def _update(job_id: str, **fields) -> dict:
    with _lock:
        job = _jobs[job_id]
        job.update(fields)
        snapshot = json.loads(json.dumps(job))
    _save(snapshot)
    return snapshot


def start(kb_id: str, groups: list[tuple[str | None, list[dict]]], *, wait: bool = False) -> dict:
    """Ingest ``groups`` of documents, one group per uploaded file (name None for JSON documents).

    Every group is validated before anything runs; a bad one raises GraftError naming it.
    """
    kb = rag.get_kb(kb_id)
    checked = []
    for name, docs in groups:
        try:
            checked.append((name, _check_documents(docs)))
        except GraftError as e:
            raise GraftError(f"{name}: {e.message}" if name else e.message, param="documents") from e
    if not any(docs for _, docs in checked):
        raise GraftError("no documents to ingest", param="documents")
    job = {"id": f"ingest-{uuid.uuid4().hex[:20]}", "object": "knowledge_base.ingestion", "knowledge_base_id": kb.id,
           "status": "running", "progress": 0.0, "documents": 0, "chunks": 0, "error": None,
           "files": [{"filename": name, "ok": None, "documents": len(docs), "chunks": 0, "error": None}
                     for name, docs in checked],
           "created_at": int(time.time()), "finished_at": None}
    with _lock:
        _jobs[job["id"]] = job
    _save(job)
    thread = threading.Thread(target=_run, args=(job["id"], kb.id, checked), daemon=True, name=job["id"])
    thread.start()
    if wait:
        thread.join()
    return get(kb.id, job["id"])


def _run(job_id: str, kb_id: str, groups: list[tuple[str | None, list[dict]]]) -> None:
    total = sum(len(d) for _, d in groups) or 1
    done_before, reports, chunks = 0, [], 0
    for name, docs in groups:
        report = {"filename": name, "ok": False, "documents": len(docs), "chunks": 0, "error": None}
        try:
            out = rag.ingest_documents(kb_id, docs, batch_size=32,
                                       progress=lambda n, _t, b=done_before: _update(job_id, progress=(b + n) / total))
            report.update(ok=True, chunks=out["chunks"])
            chunks += out["chunks"]
        except GraftError as e:
            report["error"] = e.message
        except Exception as e:  # noqa: BLE001 - a job records its failure instead of dying silently
            report["error"] = f"internal error: {type(e).__name__}: {e}"
        done_before += len(docs)
        reports.append(report)
        pending = [{"filename": n, "ok": None, "documents": len(d), "chunks": 0, "error": None}
                   for n, d in groups[len(reports):]]
        _update(job_id, files=reports + pending, progress=done_before / total)
    ok = [r for r in reports if r["ok"]]
    failed = [r for r in reports if not r["ok"]]
    _update(job_id, status="succeeded" if not failed else "failed", progress=1.0,
            documents=sum(r["documents"] for r in ok), chunks=chunks, finished_at=int(time.time()),
            error=None if not failed else "; ".join(f"{r['filename'] or 'documents'}: {r['error']}" for r in failed))


def get(kb_id: str, job_id: str) -> dict:
    with _lock:
        job = json.loads(json.dumps(_jobs[job_id])) if job_id in _jobs else None
    if job is None:
        path = _dir() / f"{job_id}.json"
        if "/" in job_id or not path.exists():
            raise NotFound(f"ingestion job {job_id!r} not found", param="job_id")
        job = json.loads(path.read_text())
        if job["status"] == "running":  # the process that ran it is gone
            job.update(status="failed", error="interrupted: the server stopped during ingestion")
    kb = rag.get_kb(kb_id)
    if job["knowledge_base_id"] != kb.id:
        raise NotFound(f"ingestion job {job_id!r} not found in knowledge base {kb.name!r}", param="job_id")
    return job
