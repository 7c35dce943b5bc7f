"""Dedicated AI clusters, endpoints and usage."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from graftlm.api.limits import JSONInThreadRoute
from graftlm.clusters import clusters, endpoints, metering

router = APIRouter(route_class=JSONInThreadRoute)


class ClusterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["HOSTING", "FINE_TUNING"]
    unit_count: int | None = Field(None, ge=1, le=clusters.MAX_UNIT_COUNT)
    base_model: str | None = None
    name: str | None = None
    deterministic: bool = False


class ClusterPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit_count: int | None = Field(None, ge=1, le=clusters.MAX_UNIT_COUNT)
    name: str | None = None


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    dedicated_ai_cluster_id: str
    name: str | None = None
    log_requests: bool = False
    log_retention_days: int | None = Field(None, ge=1, le=endpoints.MAX_RETENTION_DAYS)


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    name: str | None = None
    log_requests: bool | None = None
    log_retention_days: int | None = Field(None, ge=1, le=endpoints.MAX_RETENTION_DAYS)


@router.post("/dedicated_ai_clusters")
async def create_cluster(body: ClusterIn):
    return await run_in_threadpool(clusters.create_cluster, body.type, unit_count=body.unit_count,
                                   base_model=body.base_model, name=body.name, deterministic=body.deterministic)


@router.get("/dedicated_ai_clusters")
async def list_clusters(type: str | None = None, after: str | None = None, limit: int = 100):
    return await run_in_threadpool(lambda: clusters.list_clusters_page(type, after=after, limit=limit))


@router.get("/dedicated_ai_clusters/{cluster_id}")
async def get_cluster(cluster_id: str):
    return await run_in_threadpool(clusters.get_cluster, cluster_id)


@router.patch("/dedicated_ai_clusters/{cluster_id}")
async def update_cluster(cluster_id: str, body: ClusterPatch):
    """unit_count: a HOSTING cluster runs that many engine replicas from now on (added, or drained)."""
    return await run_in_threadpool(lambda: clusters.update_cluster(cluster_id, unit_count=body.unit_count,
                                                                    name=body.name))


@router.delete("/dedicated_ai_clusters/{cluster_id}")
async def delete_cluster(cluster_id: str):
    return await run_in_threadpool(clusters.delete_cluster, cluster_id)


@router.post("/endpoints")
async def create_endpoint(body: EndpointIn):
    return await run_in_threadpool(lambda: endpoints.create_endpoint(
        body.model, body.dedicated_ai_cluster_id, body.name, log_requests=body.log_requests,
        log_retention_days=body.log_retention_days))


@router.get("/endpoints")
async def list_endpoints(dedicated_ai_cluster_id: str | None = None, after: str | None = None, limit: int = 100):
    return await run_in_threadpool(lambda: endpoints.list_endpoints_page(dedicated_ai_cluster_id, after=after,
                                                                         limit=limit))


@router.get("/endpoints/{endpoint_id}")
async def get_endpoint(endpoint_id: str):
    return await run_in_threadpool(endpoints.get_endpoint, endpoint_id)


@router.patch("/endpoints/{endpoint_id}")
async def update_endpoint(endpoint_id: str, body: EndpointPatch):
    return await run_in_threadpool(lambda: endpoints.update_endpoint(
        endpoint_id, name=body.name, model=body.model, log_requests=body.log_requests,
        log_retention_days=body.log_retention_days))


@router.delete("/endpoints/{endpoint_id}")
async def delete_endpoint(endpoint_id: str):
    return await run_in_threadpool(endpoints.delete_endpoint, endpoint_id)


@router.post("/endpoints/{endpoint_id}/deactivate")
async def deactivate_endpoint(endpoint_id: str):
    return await run_in_threadpool(endpoints.deactivate_endpoint, endpoint_id)


@router.post("/endpoints/{endpoint_id}/activate")
async def activate_endpoint(endpoint_id: str):
    return await run_in_threadpool(endpoints.activate_endpoint, endpoint_id)


@router.get("/usage")
async def usage(price_per_unit_hour: float | None = Query(None, ge=0, le=metering.MAX_PRICE_PER_UNIT_HOUR,
                                                                   allow_inf_nan=False)):
    return await run_in_threadpool(metering.usage_report, price_per_unit_hour)
