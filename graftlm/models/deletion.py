"""Delete a custom model and everything on disk made from its training data.

A custom model (``ft:<base>:<suffix>:<job>``) takes with it: its weights directory, its checkpoint models
(``…:ckpt-step-N``, rows and directories), the job's training directory (checkpoints, optimizer state, the
exported result) and the job's checkpoint rows. The job's row stays (its history and metrics, as OpenAI keeps
a job whose model was deleted). A checkpoint model alone takes only its own directory. Base models are shared
by every project and are not deleted here.

Directories are moved aside before the rows' deletion commits and removed after it (graftlm.store.trash).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from graftlm.config import get_settings
from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.store import scope, trash
from graftlm.store.db import session
from graftlm.store.models import Endpoint, FineTuningJob, JobCheckpoint, Model

ACTIVE_JOB = ("validating_files", "queued", "running", "paused")
CHECKPOINT = ":ckpt-step-"


def _inside(path: Path, root: Path) -> bool:
    """Only what graftlm itself wrote is deleted: never a directory registered from elsewhere."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except OSError:
        return False


def sweep(older_than_s: float = trash.STALE_SECONDS) -> list[Path]:
    """Finish deletions a crash interrupted (``.deleted-*`` under the models and jobs directories)."""
    settings = get_settings()
    return trash.sweep(settings.models_dir, older_than_s) + trash.sweep(settings.jobs_dir, older_than_s)


def delete_model(model_id: str) -> dict:
    """Delete a custom model (and its checkpoints) or one checkpoint model; OpenAI's ``DELETE /v1/models/{id}``.
    409 while an endpoint serves it, a job still runs for it, or another model or job is built on it."""
    sweep()
    moved: list[tuple[Path | None, Path]] = []
    try:
        with session() as s:
            ids, paths = _delete_rows(s, model_id)
            for p in paths:  # before the commit: a failed commit puts them back (below)
                moved.append((trash.move_aside(p), p))
    except BaseException:
        for aside, p in moved:
            trash.put_back(aside, p)
        raise
    for aside, _ in moved:  # committed: the rows are gone, and now the bytes
        trash.purge(aside)
    return {"id": model_id, "object": "model", "deleted": True, "deleted_models": ids}


def _delete_rows(s, model_id: str) -> tuple[list[str], list[Path]]:
    """Check nothing depends on the model, delete its rows in session s; returns the model ids deleted and the
    directories to remove once that commits."""
    settings = get_settings()
    m = s.get(Model, model_id)
    if m is None:
        raise NotFound(f"no model with id {model_id!r}", param="model", code="model_not_found")
    if m.kind != "custom":
        raise GraftError(f"{model_id} is a base model, shared by every project; only custom models (ft:…) are "
                         "deleted through the API", param="model", code="base_model_not_deletable", status_code=403)
    job_id = (m.lineage or {}).get("job_id")
    is_checkpoint = CHECKPOINT in model_id
    rows = [m] if is_checkpoint else [m, *s.scalars(select(Model).where(
        Model.id.startswith(model_id + CHECKPOINT, autoescape=True)))]
    ids = [r.id for r in rows]
    with scope.unconfined():  # a reference from anywhere would dangle
        serving = list(s.scalars(select(Endpoint).where(Endpoint.model.in_(ids))))
        built_on = list(s.scalars(select(Model.id).where(Model.parent.in_(ids))))
        trained_from = list(s.scalars(select(FineTuningJob.id).where(FineTuningJob.model.in_(ids))))
        job = s.get(FineTuningJob, job_id) if job_id else None
    live = sorted(e.name for e in serving if e.lifecycle_state != "DELETED")
    if live:
        raise Conflict(f"{model_id} is served by endpoint(s) {', '.join(live)}; delete them first", param="model",
                       code="model_in_use")
    if built_on or trained_from:
        names = sorted(built_on + trained_from)
        raise Conflict(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} built on {model_id}; delete "
                       f"{'it' if len(names) == 1 else 'them'} first", param="model", code="model_in_use")
    if job is not None and job.status in ACTIVE_JOB and not is_checkpoint:
        raise Conflict(f"job {job.id} is still {job.status} and writes {model_id}'s checkpoints; cancel it first",
                       param="model", code="model_in_use")
    paths = [Path(r.path) for r in rows if _inside(r.path, settings.models_dir)]
    if job is not None and not is_checkpoint:
        paths.append(settings.jobs_dir / job.id)
        for c in s.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job.id)):
            s.delete(c)
    for e in serving:  # deleted endpoints that named it go with it (their request logs keep the name)
        s.delete(e)
    s.flush()
    for r in rows[1:]:
        s.delete(r)
    s.flush()
    s.delete(m)
    s.flush()
    return ids, paths
