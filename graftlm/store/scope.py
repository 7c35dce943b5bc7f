"""The project a unit of work acts in, and the one place that confines every ORM query to it.

A request sets the caller's project (``acting_in``) before any handler runs; from then on every ORM SELECT,
UPDATE and DELETE the request's thread makes sees only that project's rows (``with_loader_criteria`` on every
owned table, through the parent for child rows), and every new owned row gets the project. Services therefore
take the caller's project without passing it around, and a query that forgets it cannot leak: another
project's row is simply not there (a 404 like any unknown id). Shared rows (base models, the local fine-tuning
cluster: ``project_id`` NULL) are visible to every project. With no project set (the scheduler, job workers,
the CLI on its own machine) queries are not confined: that code acts for the instance and sets the project of
what it creates from the parent row.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from sqlalchemy import event, or_, select
from sqlalchemy.orm import Session, with_loader_criteria

from graftlm.store.models import (DEFAULT_PROJECT, ApiKey, Cluster, Endpoint, Eval, EvalRun, File, FineTuningJob,
                                  JobCheckpoint, JobEvent, KnowledgeBaseOwner, Model, RagIngestion, RequestLog,
                                  UsageRecord)

_project: ContextVar[str | None] = ContextVar("graftlm_project", default=None)

OWNED = (File, FineTuningJob, Endpoint, UsageRecord, Eval, ApiKey, KnowledgeBaseOwner)  # project_id NOT NULL
SHARED_WHEN_NULL = (Model, Cluster)  # project_id NULL: shared, read-only


def current() -> str | None:
    """The project this unit of work is confined to; None: the instance (no confinement)."""
    return _project.get()


def project_for_new_rows() -> str:
    return _project.get() or DEFAULT_PROJECT


def set_project(project_id: str | None) -> None:
    """Confine the rest of this request (its task and the threads it hands work to) to ``project_id``."""
    _project.set(project_id)


@contextmanager
def acting_in(project_id: str | None) -> Iterator[None]:
    token = _project.set(project_id)
    try:
        yield
    finally:
        _project.reset(token)


def unconfined():
    """For the few instance-wide reads a request needs (is this blob still used by anyone?)."""
    return acting_in(None)


def _criteria(p: str) -> list:
    jobs = select(FineTuningJob.id).where(FineTuningJob.project_id == p)
    evals = select(Eval.id).where(Eval.project_id == p)
    endpoints = select(Endpoint.id).where(Endpoint.project_id == p)
    owners = select(KnowledgeBaseOwner.knowledge_base_id)
    opts = [with_loader_criteria(cls, cls.project_id == p) for cls in OWNED]
    opts += [with_loader_criteria(cls, or_(cls.project_id == p, cls.project_id.is_(None))) for cls in SHARED_WHEN_NULL]
    # a KB with no owner row predates projects: it is the default project's
    kbs = (RagIngestion.knowledge_base_id.not_in(owners.where(KnowledgeBaseOwner.project_id != p))
           if p == DEFAULT_PROJECT else
           RagIngestion.knowledge_base_id.in_(owners.where(KnowledgeBaseOwner.project_id == p)))
    opts += [with_loader_criteria(JobEvent, JobEvent.job_id.in_(jobs)),
             with_loader_criteria(JobCheckpoint, JobCheckpoint.job_id.in_(jobs)),
             with_loader_criteria(EvalRun, EvalRun.eval_id.in_(evals)),
             with_loader_criteria(RequestLog, RequestLog.endpoint_id.in_(endpoints)),
             with_loader_criteria(RagIngestion, kbs)]
    return opts


@event.listens_for(Session, "do_orm_execute")
def _confine(state) -> None:
    p = _project.get()
    if p is None or not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return  # the parent row was already confined
    state.statement = state.statement.options(*_criteria(p))


@event.listens_for(Session, "before_flush")
def _own_new_rows(session, _context, _instances) -> None:
    for obj in session.new:
        if isinstance(obj, OWNED) and obj.project_id is None:
            obj.project_id = project_for_new_rows()
        elif isinstance(obj, Model) and obj.project_id is None and obj.kind != "base":
            obj.project_id = project_for_new_rows()
