"""Operators and users watching the served models: ``GET /metrics`` (Prometheus text format, any key; a
``metrics``-role key reads nothing else)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from graftlm.api.auth import require_key
from graftlm.observe import metrics

# GET /metrics sits at the root, where Prometheus looks by default, behind the same key check as /v1
metrics_router = APIRouter(dependencies=[Depends(require_key)])


@metrics_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics():
    body = await run_in_threadpool(metrics.render)  # reads the store: off the event loop
    return Response(body, media_type=metrics.CONTENT_TYPE)
