"""The HTTP server: one FastAPI app, routers per concern, auth on everything but /healthz."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager, suppress

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from graftlm import __version__
from graftlm.files import service as file_store
from graftlm.keys import audit
from graftlm.api.auth import policy, require_key
from graftlm.api.errors import install_error_handlers, unexpected_error
from graftlm.api.openapi import install_openapi
from graftlm.api.limits import BodyLimit
from graftlm.api.observing import INFERENCE_PATHS, count_unobserved
from graftlm.api.routes import clusters, console, files, fine_tuning, inference, models, projects
from graftlm.api.routes import observe as observe_api
from graftlm.api.routes import evals as evals_api
from graftlm.api.routes import rag as rag_api
from graftlm.store.db import upgrade

log = logging.getLogger("graftlm.api")


def create_app(run_scheduler: bool = True) -> FastAPI:
    upgrade()  # the server brings the schema up to date on start

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler = None
        if run_scheduler:
            from graftlm.jobs.scheduler import Scheduler

            scheduler = Scheduler()
            scheduler.start()
        revalidation = start_revalidation()
        from graftlm.config import get_settings
        from graftlm.observe import logs

        stop_sweeper = logs.start_sweeper(get_settings().log_sweep_interval_s)
        yield
        stop_sweeper.set()
        logs.flush()
        if scheduler:
            scheduler.stop()
        if revalidation:
            revalidation.join(timeout=5)
        from graftlm.clusters.hosting import shutdown_runtime

        shutdown_runtime()

    # The built-in docs routes would bypass the key check; the schema is served behind it below.
    app = FastAPI(title="graftlm", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        request.state.request_id = rid
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as e:  # noqa: BLE001 - answered here, so the server keeps the keep-alive connection open
            response = unexpected_error(rid, e)
        response.headers["x-request-id"] = rid
        response = await audit_request(request, response)
        if request.url.path in INFERENCE_PATHS:
            count_unobserved(request, response.status_code)
        log.info("%s %s %s %d %.1fms", rid, request.method, request.url.path, response.status_code,
                 (time.perf_counter() - start) * 1000)
        return response

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "version": __version__}

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_key)])
    async def openapi_schema():
        return app.openapi()

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
    modules = (files, models, clusters, fine_tuning, inference, rag_api, evals_api, console, observe_api, projects)
    for module in modules:
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(observe_api.metrics_router)
    # the policy (api.auth) is keyed by each route's full path template, e.g. /v1/files/{file_id}
    # (as the OpenAPI schema writes it: /v1/models/{model_id}, not {model_id:path})
    templates = {r.endpoint: r.path for r in app.routes if hasattr(r, "endpoint")}
    templates |= {r.endpoint: v1.prefix + r.path for m in modules for r in m.router.routes}
    templates |= {r.endpoint: r.path for r in observe_api.metrics_router.routes}
    app.state.route_templates = {e: re.sub(r"\{(\w+):\w+\}", r"{\1}", p) for e, p in templates.items()}
    install_openapi(app)
    console.mount(app)  # the web UI's static files; its data calls are /v1 routes above
    return app


MAX_AUDITED_BODY = 1 << 20  # a mutating answer's JSON read for the id it created (answers are small)


async def audit_request(request: Request, response: Response) -> Response:
    """One audit event for a mutating route's request, and for any request refused for its key (401/403);
    the resource is the route's path ids, or the ``id`` of what a create answered."""
    info = getattr(request.state, "audit", None)
    if info is None:  # no route matched, or a route without the key check (/healthz, the console's files)
        return response
    denied = response.status_code in (401, 403)
    if not (denied or policy(request.method, info["route"]).mutating):
        return response
    params = request.scope.get("path_params") or {}
    resource = "/".join(str(v) for v in params.values()) or None
    if resource is None and response.status_code < 300 and \
            response.headers.get("content-type", "").startswith("application/json"):
        body = b"".join([chunk async for chunk in response.body_iterator])
        response = Response(body, status_code=response.status_code, headers=dict(response.headers),
                            background=response.background)
        if len(body) <= MAX_AUDITED_BODY:
            with suppress(ValueError, AttributeError, TypeError):
                resource = orjson.loads(body).get("id")
                resource = str(resource) if resource is not None else None
    client = request.client.host if request.client else None
    try:
        await run_in_threadpool(lambda: audit.record(
            action=f"{request.method} {info['route']}", status=response.status_code, key_id=info.get("key_id"),
            project=info.get("project"), role=info.get("role"), resource_id=resource, client=client,
            request_id=getattr(request.state, "request_id", None)))
    except Exception as e:  # noqa: BLE001 - the request itself is done; say loudly that its audit event is not
        log.error("could not record the audit event of %s %s: %s", request.method, request.url.path, e)
    return response


def start_revalidation() -> threading.Thread | None:
    """Finish files a previous server left `uploaded`, in the background so startup does not wait."""
    file_ids = file_store.unfinished_file_ids()
    if not file_ids:
        return None
    log.info("revalidating %d file(s) left unvalidated by a previous run", len(file_ids))
    thread = threading.Thread(target=file_store.finish_unfinished_files, args=(file_ids,),
                              name="graftlm-revalidate", daemon=True)
    thread.start()
    return thread
