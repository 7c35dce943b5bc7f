"""OpenAI fine-tuning API: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from graftlm.api.limits import JSONInThreadRoute
from graftlm.jobs import service
from graftlm.jobs.spec import JobSpec

router = APIRouter(route_class=JSONInThreadRoute)


@router.post("/fine_tuning/jobs")
async def create_job(body: JobSpec):
    return await run_in_threadpool(service.submit_job, body)


@router.get("/fine_tuning/jobs")
async def list_jobs(after: str | None = None, limit: int = 20):
    return await run_in_threadpool(lambda: service.list_jobs(after=after, limit=limit))


@router.get("/fine_tuning/schema")
async def config_schema():
    """JSON schema of a job request (JobSpec; its hyperparameters are FineTuneConfig's fields), the same for
    YAML job specs, CLI flags and the SDK."""
    return JobSpec.json_schema()


@router.get("/fine_tuning/jobs/{job_id}")
async def get_job(job_id: str):
    return await run_in_threadpool(service.get_job, job_id)


@router.post("/fine_tuning/jobs/{job_id}/{action}")
async def job_action(job_id: str, action: str):
    if action not in ("cancel", "pause", "resume"):
        from graftlm.errors import NotFound

        raise NotFound(f"unknown action {action!r}; use cancel, pause or resume")
    return await run_in_threadpool(service.request_action, job_id, action)


@router.get("/fine_tuning/jobs/{job_id}/events")
async def list_events(job_id: str, after: str | None = None, limit: int = 20):
    return await run_in_threadpool(lambda: service.list_events(job_id, after=after, limit=limit))


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(job_id: str, after: str | None = None, limit: int = 10):
    return await run_in_threadpool(lambda: service.list_checkpoints(job_id, after=after, limit=limit))
