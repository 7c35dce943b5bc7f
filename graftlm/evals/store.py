"""Eval definitions and runs as JSON files under GRAFT_HOME/evals/ (no DB migration needed).

GRAFT_HOME/evals/<eval_id>/eval.json            the definition
GRAFT_HOME/evals/<eval_id>/runs/<run_id>.json   one run: config, aggregates, per-example results
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from graftlm.config import get_settings
from graftlm.errors import NotFound


def evals_dir() -> Path:
    d = get_settings().home / "evals"
    d.mkdir(parents=True, exist_ok=True)
    return d


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def create_eval(name: str, data_path: str, scorers: list[str], *, description: str | None = None,
                eval_id: str | None = None) -> dict:
    d = {"id": eval_id or new_id("eval"), "object": "eval", "name": name, "data_path": str(data_path),
         "scorers": list(scorers), "description": description, "created_at": int(time.time())}
    _write(evals_dir() / d["id"] / "eval.json", d)
    return d


def get_eval(eval_id: str) -> dict:
    p = evals_dir() / eval_id / "eval.json"
    if not p.exists():
        raise NotFound(f"eval {eval_id!r} not found", param="eval_id")
    return json.loads(p.read_text())


def list_evals() -> list[dict]:
    out = [json.loads(p.read_text()) for p in evals_dir().glob("*/eval.json")]
    return sorted(out, key=lambda e: e["created_at"])


def save_run(eval_id: str, run: dict) -> dict:
    run.setdefault("saved_ns", time.time_ns())  # orders runs saved within the same second
    _write(evals_dir() / eval_id / "runs" / f"{run['id']}.json", run)
    return run


def get_run(run_id: str, eval_id: str | None = None) -> dict:
    pattern = f"{eval_id or '*'}/runs/{run_id}.json"
    for p in evals_dir().glob(pattern):
        return json.loads(p.read_text())
    raise NotFound(f"eval run {run_id!r} not found", param="run_id")


def list_runs(eval_id: str) -> list[dict]:
    get_eval(eval_id)
    runs = [json.loads(p.read_text()) for p in (evals_dir() / eval_id / "runs").glob("*.json")]
    return sorted(runs, key=lambda r: (r["created_at"], r.get("saved_ns", 0)))
