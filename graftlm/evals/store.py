"""Eval definitions and runs in the control-plane store (tables ``evals`` and ``eval_runs``), so every API
process on one database sees the same evals. A run row keeps the whole run (config, aggregates, per-example
results) as JSON."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import select

from graftlm.errors import NotFound
from graftlm.store.db import session
from graftlm.store.models import Eval, EvalRun


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _eval_dict(e: Eval) -> dict:
    return {"id": e.id, "object": "eval", "name": e.name, "data_path": e.data_path, "scorers": list(e.scorers),
            "description": e.description, "created_at": e.created_at}


def create_eval(name: str, data_path: str, scorers: list[str], *, description: str | None = None,
                eval_id: str | None = None) -> dict:
    row = Eval(id=eval_id or new_id("eval"), name=name, data_path=str(data_path), scorers=list(scorers),
               description=description, created_at=int(time.time()))
    with session() as s:
        s.add(row)
    return _eval_dict(row)


def get_eval(eval_id: str) -> dict:
    with session() as s:
        row = s.get(Eval, eval_id)
        if row is None:
            raise NotFound(f"eval {eval_id!r} not found", param="eval_id")
        return _eval_dict(row)


def list_evals() -> list[dict]:
    with session() as s:
        return [_eval_dict(e) for e in s.scalars(select(Eval).order_by(Eval.created_at, Eval.id))]


def save_run(eval_id: str, run: dict) -> dict:
    """Insert or replace the run ``run["id"]`` of ``eval_id``."""
    run.setdefault("saved_ns", time.time_ns())
    with session() as s:
        if s.get(Eval, eval_id) is None:
            raise NotFound(f"eval {eval_id!r} not found", param="eval_id")
        row = s.get(EvalRun, run["id"]) or EvalRun(id=run["id"], eval_id=eval_id)
        row.model, row.body = run.get("model"), run
        row.created_at, row.saved_ns = int(run.get("created_at") or time.time()), run["saved_ns"]
        s.add(row)
    return run


def get_run(run_id: str, eval_id: str | None = None) -> dict:
    with session() as s:
        row = s.get(EvalRun, run_id)
        if row is None or (eval_id is not None and row.eval_id != eval_id):
            raise NotFound(f"eval run {run_id!r} not found", param="run_id")
        return row.body


def list_runs(eval_id: str) -> list[dict]:
    get_eval(eval_id)
    with session() as s:
        rows = s.scalars(select(EvalRun).where(EvalRun.eval_id == eval_id)
                         .order_by(EvalRun.created_at, EvalRun.saved_ns))
        return [r.body for r in rows]
