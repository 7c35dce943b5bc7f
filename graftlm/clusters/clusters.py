"""Dedicated AI clusters: HOSTING (one base model, up to 50 endpoints) and FINE_TUNING (runs jobs)."""

from __future__ import annotations

from sqlalchemy import func, select

from graftlm.clusters import metering
from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.models.catalog import get_model
from graftlm.store.db import session
from graftlm.store.models import Cluster, Endpoint, new_id, now

TYPES = {"HOSTING": 1, "FINE_TUNING": 2}  # type -> default unit count
ENDPOINT_CAPACITY = 50
LIVE_ENDPOINT_STATES = ("CREATING", "ACTIVE", "INACTIVE", "UPDATING", "FAILED")
DEFAULT_FT_CLUSTER = "dac-local-fine-tuning"


def cluster_to_dict(c: Cluster, used: int = 0) -> dict:
    d = {"id": c.id, "object": "dedicated_ai_cluster", "name": c.name, "type": c.type,
         "unit_count": c.unit_count, "lifecycle_state": c.lifecycle_state, "created_at": c.created_at}
    if c.type == "HOSTING":
        d |= {"base_model": c.base_model, "total_endpoint_capacity": ENDPOINT_CAPACITY,
              "used_endpoint_capacity": used}
    return d


def used_capacity(s, cluster_id: str) -> int:
    return s.scalar(select(func.count()).select_from(Endpoint).where(
        Endpoint.dedicated_ai_cluster_id == cluster_id, Endpoint.lifecycle_state.in_(LIVE_ENDPOINT_STATES)))


def get_cluster_row(s, cluster_id: str) -> Cluster:
    c = s.get(Cluster, cluster_id)
    if c is None or c.lifecycle_state == "DELETED":
        raise NotFound(f"no dedicated AI cluster with id {cluster_id!r}", param="dedicated_ai_cluster_id")
    return c


def create_cluster(type: str, *, unit_count: int | None = None, base_model: str | None = None,
                   name: str | None = None) -> dict:
    if type not in TYPES:
        raise GraftError(f"type must be one of {', '.join(TYPES)}", param="type")
    unit_count = TYPES[type] if unit_count is None else unit_count
    if not isinstance(unit_count, int) or unit_count < 1:
        raise GraftError("unit_count must be an integer ≥ 1", param="unit_count")
    if type == "HOSTING":
        if not base_model:
            raise GraftError("a HOSTING cluster needs base_model", param="base_model")
        m = get_model(base_model)
        if m["kind"] != "base":
            raise GraftError(f"{base_model} is a custom model; a hosting cluster is created for its base "
                             f"model {m['parent']}", param="base_model")
    elif base_model:
        get_model(base_model)
    with session() as s:
        c = Cluster(id=new_id("dac"), name=name or f"{type.lower()}-cluster", type=type, unit_count=unit_count,
                    base_model=base_model, lifecycle_state="ACTIVE")
        s.add(c)
        s.flush()
        if type == "HOSTING":
            metering.open_span(s, c, minimum_unit_hours=metering.HOSTING_MIN_UNIT_HOURS)
        return cluster_to_dict(c)


def ensure_default_fine_tuning_cluster(units: int = 1) -> str:
    """Jobs that name no cluster run on this local one."""
    with session() as s:
        if s.get(Cluster, DEFAULT_FT_CLUSTER) is None:
            s.add(Cluster(id=DEFAULT_FT_CLUSTER, name="local fine-tuning", type="FINE_TUNING",
                          unit_count=units, lifecycle_state="ACTIVE"))
    return DEFAULT_FT_CLUSTER


def get_cluster(cluster_id: str) -> dict:
    with session() as s:
        c = get_cluster_row(s, cluster_id)
        return cluster_to_dict(c, used_capacity(s, c.id))


def list_clusters(type: str | None = None) -> list[dict]:
    with session() as s:
        q = select(Cluster).where(Cluster.lifecycle_state != "DELETED").order_by(Cluster.created_at, Cluster.id)
        if type:
            q = q.where(Cluster.type == type)
        return [cluster_to_dict(c, used_capacity(s, c.id)) for c in s.scalars(q)]


def delete_cluster(cluster_id: str) -> dict:
    with session() as s:
        c = get_cluster_row(s, cluster_id)
        if used_capacity(s, c.id):
            raise Conflict(f"cluster {cluster_id} still has endpoints; delete them first",
                           param="dedicated_ai_cluster_id", code="cluster_in_use")
        c.lifecycle_state = "DELETED"
        c.deleted_at = now()
        metering.close_spans(s, cluster_id=c.id)
        return cluster_to_dict(c)
