"""Uploaded files: streamed into the blob store, validated in the background, listed OpenAI-style."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Iterator

from sqlalchemy import func, select

from graftlm.config import get_settings
from graftlm.data.reader import GZIP_MAGIC
from graftlm.errors import GraftError, NotFound
from graftlm.keys import projects
from graftlm.store import blobs, scope
from graftlm.store.db import session
from graftlm.store.paging import check_limit, newest_first_page
from graftlm.store.models import DATA_POLICIES, File, FineTuningJob, new_id  # policies: least to most strict

PURPOSES = {"fine-tune", "fine-tune-results", "assistants", "batch", "user_data", "evals", "rag"}
MAX_DETAILS = 10
log = logging.getLogger("graftlm.files")


SCANNED_PURPOSES = {"fine-tune"}  # training data; the policy decides what happens to personal data in it


def file_to_dict(f: File) -> dict:
    report = f.report or {}
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at,
            "filename": f.filename, "purpose": f.purpose, "status": f.status,
            "status_details": f.status_details, "data_policy": f.data_policy,
            "sensitive_data": None if f.purpose not in SCANNED_PURPOSES else {
                "findings_by_kind": report.get("findings_by_kind"),  # None until validated
                "redacted_by_kind": f.redactions or {}}}


def effective_data_policy(requested: str | None = None, *, project_policy: str | None = None) -> str:
    """The data policy an upload runs under: the stricter of the one the request names and the project's
    (``warn`` < ``redact`` < ``reject``), ``warn`` when neither says. A request can tighten its project's
    policy, never loosen it."""
    for value, param in ((requested, "data_policy"), (project_policy, "project.data_policy")):
        if value is not None and value not in DATA_POLICIES:
            raise GraftError(f"data_policy must be one of {', '.join(DATA_POLICIES)}, got {value!r}", param=param)
    return max((p for p in (requested, project_policy, "warn") if p), key=DATA_POLICIES.index)


def _finding_text(line: int | None, field: str | None, kind: str) -> str:
    where = f"line {line}" if line else "file"
    return f"{where}: {field}: {kind}" if field else f"{where}: {kind}"


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def _apply_policy(staged: blobs.Staged, policy: str) -> tuple[blobs.Staged, dict | None]:
    """reject: raise (422) when the staged upload holds personal data; redact: a staged copy with every finding
    replaced by its placeholder, and the replacements per kind. The caller discards what it no longer needs."""
    from graftlm.data import pii

    listed, counts = pii.scan_file(staged.path, max_findings=MAX_DETAILS)
    if not counts:
        return staged, ({} if policy == "redact" else None)
    if policy == "reject":
        total = sum(counts.values())
        shown = "; ".join(_finding_text(*f) for f in listed)
        more = f"; ... and {total - len(listed)} more" if total > len(listed) else ""
        raise GraftError(f"the file holds personal data ({_counts_text(counts)}) and the data policy is reject, "
                         f"so nothing was stored: {shown}{more}. Remove it, or upload with data_policy redact "
                         "to store a copy with placeholders", param="file", code="sensitive_data_rejected",
                         status_code=422)
    replaced: Counter = Counter()
    chunks = pii.redacted_lines(staged.path, replaced)
    with open(staged.path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC  # a gzip upload's redacted copy is gzip too
    redacted = blobs.stage_stream(get_settings().blobs_dir, pii.gzipped(chunks) if compressed else chunks)
    return redacted, dict(sorted(replaced.items()))


def create_file(fileobj: BinaryIO, filename: str, purpose: str, *, data_policy: str | None = None) -> dict:
    """Store an upload. Fine-tune files go through the data policy (effective_data_policy): ``warn`` stores the
    bytes as sent (validation reports the findings), ``redact`` stores only a copy with placeholders,
    ``reject`` stores nothing when personal data is found (422 naming line, field and kind of each)."""
    if purpose not in PURPOSES:
        raise GraftError(f"purpose must be one of {', '.join(sorted(PURPOSES))}", param="purpose")
    policy = effective_data_policy(data_policy, project_policy=projects.data_policy())
    if purpose not in SCANNED_PURPOSES:
        if data_policy is not None and data_policy != "warn":
            raise GraftError(f"data_policy applies to fine-tune files (training data), not to purpose {purpose!r}",
                             param="data_policy")
        policy = None
    settings = get_settings()
    left = projects.file_bytes_left()
    limit = settings.max_upload_bytes if left is None else min(left, settings.max_upload_bytes or left)
    try:
        staged = blobs.stage_stream(settings.blobs_dir, iter(lambda: fileobj.read(blobs.CHUNK), b""),
                                    limit)
    except blobs.TooLarge as e:
        if left is not None and limit == left:
            raise projects.QuotaExceeded(f"this upload would pass the project's max_file_bytes quota "
                                         f"({left} bytes left)", param="max_file_bytes",
                                         code="quota_exceeded") from e
        raise GraftError(f"{e}; raise GRAFT_MAX_UPLOAD_BYTES to accept larger files", param="file",
                         code="file_too_large", status_code=413) from e
    stored, redactions = staged, None
    try:
        if policy in ("redact", "reject"):
            stored, redactions = _apply_policy(staged, policy)
        with blobs.references_locked(settings.blobs_dir):
            blobs.commit(settings.blobs_dir, stored)
            try:
                with session() as s:
                    f = File(id=new_id("file"), filename=filename or "upload.jsonl", purpose=purpose,
                             bytes=stored.size, sha256=stored.sha256, data_policy=policy, redactions=redactions)
                    s.add(f)
                    s.flush()
                    return file_to_dict(f)
            except Exception:  # no row (database full?): no blob either, unless another file shares its bytes
                _delete_unreferenced_blob(stored.sha256)
                raise
    finally:
        staged.discard()
        stored.discard()  # both are gone from tmp once committed; this removes what was not


def delete_unreferenced_blob(sha: str) -> bool:
    """Remove the blob when no file row names it any more; True when its bytes are gone. Call it with
    blobs.references_locked held (project deletion does, once per blob of its files)."""
    with session() as s, scope.unconfined():  # another project's file may hold the same bytes
        shared = s.scalar(select(func.count()).select_from(File).where(File.sha256 == sha))
    if shared:
        return False
    blobs.delete_blob(get_settings().blobs_dir, sha)
    return True


def _delete_unreferenced_blob(sha: str) -> None:
    try:
        delete_unreferenced_blob(sha)
    except Exception as e:  # noqa: BLE001 - the original error is the one to report
        log.warning("could not remove the blob %s of a failed upload: %s", sha, e)


def upload_local(path: str | Path, *, param: str = "training_file", data_policy: str | None = None) -> str:
    """Store a local dataset in the blob store and validate it now (no server needed); returns its file id."""
    p = Path(path)
    if not p.exists():
        raise GraftError(f"{path} does not exist", param=param)
    with open(p, "rb") as fh:
        record = create_file(fh, p.name, "fine-tune", data_policy=data_policy)
    report = validate_stored_file(record["id"])
    if not report["valid"]:
        raise GraftError(f"{path} is not a valid dataset: {get_file(record['id'])['status_details']}; "
                         f"run `graft data validate {path}` for the full report", param=param)
    return record["id"]


def _get(s, file_id: str) -> File:
    f = s.get(File, file_id)
    if f is None:
        raise NotFound(f"no file with id {file_id!r}", param="file_id", code="file_not_found")
    return f


def get_file(file_id: str) -> dict:
    with session() as s:
        return file_to_dict(_get(s, file_id))


def get_file_record(file_id: str) -> File:
    with session() as s:
        return _get(s, file_id)


def file_path(file_id: str) -> Path:
    return blobs.blob_path(get_settings().blobs_dir, get_file_record(file_id).sha256)


def list_files(*, after: str | None = None, limit: int = 100, purpose: str | None = None) -> dict:
    check_limit(limit, 10000)
    with session() as s:
        q = select(File).where(File.purpose == purpose) if purpose else select(File)
        rows, more = newest_first_page(s, File, q, _get(s, after) if after else None, limit)
        return {"object": "list", "data": [file_to_dict(f) for f in rows], "has_more": more}


def iter_content(file_id: str) -> Iterator[bytes]:
    f = get_file_record(file_id)
    return blobs.iter_blob(get_settings().blobs_dir, f.sha256)


def delete_file(file_id: str) -> dict:
    """Delete the row and, when no other file has the same bytes, the blob: the bytes are gone from disk."""
    with blobs.references_locked(get_settings().blobs_dir):
        with session() as s:
            f = _get(s, file_id)
            active = s.scalar(select(func.count()).select_from(FineTuningJob).where(
                ((FineTuningJob.training_file == file_id) | (FineTuningJob.validation_file == file_id))
                & FineTuningJob.status.in_(["validating_files", "queued", "running", "paused"])))
            if active:
                raise GraftError(f"file {file_id} is used by a fine-tuning job that has not finished; "
                                 "cancel the job first", param="file_id", code="file_in_use", status_code=409)
            sha = f.sha256
            s.delete(f)
        delete_unreferenced_blob(sha)
    return {"id": file_id, "object": "file", "deleted": True}


def _format_error(error: dict) -> str:
    """One error as `line N: field: message`; errors about the whole file (line None or 0) say `file:`."""
    where = f"line {error['line']}" if error.get("line") else "file"
    return f"{where}: {error['field']}: {error['message']}" if error.get("field") else f"{where}: {error['message']}"


def _format_details(report: dict) -> str:
    lines = [_format_error(e) for e in report["errors"][:MAX_DETAILS]]
    total = report.get("error_count", len(report["errors"]))
    if total > len(lines):
        lines.append(f"... and {total - len(lines)} more errors")
    return "; ".join(lines)


def _format_findings(report: dict) -> str | None:
    """A valid file's personal-data warnings (data_policy warn): counts per kind and where, never the values."""
    if not report.get("finding_count"):
        return None
    shown = "; ".join(_finding_text(f["line"], f["field"], f["kind"]) for f in report["findings"][:MAX_DETAILS])
    more = report["finding_count"] - min(len(report["findings"]), MAX_DETAILS)
    return (f"warning: personal data found ({_counts_text(report['findings_by_kind'])}), stored as uploaded "
            f"(data_policy warn): {shown}" + (f"; ... and {more} more" if more > 0 else ""))


def validate_stored_file(file_id: str, *, tokenizer=None, context_length: int | None = None) -> dict:
    """Validate an uploaded file and record the outcome: status processed or error with line details."""
    from graftlm.data.validate import validate_file

    f = get_file_record(file_id)
    path = blobs.blob_path(get_settings().blobs_dir, f.sha256)
    try:
        report = validate_file(path, tokenizer=tokenizer, context_length=context_length)
    except Exception as e:  # the validator must not crash, but a stored file is never left "uploaded"
        report = {"valid": False, "format": None, "errors": [{"line": 0, "field": None,
                  "message": f"validator failed: {e}"}], "error_count": 1, "stats": {}}
    with session() as s:
        row = _get(s, file_id)
        row.status = "processed" if report["valid"] else "error"
        row.status_details = _format_details(report) if not report["valid"] else _format_findings(report)
        row.format = report.get("format")
        row.report = report
    return report


def validate_in_background(file_id: str) -> None:
    """validate_stored_file for a background task: a failure to record the outcome (disk full, file deleted)
    is logged, never raised into the server; the file stays `uploaded` and is validated at the next start."""
    try:
        validate_stored_file(file_id)
    except NotFound:
        pass
    except Exception as e:  # noqa: BLE001
        log.error("validating %s failed (%s: %s); it stays uploaded and is validated again when the server "
                  "restarts", file_id, type(e).__name__, e)


def unfinished_file_ids() -> list[str]:
    """Files still `uploaded`: their validation (or marking) never finished, e.g. the server stopped."""
    with session() as s:
        return list(s.scalars(select(File.id).where(File.status == "uploaded").order_by(File.created_at)))


def finish_unfinished_files(file_ids: list[str] | None = None) -> list[str]:
    """Validate fine-tune files left `uploaded` (and mark the others processed); returns the ids handled."""
    done = []
    for file_id in unfinished_file_ids() if file_ids is None else file_ids:
        try:
            if get_file_record(file_id).purpose == "fine-tune":
                validate_stored_file(file_id)
            else:
                mark_processed(file_id)
        except NotFound:
            continue  # deleted meanwhile
        done.append(file_id)
    return done


def mark_processed(file_id: str) -> dict:
    """Files not meant for fine-tuning are stored as they are."""
    with session() as s:
        row = _get(s, file_id)
        row.status = "processed"
        return file_to_dict(row)
