"""Projects (OCI compartments): create, list, change, delete; their quotas and data policy.

The instance admin key manages projects; a project's admin key manages its keys (graftlm.keys.service).
A project's id is its name. Deleting a project refuses while it still holds live resources, revokes its keys
and keeps the rows of what it held (usage, audit), so the name is not reused.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select

from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.store import scope
from graftlm.store.db import session
from graftlm.store.models import (DATA_POLICIES, DEFAULT_PROJECT, ApiKey, Cluster, Endpoint, Eval, File,
                                  FineTuningJob, KnowledgeBaseOwner, Model, Project, now)

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
QUOTAS = ("max_clusters", "max_units", "max_file_bytes")


class QuotaExceeded(GraftError):
    """403, not 429: a quota does not lift by waiting (clients retry a 429)."""
    status_code = 403
    error_type = "quota_exceeded_error"


def project_to_dict(p: Project) -> dict:
    return {"id": p.id, "object": "project", "name": p.id, "description": p.description,
            "data_policy": p.data_policy, "quotas": {q: getattr(p, q) for q in QUOTAS},
            "created_at": p.created_at, "status": "deleted" if p.deleted_at else "active",
            "deleted_at": p.deleted_at}


def _check_fields(data_policy: str | None, quotas: dict) -> None:
    if data_policy is not None and data_policy not in DATA_POLICIES:
        raise GraftError(f"data_policy must be one of {', '.join(DATA_POLICIES)}", param="data_policy")
    for name, value in quotas.items():
        if name not in QUOTAS:
            raise GraftError(f"unknown quota {name!r}; quotas are {', '.join(QUOTAS)}", param=name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise GraftError(f"{name} must be a whole number >= 0 (or null: no limit)", param=name)


def create_project(name: str, *, description: str | None = None, data_policy: str = "warn", **quotas) -> dict:
    if not isinstance(name, str) or not NAME.match(name):
        raise GraftError("name must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit",
                         param="name")
    _check_fields(data_policy, quotas)
    with session() as s:
        if s.get(Project, name) is not None:
            raise Conflict(f"project {name!r} already exists (a deleted project's name is not reused)", param="name")
        p = Project(id=name, description=description, data_policy=data_policy, **quotas)
        s.add(p)
        s.flush()
        return project_to_dict(p)


def _live(s, project_id: str) -> Project:
    p = s.get(Project, project_id)
    if p is None or p.deleted_at is not None:
        raise NotFound(f"no project {project_id!r}", param="project_id")
    return p


def get_project(project_id: str) -> dict:
    with session() as s:
        return project_to_dict(_live(s, project_id))


def project_exists(project_id: str) -> bool:
    with session() as s:
        p = s.get(Project, project_id)
        return p is not None and p.deleted_at is None


def list_projects() -> dict:
    with session() as s:
        rows = s.scalars(select(Project).where(Project.deleted_at.is_(None)).order_by(Project.created_at, Project.id))
        return {"object": "list", "data": [project_to_dict(p) for p in rows], "has_more": False}


def update_project(project_id: str, *, description: str | None = None, data_policy: str | None = None,
                   **quotas) -> dict:
    """Changes the fields given; a quota given as None removes it."""
    _check_fields(data_policy, quotas)
    with session() as s:
        p = _live(s, project_id)
        if description is not None:
            p.description = description
        if data_policy is not None:
            p.data_policy = data_policy
        for name, value in quotas.items():
            setattr(p, name, value)
        return project_to_dict(p)


def holdings(s, project_id: str) -> dict[str, int]:
    """Live resources of a project, by kind (what stops its deletion)."""
    with scope.acting_in(project_id):
        counts = {
            "files": s.scalar(select(func.count()).select_from(File)),
            "fine-tuning jobs": s.scalar(select(func.count()).select_from(FineTuningJob).where(
                FineTuningJob.status.in_(("validating_files", "queued", "running", "paused")))),
            "custom models": s.scalar(select(func.count()).select_from(Model).where(Model.project_id == project_id)),
            "clusters": s.scalar(select(func.count()).select_from(Cluster).where(
                Cluster.project_id == project_id, Cluster.lifecycle_state != "DELETED")),
            "endpoints": s.scalar(select(func.count()).select_from(Endpoint).where(
                Endpoint.lifecycle_state != "DELETED")),
            "evals": s.scalar(select(func.count()).select_from(Eval)),
            "knowledge bases": s.scalar(select(func.count()).select_from(KnowledgeBaseOwner)),
        }
    return {k: v for k, v in counts.items() if v}


def delete_project(project_id: str) -> dict:
    if project_id == DEFAULT_PROJECT:
        raise Conflict("the default project cannot be deleted", param="project_id")
    with session() as s:
        p = _live(s, project_id)
        held = holdings(s, project_id)
        if held:
            shown = ", ".join(f"{n} {kind}" for kind, n in held.items())
            raise Conflict(f"project {project_id!r} still holds {shown}; delete them first", param="project_id",
                           code="project_not_empty")
        p.deleted_at = now()
        with scope.acting_in(project_id):
            for k in s.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))):
                k.revoked_at = p.deleted_at
        return project_to_dict(p)


def data_policy(project_id: str | None = None) -> str:
    """The data policy of ``project_id`` (default: the caller's project): warn, redact or reject."""
    with session() as s:
        p = s.get(Project, project_id or scope.project_for_new_rows())
        return p.data_policy if p is not None else "warn"


def _quota_row(s) -> Project | None:
    return s.get(Project, scope.project_for_new_rows())


def check_cluster_quota(s, unit_count: int) -> None:
    """Before a new cluster of ``unit_count`` units in the caller's project: 429 naming the quota it passes."""
    p = _quota_row(s)
    if p is None or (p.max_clusters is None and p.max_units is None):
        return
    live = select(Cluster).where(Cluster.project_id == p.id, Cluster.lifecycle_state != "DELETED")
    n = s.scalar(select(func.count()).select_from(live.subquery()))
    units = s.scalar(select(func.coalesce(func.sum(Cluster.unit_count), 0)).where(
        Cluster.project_id == p.id, Cluster.lifecycle_state != "DELETED"))
    if p.max_clusters is not None and n + 1 > p.max_clusters:
        raise QuotaExceeded(f"project {p.id!r} has {n} of its max_clusters {p.max_clusters} clusters; delete one "
                            "or ask the instance admin to raise the quota", param="max_clusters",
                            code="quota_exceeded")
    if p.max_units is not None and units + unit_count > p.max_units:
        raise QuotaExceeded(f"project {p.id!r} uses {units} of its max_units {p.max_units} units; "
                            f"{unit_count} more would pass it", param="max_units", code="quota_exceeded")


def file_bytes_left() -> int | None:
    """How many more file bytes the caller's project may store (None: no quota)."""
    with session() as s:
        p = _quota_row(s)
        if p is None or p.max_file_bytes is None:
            return None
        with scope.acting_in(p.id):
            used = s.scalar(select(func.coalesce(func.sum(File.bytes), 0)))
        return max(0, p.max_file_bytes - used)
