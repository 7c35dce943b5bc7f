"""HTTP routes for evals (mount under /v1): definitions and runs stored as JSON under GRAFT_HOME/evals/.

POST /evals {"name", "data_path", "scorers"}          create an eval
GET  /evals                                          list
GET  /evals/{eval_id}                                one eval
POST /evals/{eval_id}/runs {"model", "strategy", ...} run it now (blocking) and store the run
GET  /evals/{eval_id}/runs                           runs, without per-example results
GET  /evals/{eval_id}/runs/{run_id}                  one run with per-example results
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from graftlm.evals import store

router = APIRouter(tags=["evals"])


class EvalCreate(BaseModel):
    name: str
    data_path: str
    scorers: list[str] = Field(default_factory=lambda: ["label_accuracy"])
    description: str | None = None


class RunCreate(BaseModel):
    model: str
    strategy: str = "zero-shot"
    k: int = 4
    train_path: str | None = None
    kb_id: str | None = None
    max_examples: int | None = None
    max_tokens: int = 32


def _summary(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "results"}


@router.post("/evals")
def create_eval(body: EvalCreate) -> dict:
    from pathlib import Path

    from graftlm.errors import GraftError
    from graftlm.evals.scorers import SCORERS

    if not Path(body.data_path).exists():
        raise GraftError(f"{body.data_path} does not exist", param="data_path")
    unknown = [s for s in body.scorers if s not in SCORERS]
    if unknown:
        raise GraftError(f"unknown scorer(s) {', '.join(unknown)}; known: {', '.join(SCORERS)}", param="scorers")
    return store.create_eval(body.name, body.data_path, body.scorers, description=body.description)


@router.get("/evals")
def list_evals() -> dict:
    return {"object": "list", "data": store.list_evals()}


@router.get("/evals/{eval_id}")
def get_eval(eval_id: str) -> dict:
    return store.get_eval(eval_id)


@router.post("/evals/{eval_id}/runs")
async def create_run(eval_id: str, body: RunCreate) -> dict:
    from graftlm.evals.run import run_eval

    ev = store.get_eval(eval_id)
    run = await run_in_threadpool(run_eval, body.model, ev["data_path"], scorers=ev["scorers"], strategy=body.strategy,
                                  k=body.k, train_path=body.train_path, kb_id=body.kb_id,
                                  max_examples=body.max_examples, max_tokens=body.max_tokens, eval_id=eval_id)
    return _summary(run)


@router.get("/evals/{eval_id}/runs")
def list_runs(eval_id: str) -> dict:
    return {"object": "list", "data": [_summary(r) for r in store.list_runs(eval_id)]}


@router.get("/evals/{eval_id}/runs/{run_id}")
def get_run(eval_id: str, run_id: str) -> dict:
    return store.get_run(run_id, eval_id)
