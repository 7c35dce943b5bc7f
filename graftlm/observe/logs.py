"""Request logs: every completion of an endpoint with ``log_requests`` on, kept ``log_retention_days``.

A row per completion (its id is the completion id the client got): endpoint, model, adapter, status, tokens,
latency, and the request and response — inline when small, else a blob in GRAFT_HOME/blobs/request-logs
(content-addressed, so one blob may serve several rows; the sweep deletes a blob with its last row). Rows are
written by one background thread, so an inference request never waits on the database; ``flush`` waits for
what is queued (feedback on a completion still queued flushes first). ``sweep`` deletes rows older than their
endpoint's retention; the server runs it every GRAFT_LOG_SWEEP_INTERVAL_S.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from pathlib import Path

import orjson
from sqlalchemy import delete, func, select

from graftlm.config import get_settings
from graftlm.errors import GraftError, NotFound
from graftlm.store import blobs
from graftlm.store.db import session
from graftlm.store.models import Endpoint, RequestLog, now
from graftlm.store.paging import check_limit

log = logging.getLogger("graftlm.observe")
BODY_INLINE_BYTES = 4096  # larger request+response bodies go to the blob store
MAX_QUEUED = 10_000  # rows waiting for the writer; beyond it a row is dropped and counted
MAX_PAGE = 100
DAY_S = 86_400


def log_blobs_dir() -> Path:
    return get_settings().blobs_dir / "request-logs"


def prompt_sha256(request: dict) -> str:
    """The same prompt (messages or text) gives the same hash, whatever else the request carried."""
    key = request.get("messages") if "messages" in request else request.get("prompt")
    return hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Writer:
    """One daemon thread that writes queued rows in batches (each batch one transaction)."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue(MAX_QUEUED)
        self.pending: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def put(self, entry: dict) -> bool:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="graft-request-log", daemon=True)
                self._thread.start()
            try:
                self.queue.put_nowait(entry)
            except queue.Full:
                return False
            self.pending.add(entry["id"])
            return True

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < 256:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                write_rows(batch)
            except Exception:  # noqa: BLE001 - a logging failure must never reach a request; it is counted
                log.exception("request log: %d row(s) could not be written", len(batch))
                from graftlm.observe.metrics import LOG_WRITE_ERRORS

                for entry in batch:
                    LOG_WRITE_ERRORS.labels(entry["endpoint_name"]).inc()
            with self._lock:
                for entry in batch:
                    self.pending.discard(entry["id"])
                self._idle.notify_all()

    def flush(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._idle.wait_for(lambda: not self.pending, timeout)

    def is_pending(self, completion_id: str) -> bool:
        with self._lock:
            return completion_id in self.pending


_writer = Writer()


def record(entry: dict) -> None:
    """Queue one completion's row (see ``write_rows`` for its fields); never blocks the caller."""
    settings = get_settings()
    entry = {"created_ns": time.time_ns(), **entry,
             "_db": settings.db_url, "_blobs": str(log_blobs_dir())}  # where it goes, fixed now
    if not _writer.put(entry):
        from graftlm.observe.metrics import LOG_WRITE_ERRORS

        LOG_WRITE_ERRORS.labels(entry["endpoint_name"]).inc()


def flush(timeout: float = 30.0) -> None:
    _writer.flush(timeout)


def write_rows(entries: list[dict]) -> None:
    by_db: dict[str, list[dict]] = {}
    for e in entries:
        by_db.setdefault(e["_db"], []).append(e)
    for url, group in by_db.items():
        rows = []
        for e in group:
            body = {"request": e["request"], "response": e["response"]}
            raw = orjson.dumps(body)
            sha = None
            if len(raw) > BODY_INLINE_BYTES:
                sha, _, _ = blobs.put_stream(Path(e["_blobs"]), [raw])
                body = None
            rows.append(RequestLog(
                id=e["id"], endpoint_id=e["endpoint_id"], endpoint_name=e["endpoint_name"], model=e["model"],
                adapter=e.get("adapter"), kind=e["kind"], status=e["status"], finish_reason=e.get("finish_reason"),
                prompt_tokens=e["prompt_tokens"], completion_tokens=e["completion_tokens"],
                latency_ms=e["latency_ms"], ttft_ms=e.get("ttft_ms"), prompt_sha256=prompt_sha256(e["request"]),
                body=body, body_sha256=sha, body_bytes=len(raw), created_ns=e["created_ns"],
                created_at=e.get("created_at") or e["created_ns"] // 1_000_000_000))
        with session(url) as s:
            s.add_all(rows)


# --- reading --------------------------------------------------------------------------------------------

def feedback_of(r: RequestLog) -> dict | None:
    if r.feedback_at is None:
        return None
    return {"rating": r.rating, "score": r.score, "correction": r.correction, "comment": r.comment,
            "created_at": r.feedback_at}


def read_body(r: RequestLog) -> dict:
    if r.body is not None:
        return r.body
    try:
        return orjson.loads(b"".join(blobs.iter_blob(log_blobs_dir(), r.body_sha256)))
    except FileNotFoundError:
        return {"request": None, "response": None, "error": "the body's blob is missing"}


def log_to_dict(r: RequestLog, with_body: bool = True) -> dict:
    d = {"id": r.id, "object": "endpoint.log", "endpoint_id": r.endpoint_id, "endpoint": r.endpoint_name,
         "model": r.model, "adapter": r.adapter, "kind": r.kind, "status": r.status,
         "finish_reason": r.finish_reason,
         "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                   "total_tokens": r.prompt_tokens + r.completion_tokens},
         "latency_ms": r.latency_ms, "ttft_ms": r.ttft_ms, "created_at": r.created_at,
         "feedback": feedback_of(r)}
    if with_body:
        d |= read_body(r)
    return d


def list_logs(endpoint_id: str, *, after: str | None = None, limit: int = 20, since: int | None = None,
              until: int | None = None, model: str | None = None, status: int | None = None,
              min_rating: float | None = None, max_rating: float | None = None,
              has_feedback: bool | None = None) -> dict:
    """One page of an endpoint's logs, newest first. Ratings filter on the 1-5 score (thumbs: 1 or 5)."""
    check_limit(limit, MAX_PAGE)
    with session() as s:
        endpoint = s.get(Endpoint, endpoint_id)
        if endpoint is None:
            raise NotFound(f"no endpoint with id {endpoint_id!r}", param="endpoint_id")
        q = select(RequestLog).where(RequestLog.endpoint_id == endpoint_id)
        if since is not None:
            q = q.where(RequestLog.created_at >= since)
        if until is not None:
            q = q.where(RequestLog.created_at < until)
        if model is not None:
            q = q.where(RequestLog.model == model)
        if status is not None:
            q = q.where(RequestLog.status == status)
        if min_rating is not None:
            q = q.where(RequestLog.score >= min_rating)
        if max_rating is not None:
            q = q.where(RequestLog.score <= max_rating)
        if has_feedback is not None:
            q = q.where(RequestLog.feedback_at.is_not(None) if has_feedback else RequestLog.feedback_at.is_(None))
        if after is not None:
            anchor = s.get(RequestLog, after)
            if anchor is None:
                raise NotFound(f"no logged completion with id {after!r}", param="after")
            q = q.where((RequestLog.created_ns < anchor.created_ns)
                        | ((RequestLog.created_ns == anchor.created_ns) & (RequestLog.id < anchor.id)))
        rows = list(s.scalars(q.order_by(RequestLog.created_ns.desc(), RequestLog.id.desc()).limit(limit + 1)))
        rows, more = rows[:limit], len(rows) > limit
        return {"object": "list", "data": [log_to_dict(r) for r in rows], "has_more": more}


def iter_logs(endpoint_id: str, since: int | None = None):
    """Every log row of an endpoint (with bodies), oldest first, in pages (for `graft data from-logs`)."""
    last = (-1, "")
    while True:
        with session() as s:
            q = select(RequestLog).where(RequestLog.endpoint_id == endpoint_id)
            if since is not None:
                q = q.where(RequestLog.created_at >= since)
            q = q.where((RequestLog.created_ns > last[0])
                        | ((RequestLog.created_ns == last[0]) & (RequestLog.id > last[1])))
            rows = list(s.scalars(q.order_by(RequestLog.created_ns, RequestLog.id).limit(500)))
            out = [log_to_dict(r) | {"prompt_sha256": r.prompt_sha256} for r in rows]
        if not out:
            return
        yield from out
        last = (rows[-1].created_ns, rows[-1].id)


# --- retention ------------------------------------------------------------------------------------------

def sweep(at: float | None = None) -> dict:
    """Delete the rows older than their endpoint's retention, and each blob no remaining row uses."""
    at = time.time() if at is None else at
    deleted_rows = deleted_blobs = 0
    with session() as s:
        retention = dict(s.execute(select(Endpoint.id, Endpoint.log_retention_days)).all())
        endpoint_ids = list(s.scalars(select(RequestLog.endpoint_id).distinct()))
        for endpoint_id in endpoint_ids:
            cutoff = at - retention.get(endpoint_id, 30) * DAY_S
            expired = select(RequestLog).where(RequestLog.endpoint_id == endpoint_id,
                                               RequestLog.created_at < cutoff)
            shas = set(s.scalars(expired.with_only_columns(RequestLog.body_sha256)
                                 .where(RequestLog.body_sha256.is_not(None))))
            deleted_rows += s.execute(delete(RequestLog).where(RequestLog.endpoint_id == endpoint_id,
                                                               RequestLog.created_at < cutoff)).rowcount or 0
            s.flush()
            for sha in shas:
                if not s.scalar(select(func.count()).select_from(RequestLog).where(RequestLog.body_sha256 == sha)):
                    blobs.delete_blob(log_blobs_dir(), sha)
                    deleted_blobs += 1
    return {"deleted_rows": deleted_rows, "deleted_blobs": deleted_blobs}


def start_sweeper(interval_s: float) -> threading.Event:
    """Sweep now and every ``interval_s`` in a daemon thread until the returned event is set."""
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                result = sweep()
                if result["deleted_rows"]:
                    log.info("request logs: deleted %(deleted_rows)d expired row(s), %(deleted_blobs)d blob(s)",
                             result)
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.exception("request log sweep failed")
            stop.wait(interval_s)

    threading.Thread(target=run, name="graft-log-sweep", daemon=True).start()
    return stop


# --- feedback -------------------------------------------------------------------------------------------

def rating_score(rating, scale: str | None) -> tuple[str, float]:
    """The rating on 1-5: thumbs -1/1 (the default reading of -1 and 1) are 1 and 5; stars are themselves."""
    if isinstance(rating, bool) or not isinstance(rating, int):
        raise GraftError("rating must be an integer: -1 or 1 (thumbs), or 1 to 5 (stars)", param="rating")
    if scale not in (None, "thumbs", "stars"):
        raise GraftError("scale must be thumbs or stars", param="scale")
    if scale is None:
        scale = "thumbs" if rating in (-1, 1) else "stars"
    if scale == "thumbs":
        if rating not in (-1, 1):
            raise GraftError("a thumbs rating is -1 or 1", param="rating")
        return scale, 5.0 if rating == 1 else 1.0
    if not 1 <= rating <= 5:
        raise GraftError("a stars rating is 1 to 5 (-1/1 are thumbs)", param="rating")
    return scale, float(rating)


def add_feedback(completion_id: str, rating: int, *, scale: str | None = None, correction: str | None = None,
                 comment: str | None = None) -> dict:
    """Attach feedback to a logged completion (the latest feedback replaces an earlier one)."""
    scale, score = rating_score(rating, scale)
    if _writer.is_pending(completion_id):
        flush()
    with session() as s:
        r = s.get(RequestLog, completion_id)
        if r is None:
            raise NotFound(f"no logged completion with id {completion_id!r}: feedback needs the completion's "
                           "endpoint to log requests (log_requests: true) and the log to be within its retention",
                           param="completion_id")
        r.rating, r.score, r.correction, r.comment, r.feedback_at = rating, score, correction, comment, now()
        endpoint = r.endpoint_name
        out = {"object": "feedback", "completion_id": r.id, "endpoint_id": r.endpoint_id} | feedback_of(r)
    from graftlm.observe.metrics import record_feedback

    record_feedback(endpoint, scale, rating)
    return out
