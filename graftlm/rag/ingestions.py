"""Ingestion as a background job: documents are checked up front, then chunked and embedded on a thread; the
job lives in the control-plane store (table ``rag_ingestions``), so any API process on the database reports
its progress. A job left "running" by a process that is gone reads as failed (interrupted).

In a multipart upload each file stands alone: a bad file is reported in the job's "files" (ok false, with its
error) and the good ones are ingested. A JSON batch is reported per document, as Elasticsearch's ``_bulk``
reports each item: the job's "items" hold one entry per document sent ({"index", "id", "ok", "chunks",
"error"}), a bad document (no text, an empty id, metadata not an object) is reported there and its neighbours
are ingested. Status is "succeeded" (every file or document), "partially_succeeded" or "failed" (none). Only
when nothing is good is the request a 4xx (naming each bad item), or when the body itself is malformed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from graftlm import rag
from graftlm.errors import GraftError, NotFound
from graftlm.rag.kb import _check_documents
from graftlm.store.db import session
from graftlm.store.models import RagIngestion

_running: set[str] = set()  # jobs whose thread runs in this process
_lock = threading.Lock()
INTERRUPTED = "interrupted: the server stopped during ingestion"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str | None, job_id: str) -> bool:
    """Whether the process named ``owner`` (host:pid) can still be running the job. Another host's process
    is trusted to be alive (the row says nothing more)."""
    if owner == _owner():
        return job_id in _running
    host, _, pid = (owner or "").rpartition(":")
    if not pid.isdigit():
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _insert(job: dict) -> None:
    with session() as s:
        s.add(RagIngestion(id=job["id"], knowledge_base_id=job["knowledge_base_id"], status=job["status"],
                           body=job, owner=_owner(), created_at=job["created_at"], updated_at=time.time()))


def _update(job_id: str, **fields) -> dict:
    with _lock, session() as s:
        row = s.get(RagIngestion, job_id)
        body = {**row.body, **fields}
        row.body, row.status, row.updated_at = body, body["status"], time.time()
    return body


def _file_entry(name: str | None, documents: int, *, ok: bool | None = None, error: str | None = None) -> dict:
    return {"filename": name, "ok": ok, "documents": documents, "chunks": 0, "error": error}


def _waiting_entry(name: str | None, docs: list[dict] | str) -> dict:
    """A file not ingested yet (ok None), or one rejected before ingestion (``docs`` is its error message)."""
    return _file_entry(name, 0, ok=False, error=docs) if isinstance(docs, str) else _file_entry(name, len(docs))


def _check_items(docs: list) -> tuple[list[dict], list[dict]]:
    """A JSON batch checked document by document: (good documents, one item report per document sent).

    A repeated id: the last one is ingested and the earlier ones report it (ok, "replaced_by" its index)."""
    items, good = [], {}
    for i, d in enumerate(docs):
        doc_id = d.get("id") if isinstance(d, dict) else None
        item = {"index": i, "id": None if doc_id is None else str(doc_id), "ok": None, "chunks": 0, "error": None}
        try:
            (checked,) = _check_documents([d])
        except GraftError as e:
            item.update(ok=False, error=e.message.replace("docs[0]", f"documents[{i}]", 1))
        else:
            if checked["id"] in good:
                items[good[checked["id"]][0]].update(replaced_by=i)
            good.pop(checked["id"], None)
            good[checked["id"]] = (i, checked)
        items.append(item)
    return [doc for _, doc in good.values()], items


def _check_groups(groups: list[tuple[str | None, list[dict] | GraftError]]
                  ) -> tuple[list[tuple[str | None, list | str]], list[dict] | None]:
    """(name, checked documents) per good group and (name, error message) per bad file, in upload order, and
    the per-document items of the JSON batch (name None), if there is one."""
    checked, items = [], None
    for name, docs in groups:
        if name is None and not isinstance(docs, GraftError):
            good, items = _check_items(docs)
            checked.append((name, good if good else "; ".join(i["error"] for i in items if i["error"])
                            or "no documents"))
            continue
        try:
            if isinstance(docs, GraftError):
                raise docs
            checked.append((name, _check_documents(docs)))
        except GraftError as e:
            checked.append((name, _named(name, e.message)))
    return checked, items


def start(kb_id: str, groups: list[tuple[str | None, list[dict] | GraftError]], *, wait: bool = False) -> dict:
    """Ingest ``groups`` of documents, one group per uploaded file (name None for JSON documents).

    A file that could not be read arrives as (name, GraftError): the job reports it as failed and ingests
    the other files. When no file is good, nothing starts and the GraftError names every bad file.
    """
    kb = rag.get_kb(kb_id)
    checked, items = _check_groups(groups)
    good = [(name, docs) for name, docs in checked if not isinstance(docs, str)]
    if not any(docs for _, docs in good):
        bad = [message for _, message in checked if isinstance(message, str) and message != "no documents"]
        raise GraftError("no documents to ingest" + (": " + "; ".join(bad) if bad else ""), param="documents")
    files = [_waiting_entry(name, docs) for name, docs in checked]
    job = {"id": f"ingest-{uuid.uuid4().hex[:20]}", "object": "knowledge_base.ingestion", "knowledge_base_id": kb.id,
           "status": "running", "progress": 0.0, "documents": 0, "chunks": 0, "error": None, "files": files,
           "created_at": int(time.time()), "finished_at": None}
    if items is not None:
        job["items"] = items
    with _lock:
        _running.add(job["id"])
    _insert(job)
    thread = threading.Thread(target=_run, args=(job["id"], kb.id, checked), daemon=True, name=job["id"])
    thread.start()
    if wait:
        thread.join()
    return get(kb.id, job["id"])


def _ingest_group(job_id: str, kb_id: str, name: str | None, docs: list[dict], done_before: int,
                  total: int) -> dict:
    report = _file_entry(name, len(docs), ok=False)
    try:
        out = rag.ingest_documents(kb_id, docs, batch_size=32,
                                   progress=lambda n, _t: _update(job_id, progress=(done_before + n) / total))
        report.update(ok=True, chunks=out["chunks"], per_document=out["per_document"])
    except GraftError as e:
        report["error"] = e.message
    except Exception as e:  # noqa: BLE001 - a job records its failure instead of dying silently
        report["error"] = f"internal error: {type(e).__name__}: {e}"
    return report


def _final_status(reports: list[dict]) -> str:
    ok = sum(bool(r["ok"]) for r in reports)
    return "succeeded" if ok == len(reports) else "failed" if ok == 0 else "partially_succeeded"


def _run(job_id: str, kb_id: str, groups: list[tuple[str | None, list[dict] | str]]) -> None:
    try:
        _ingest(job_id, kb_id, groups)
    finally:
        with _lock:
            _running.discard(job_id)


def _ingest(job_id: str, kb_id: str, groups: list[tuple[str | None, list[dict] | str]]) -> None:
    """Ingest each good group in turn; a group given as an error message (an unreadable file) is reported."""
    total = sum(len(d) for _, d in groups if not isinstance(d, str)) or 1
    done_before, reports, items = 0, [], _load(job_id)[0].get("items")
    for name, docs in groups:
        if isinstance(docs, str):
            reports.append(_waiting_entry(name, docs))
            continue
        reports.append(_ingest_group(job_id, kb_id, name, docs, done_before, total))
        done_before += len(docs)
        pending = [_waiting_entry(n, d) for n, d in groups[len(reports):]]
        if name is None and items is not None:
            _fill_items(items, reports[-1])
        _update(job_id, files=[_public(r) for r in reports + pending], progress=done_before / total,
                **({"items": items} if items is not None else {}))
    if items is not None:  # the JSON batch: its status and counts are per document
        ok_items = [i for i in items if i["ok"]]
        status = "succeeded" if len(ok_items) == len(items) else "failed" if not ok_items else "partially_succeeded"
        failed_items = [i for i in items if not i["ok"]]
        _update(job_id, status=status, progress=1.0, files=[_public(r) for r in reports], items=items,
                documents=sum(1 for i in ok_items if "replaced_by" not in i), chunks=sum(i["chunks"] for i in ok_items),
                finished_at=int(time.time()),
                error=None if not failed_items else f"{len(failed_items)} of {len(items)} documents failed: "
                + "; ".join(i["error"] for i in failed_items[:5]) + ("; …" if len(failed_items) > 5 else ""))
        return
    ok = [r for r in reports if r["ok"]]
    failed = [r for r in reports if not r["ok"]]
    _update(job_id, status=_final_status(reports), progress=1.0, files=[_public(r) for r in reports],
            documents=sum(r["documents"] for r in ok), chunks=sum(r["chunks"] for r in ok),
            finished_at=int(time.time()),
            error=None if not failed else "; ".join(_named(r["filename"], r["error"]) for r in failed))


def _public(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "per_document"}


def _fill_items(items: list[dict], report: dict) -> None:
    """The JSON batch's items from its group's outcome: chunks per document, or the group's error."""
    per_document = report.get("per_document") or {}
    for item in items:
        if item["ok"] is False:
            continue
        if report["ok"]:
            item.update(ok=True, chunks=0 if "replaced_by" in item else per_document.get(item["id"], 0))
        else:
            item.update(ok=False, error=report["error"])


def _named(name: str | None, message: str) -> str:
    """``message`` starting with the file name (loader errors already do)."""
    name = name or "documents"
    return message if message.startswith(name) else f"{name}: {message}"


def _load(job_id: str) -> tuple[dict, str | None]:
    with session() as s:
        row = s.get(RagIngestion, job_id)
        if row is None:
            raise NotFound(f"ingestion job {job_id!r} not found", param="job_id")
        return dict(row.body), row.owner


def get(kb_id: str, job_id: str) -> dict:
    job, owner = _load(job_id)
    if job["status"] == "running" and not _owner_alive(owner, job_id):
        job, owner = _load(job_id)  # read again: the job may have finished just before its thread let go of it
        if job["status"] == "running":
            job.update(status="failed", error=INTERRUPTED)
    kb = rag.get_kb(kb_id)
    if job["knowledge_base_id"] != kb.id:
        raise NotFound(f"ingestion job {job_id!r} not found in knowledge base {kb.name!r}", param="job_id")
    return job
