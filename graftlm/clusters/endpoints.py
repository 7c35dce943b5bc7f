"""Endpoints: a named, activatable route to one model on one hosting cluster."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import select

from graftlm.clusters.clusters import (ENDPOINT_CAPACITY, LIVE_ENDPOINT_STATES, MAX_PAGE, get_cluster_row,
                                       page_anchor, used_capacity)
from graftlm.clusters.model_files import check_model_files
from graftlm.config import get_settings
from graftlm.errors import Conflict, GraftError, NotFound
from graftlm.models.catalog import get_model
from graftlm.store.db import session
from graftlm.store.models import Endpoint, new_id, now
from graftlm.store.paging import check_limit, newest_first_page


class EndpointInactive(GraftError):
    status_code = 409


# Called with the endpoint dict after it is deactivated, reactivated, updated or deleted, so the
# serving runtime can free or load adapters. Set by graftlm.clusters.hosting when it is in use.
listeners: list[Callable[[dict, str], None]] = []


def endpoint_to_dict(e: Endpoint) -> dict:
    return {"id": e.id, "object": "endpoint", "name": e.name, "model": e.model,
            "dedicated_ai_cluster_id": e.dedicated_ai_cluster_id, "lifecycle_state": e.lifecycle_state,
            "log_requests": bool(e.log_requests), "log_retention_days": e.log_retention_days,
            "created_at": e.created_at, "updated_at": e.updated_at}


MAX_RETENTION_DAYS = 3650


def _check_retention(days: int | None) -> None:
    if days is not None and (isinstance(days, bool) or not isinstance(days, int)
                             or not 1 <= days <= MAX_RETENTION_DAYS):
        raise GraftError(f"log_retention_days must be an integer from 1 to {MAX_RETENTION_DAYS}",
                         param="log_retention_days")


def _notify(endpoint: dict, event: str) -> None:
    for listener in listeners:
        listener(endpoint, event)


def _get_row(s, endpoint_id: str) -> Endpoint:
    e = s.get(Endpoint, endpoint_id)
    if e is None or e.lifecycle_state == "DELETED":
        raise NotFound(f"no endpoint with id {endpoint_id!r}", param="endpoint_id")
    return e


def _check_model_fits(cluster, model_id: str) -> dict:
    """The model runs on this cluster's base model and its files load (else a 400 naming the problem)."""
    model = get_model(model_id)
    base = model["parent"] if model["kind"] == "custom" else model["id"]
    if base != cluster.base_model:
        raise GraftError(f"model {model_id} is built on base model {base}, but cluster {cluster.id} hosts "
                         f"{cluster.base_model}; create a hosting cluster for {base}",
                         param="model", code="base_model_mismatch")
    check_model_files(model)
    return model


def _name_taken(s, name: str, exclude: str | None = None) -> bool:
    q = select(Endpoint).where(Endpoint.name == name, Endpoint.lifecycle_state.in_(LIVE_ENDPOINT_STATES))
    return any(e.id != exclude for e in s.scalars(q))


def create_endpoint(model: str, dedicated_ai_cluster_id: str, name: str | None = None, *,
                    log_requests: bool = False, log_retention_days: int | None = None) -> dict:
    """``log_requests``: store each completion (request, response, latency, tokens) for
    ``log_retention_days`` (default 30), for GET /v1/endpoints/{id}/logs, feedback and `graft data from-logs`."""
    _check_retention(log_retention_days)
    with session() as s:
        cluster = get_cluster_row(s, dedicated_ai_cluster_id)
        if cluster.type != "HOSTING":
            raise GraftError(f"cluster {cluster.id} is a {cluster.type} cluster; endpoints need a HOSTING cluster",
                             param="dedicated_ai_cluster_id")
        _check_model_fits(cluster, model)
        if used_capacity(s, cluster.id) >= ENDPOINT_CAPACITY:
            raise Conflict(f"cluster {cluster.id} already hosts {ENDPOINT_CAPACITY} endpoints "
                           f"(total_endpoint_capacity); delete one or create another hosting cluster",
                           param="dedicated_ai_cluster_id", code="endpoint_capacity_exceeded")
        eid = new_id("ep")
        name = name or eid
        if _name_taken(s, name):
            raise Conflict(f"an endpoint named {name!r} already exists", param="name", code="name_taken")
        e = Endpoint(id=eid, name=name, model=model, dedicated_ai_cluster_id=cluster.id, lifecycle_state="ACTIVE",
                     log_requests=bool(log_requests), log_retention_days=log_retention_days or 30)
        s.add(e)
        s.flush()
        out = endpoint_to_dict(e)
    _notify(out, "activated")
    return out


def get_endpoint(endpoint_id: str) -> dict:
    with session() as s:
        return endpoint_to_dict(_get_row(s, endpoint_id))


def find_endpoint(name_or_id: str) -> dict | None:
    with session() as s:
        e = s.get(Endpoint, name_or_id)
        if e is None:
            e = s.scalar(select(Endpoint).where(Endpoint.name == name_or_id,
                                                Endpoint.lifecycle_state.in_(LIVE_ENDPOINT_STATES)))
        return endpoint_to_dict(e) if e is not None and e.lifecycle_state != "DELETED" else None


def _live_endpoints(cluster_id: str | None):
    q = select(Endpoint).where(Endpoint.lifecycle_state != "DELETED")
    return q.where(Endpoint.dedicated_ai_cluster_id == cluster_id) if cluster_id else q


def list_endpoints(cluster_id: str | None = None) -> list[dict]:
    """Every live endpoint, oldest first (for the runtime and the CLI; the API pages with list_endpoints_page)."""
    with session() as s:
        q = _live_endpoints(cluster_id).order_by(Endpoint.created_at, Endpoint.id)
        return [endpoint_to_dict(e) for e in s.scalars(q)]


def list_endpoints_page(cluster_id: str | None = None, *, after: str | None = None, limit: int = 100) -> dict:
    """One page of live endpoints, newest first; `after` is the last id of the previous page."""
    check_limit(limit, MAX_PAGE)
    with session() as s:
        anchor = page_anchor(s, Endpoint, after)
        rows, more = newest_first_page(s, Endpoint, _live_endpoints(cluster_id), anchor, limit)
        return {"object": "list", "data": [endpoint_to_dict(e) for e in rows], "has_more": more}


def update_endpoint(endpoint_id: str, *, name: str | None = None, model: str | None = None,
                    log_requests: bool | None = None, log_retention_days: int | None = None) -> dict:
    _check_retention(log_retention_days)
    with session() as s:
        e = _get_row(s, endpoint_id)
        if log_requests is not None:
            e.log_requests = bool(log_requests)
        if log_retention_days is not None:
            e.log_retention_days = log_retention_days
        if name is not None:
            if _name_taken(s, name, exclude=e.id):
                raise Conflict(f"an endpoint named {name!r} already exists", param="name", code="name_taken")
            e.name = name
        if model is not None:
            _check_model_fits(get_cluster_row(s, e.dedicated_ai_cluster_id), model)
            e.model = model
        e.updated_at = now()
        out = endpoint_to_dict(e)
    _notify(out, "updated")
    return out


def _set_state(endpoint_id: str, state: str, event: str) -> dict:
    with session() as s:
        e = _get_row(s, endpoint_id)
        if state == "ACTIVE":
            check_model_files(get_model(e.model))  # its files may have gone while it was inactive
        e.lifecycle_state = state
        e.updated_at = now()
        out = endpoint_to_dict(e)
    _notify(out, event)  # returns once the serving runtime has stopped (or started) serving it
    return out


def deactivate_endpoint(endpoint_id: str) -> dict:
    return _set_state(endpoint_id, "INACTIVE", "deactivated")


def activate_endpoint(endpoint_id: str) -> dict:
    return _set_state(endpoint_id, "ACTIVE", "activated")


def delete_endpoint(endpoint_id: str) -> dict:
    out = _set_state(endpoint_id, "DELETED", "deleted")
    return {"id": out["id"], "object": "endpoint", "deleted": True}


def require_directly_servable(model: dict) -> None:
    """A request naming a custom model's id (not an endpoint) is served, OpenAI style, unless
    GRAFT_DIRECT_MODEL_CALLS is off (OCI style: custom models only through endpoints) or the model is
    disabled: it has endpoints and none of them is ACTIVE (deactivating them is the kill switch)."""
    if model["kind"] != "custom":
        return
    if not get_settings().direct_model_calls:
        raise EndpointInactive(f"custom model {model['id']} is served only through an endpoint here "
                               "(GRAFT_DIRECT_MODEL_CALLS=false); call an endpoint name instead",
                               param="model", code="direct_calls_disabled")
    with session() as s:
        states = {e.name: e.lifecycle_state for e in s.scalars(_live_endpoints(None).where(
            Endpoint.model == model["id"]))}
    if states and "ACTIVE" not in states.values():
        names = ", ".join(sorted(states))
        raise EndpointInactive(f"custom model {model['id']} is disabled: its endpoints ({names}) are all "
                               "deactivated; activate one to serve it again", param="model",
                               code="model_disabled")


def require_active(endpoint: dict) -> None:
    if endpoint["lifecycle_state"] != "ACTIVE":
        raise EndpointInactive(f"endpoint {endpoint['name']} is {endpoint['lifecycle_state']}; "
                               f"activate it with POST /v1/endpoints/{endpoint['id']}/activate",
                               param="model", code="endpoint_inactive")
