"""Dedicated AI clusters: HOSTING (one base model, up to 50 endpoints) and FINE_TUNING (runs jobs)."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import func, select

from graftlm.clusters import metering
from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.models.catalog import get_model
from graftlm.keys.projects import check_cluster_quota
from graftlm.store import scope
from graftlm.store.db import session
from graftlm.store.ids import resolve_prefix
from graftlm.store.models import Cluster, Endpoint, new_id, now
from graftlm.store.paging import check_limit, newest_first_page

TYPES = {"HOSTING": 1, "FINE_TUNING": 2}  # type -> default unit count
ENDPOINT_CAPACITY = 50
LIVE_ENDPOINT_STATES = ("CREATING", "ACTIVE", "INACTIVE", "UPDATING", "FAILED")
DEFAULT_FT_CLUSTER = "dac-local-fine-tuning"
MAX_PAGE = 1000
MAX_UNIT_COUNT = 1024  # units of one cluster (OCI sells a handful; a hosting unit maps to CPU threads)

# Called with the cluster dict and "deleted" once a cluster is deleted, so the serving runtime can stop
# its engine. Set by graftlm.clusters.hosting when it is in use.
listeners: list[Callable[[dict, str], None]] = []


def cluster_to_dict(c: Cluster, used: int = 0) -> dict:
    d = {"id": c.id, "object": "dedicated_ai_cluster", "name": c.name, "type": c.type,
         "unit_count": c.unit_count, "lifecycle_state": c.lifecycle_state, "created_at": c.created_at}
    if c.type == "HOSTING":
        d |= {"base_model": c.base_model, "total_endpoint_capacity": ENDPOINT_CAPACITY,
              "used_endpoint_capacity": used, "deterministic": bool(c.deterministic)}
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
                   name: str | None = None, deterministic: bool = False) -> dict:
    """``deterministic`` (HOSTING): the cluster's engine serves in fp32, whose greedy answers do not depend on
    what else is in the batch (bf16 is faster where the CPU has it, but not batch-invariant)."""
    if type not in TYPES:
        raise GraftError(f"type must be one of {', '.join(TYPES)}", param="type")
    unit_count = TYPES[type] if unit_count is None else unit_count
    if not isinstance(unit_count, int) or not 1 <= unit_count <= MAX_UNIT_COUNT:
        raise GraftError(f"unit_count must be an integer from 1 to {MAX_UNIT_COUNT}", param="unit_count")
    if type == "HOSTING":
        if not base_model:
            raise GraftError("a HOSTING cluster needs base_model", param="base_model")
        m = get_model(base_model)
        if m["kind"] != "base":
            raise GraftError(f"{base_model} is a custom model; a hosting cluster is created for its base "
                             f"model {m['parent']}", param="base_model")
    elif base_model:
        get_model(base_model)
    if deterministic and type != "HOSTING":
        raise GraftError("deterministic applies to HOSTING clusters (how they serve)", param="deterministic")
    with session() as s:
        check_cluster_quota(s, unit_count)
        c = Cluster(id=new_id("dac"), project_id=scope.project_for_new_rows(), name=name or f"{type.lower()}-cluster",
                    type=type, unit_count=unit_count, base_model=base_model, lifecycle_state="ACTIVE", deterministic=bool(deterministic))
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


def resolve_cluster_id(ref: str) -> str:
    """A live cluster's id from its id, a unique id prefix, or its name (names are checked first after an
    exact id, so a cluster named like the start of another's id is still found by name)."""
    with session() as s:
        if s.get(Cluster, ref) is None:
            named = list(s.scalars(select(Cluster.id).where(Cluster.name == ref, Cluster.lifecycle_state != "DELETED")))
            if len(named) == 1:
                return named[0]
            if len(named) > 1:
                raise GraftError(f"several clusters are named {ref!r} ({', '.join(sorted(named))}); give the id",
                                 param="dedicated_ai_cluster_id", code="ambiguous_id")
    return resolve_prefix(Cluster, ref, what="dedicated AI cluster", param="dedicated_ai_cluster_id",
                          where=Cluster.lifecycle_state != "DELETED")


def get_cluster(cluster_id: str) -> dict:
    with session() as s:
        c = get_cluster_row(s, cluster_id)
        return cluster_to_dict(c, used_capacity(s, c.id))


def _live_clusters(type: str | None):
    q = select(Cluster).where(Cluster.lifecycle_state != "DELETED")
    return q.where(Cluster.type == type) if type else q


def list_clusters(type: str | None = None) -> list[dict]:
    """Every live cluster, oldest first (for the runtime and the CLI; the API pages with list_clusters_page)."""
    with session() as s:
        q = _live_clusters(type).order_by(Cluster.created_at, Cluster.id)
        return [cluster_to_dict(c, used_capacity(s, c.id)) for c in s.scalars(q)]


def list_clusters_page(type: str | None = None, *, after: str | None = None, limit: int = 100) -> dict:
    """One page of live clusters, newest first; `after` is the last id of the previous page."""
    check_limit(limit, MAX_PAGE)
    with session() as s:
        anchor = page_anchor(s, Cluster, after)
        rows, more = newest_first_page(s, Cluster, _live_clusters(type), anchor, limit)
        return {"object": "list", "data": [cluster_to_dict(c, used_capacity(s, c.id)) for c in rows],
                "has_more": more}


def page_anchor(s, model, after: str | None):
    """The row `after` names (deleted rows still anchor a page), or None on the first page."""
    if after is None:
        return None
    row = s.get(model, after)
    if row is None:
        raise NotFound(f"no item with id {after!r} to page after", param="after")
    return row


def _notify(cluster: dict, event: str) -> None:
    for listener in listeners:
        listener(cluster, event)


def update_cluster(cluster_id: str, *, unit_count: int | None = None, name: str | None = None) -> dict:
    """Rename or resize a cluster. A HOSTING cluster's serving runtime adds replicas or drains some (requests in
    flight finish) before this returns; its usage span closes and a new one opens at the new unit count (the
    creation commitment stays on the first span, so resizing never bills a second minimum)."""
    if unit_count is not None and (not isinstance(unit_count, int) or not 1 <= unit_count <= MAX_UNIT_COUNT):
        raise GraftError(f"unit_count must be an integer from 1 to {MAX_UNIT_COUNT}", param="unit_count")
    with session() as s:
        c = get_cluster_row(s, cluster_id)
        if c.project_id is None and scope.current() is not None:
            raise Conflict(f"cluster {c.id} is the instance's shared local fine-tuning cluster; projects use it "
                           "but cannot change it", param="dedicated_ai_cluster_id", code="cluster_shared")
        if name is not None:
            c.name = name
        if unit_count is not None and unit_count != c.unit_count:
            c.unit_count = unit_count
            if c.type == "HOSTING":
                metering.close_spans(s, cluster_id=c.id)
                s.flush()
                metering.open_span(s, c, minimum_unit_hours=0.0)
        s.flush()
        out = cluster_to_dict(c, used_capacity(s, c.id))
    _notify(out, "updated")
    return out


def delete_cluster(cluster_id: str) -> dict:
    with session() as s:
        c = get_cluster_row(s, cluster_id)
        if c.project_id is None and scope.current() is not None:
            raise Conflict(f"cluster {c.id} is the instance's shared local fine-tuning cluster; projects use it "
                           "but cannot delete it", param="dedicated_ai_cluster_id", code="cluster_shared")
        if used_capacity(s, c.id):
            raise Conflict(f"cluster {cluster_id} still has endpoints; delete them first",
                           param="dedicated_ai_cluster_id", code="cluster_in_use")
        c.lifecycle_state = "DELETED"
        c.deleted_at = now()
        metering.close_spans(s, cluster_id=c.id)
        out = cluster_to_dict(c)
    _notify(out, "deleted")  # returns once the serving runtime has stopped its engine
    return out
