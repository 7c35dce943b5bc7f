"""HTTP routes for evals (mount under /v1): definitions and runs stored in the control-plane database.

POST /evals {"name", "data_path", "scorers"}          create an eval (scorers may include "judge:<model>")
GET  /evals                                          list
GET  /evals/{eval_id}                                one eval
POST /evals/{eval_id}/runs {"model", "strategy", ...} run it now (blocking) and store the run; an unknown
                                                     field is a 400 naming it
GET  /evals/{eval_id}/runs                           runs, without per-example results
GET  /evals/{eval_id}/runs/{run_id}                  one run with per-example results
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from graftlm.api.limits import JSONInThreadRoute
from graftlm.evals import service, store

router = APIRouter(tags=["evals"], route_class=JSONInThreadRoute)


class EvalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 400 naming it, not silently dropped
    name: str
    data_path: str
    scorers: list[str] = Field(default_factory=lambda: ["label_accuracy"])
    description: str | None = None


class RunCreate(service.RunOptions):
    model: str


@router.post("/evals")
def create_eval(body: EvalCreate) -> dict:
    return service.define_eval(body.name, body.data_path, body.scorers, description=body.description)


@router.get("/evals")
def list_evals() -> dict:
    return {"object": "list", "data": store.list_evals()}


@router.get("/evals/{eval_id}")
def get_eval(eval_id: str) -> dict:
    return store.get_eval(eval_id)


@router.post("/evals/{eval_id}/runs")
async def create_run(eval_id: str, body: RunCreate) -> dict:
    return await run_in_threadpool(service.run_defined_eval, eval_id, body.model, **body.model_dump(exclude={"model"}))


@router.get("/evals/{eval_id}/runs")
def list_runs(eval_id: str) -> dict:
    return {"object": "list", "data": [service.run_summary(r) for r in store.list_runs(eval_id)]}


@router.get("/evals/{eval_id}/runs/{run_id}")
def get_run(eval_id: str, run_id: str) -> dict:
    return store.get_run(run_id, eval_id)
