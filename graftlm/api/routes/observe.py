"""Operators and users watching the served models: ``GET /metrics`` (Prometheus text format, any key; a
``metrics``-role key reads nothing else), an endpoint's request logs, and feedback on logged completions."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from graftlm.api.auth import require_key
from graftlm.api.limits import JSONInThreadRoute
from graftlm.clusters import endpoints
from graftlm.errors import NotFound
from graftlm.observe import logs, metrics

router = APIRouter(route_class=JSONInThreadRoute)
MAX_TEXT = 100_000  # characters of a correction or comment

# GET /metrics sits at the root, where Prometheus looks by default, behind the same key check as /v1
metrics_router = APIRouter(dependencies=[Depends(require_key)])


@metrics_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics():
    body = await run_in_threadpool(metrics.render)  # reads the store: off the event loop
    return Response(body, media_type=metrics.CONTENT_TYPE)


@router.get("/endpoints/{endpoint_id}/logs")
async def endpoint_logs(endpoint_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=logs.MAX_PAGE),
                        since: int | None = Query(None, ge=0), until: int | None = Query(None, ge=0),
                        model: str | None = None, status: int | None = Query(None, ge=100, le=599),
                        min_rating: float | None = Query(None, ge=1, le=5),
                        max_rating: float | None = Query(None, ge=1, le=5), has_feedback: bool | None = None):
    """An endpoint's logged completions (by id or name), newest first; ratings filter on the 1-5 score."""
    def page():
        endpoint = endpoints.find_endpoint(endpoint_id)
        if endpoint is None:
            raise NotFound(f"no endpoint with id or name {endpoint_id!r}", param="endpoint_id")
        logs.flush()  # what was answered before this call is listed
        return logs.list_logs(endpoint["id"], after=after, limit=limit, since=since, until=until, model=model,
                              status=status, min_rating=min_rating, max_rating=max_rating,
                              has_feedback=has_feedback)
    return await run_in_threadpool(page)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_id: str = Field(min_length=1, max_length=64)
    rating: int = Field(ge=-1, le=5)
    scale: Literal["thumbs", "stars"] | None = None
    correction: str | None = Field(None, max_length=MAX_TEXT)
    comment: str | None = Field(None, max_length=MAX_TEXT)


@router.post("/feedback")
async def feedback(body: FeedbackIn):
    """Feedback on a logged completion: ``rating`` -1/1 (thumbs) or 1-5 (stars; ``scale`` says which when the
    rating is 1), an optional ``correction`` (the answer it should have given) and ``comment``."""
    return await run_in_threadpool(lambda: logs.add_feedback(body.completion_id, body.rating, scale=body.scale,
                                                            correction=body.correction, comment=body.comment))
