"""The audit log: every mutating request and every denied one, append-only (the database refuses UPDATE and
DELETE on the table). Each event: time, key id, project, role, action (method + route), resource id, HTTP
status, outcome (allowed | denied | failed), client address, request id. Never a secret or a body."""

from __future__ import annotations

import time

from sqlalchemy import select

from graftlm.errors import GraftError, NotFound
from graftlm.store import scope
from graftlm.store.db import session
from graftlm.store.models import AuditEvent, new_id
from graftlm.store.paging import check_limit

MAX_PAGE = 1000


def outcome(status: int) -> str:
    return "denied" if status in (401, 403) else "allowed" if status < 400 else "failed"


def record(*, action: str, status: int, key_id: str | None = None, project: str | None = None,
           role: str | None = None, resource_id: str | None = None, client: str | None = None,
           request_id: str | None = None) -> None:
    with session() as s, scope.unconfined():
        s.add(AuditEvent(id=new_id("audit"), created_at=time.time(), key_id=key_id, project_id=project, role=role,
                         action=action[:200], resource_id=(resource_id or None) and resource_id[:300], status=status,
                         outcome=outcome(status), client=(client or None) and client[:100], request_id=request_id))


def event_to_dict(e: AuditEvent) -> dict:
    return {"id": e.id, "object": "audit_event", "created_at": e.created_at, "key_id": e.key_id,
            "project": e.project_id, "role": e.role, "action": e.action, "resource_id": e.resource_id,
            "status": e.status, "outcome": e.outcome, "client": e.client, "request_id": e.request_id}


def list_events(*, project: str | None = None, key_id: str | None = None, action: str | None = None,
                outcome: str | None = None, since: float | None = None, until: float | None = None,
                after: str | None = None, limit: int = 100, all_projects: bool = False) -> dict:
    """Newest first; ``after`` is the last id of the previous page. A caller confined to a project sees only
    its events (``project`` must be it); the instance admin (``all_projects``) may list any or all."""
    check_limit(limit, MAX_PAGE)
    confined = scope.current()
    if not all_projects and confined is not None:
        if project is not None and project != confined:
            raise NotFound(f"no project {project!r}", param="project")
        project = confined
    if outcome is not None and outcome not in ("allowed", "denied", "failed"):
        raise GraftError("outcome must be allowed, denied or failed", param="outcome")
    with session() as s, scope.unconfined():
        q = select(AuditEvent)
        for column, value in ((AuditEvent.project_id, project), (AuditEvent.key_id, key_id),
                              (AuditEvent.action, action), (AuditEvent.outcome, outcome)):
            if value is not None:
                q = q.where(column == value)
        if since is not None:
            q = q.where(AuditEvent.created_at >= since)
        if until is not None:
            q = q.where(AuditEvent.created_at < until)
        if after is not None:
            anchor = s.scalar(q.where(AuditEvent.id == after))
            if anchor is None:
                raise NotFound(f"no audit event {after!r} to page after", param="after")
            q = q.where(AuditEvent.seq < anchor.seq)
        rows = list(s.scalars(q.order_by(AuditEvent.seq.desc()).limit(limit + 1)))
        return {"object": "list", "data": [event_to_dict(e) for e in rows[:limit]], "has_more": len(rows) > limit}
