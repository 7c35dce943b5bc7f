"""The HTTP server: one FastAPI app, routers per concern, auth on everything but /healthz."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request

from graftlm import __version__
from graftlm.files import service as file_store
from graftlm.api.auth import require_key
from graftlm.api.errors import install_error_handlers, unexpected_error
from graftlm.api.openapi import install_openapi
from graftlm.api.limits import BodyLimit
from graftlm.api.observing import INFERENCE_PATHS, count_unobserved
from graftlm.api.routes import clusters, console, files, fine_tuning, inference, models
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
    for module in (files, models, clusters, fine_tuning, inference, rag_api, evals_api, console, observe_api):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(observe_api.metrics_router)
    install_openapi(app)
    console.mount(app)  # the web UI's static files; its data calls are /v1 routes above
    return app


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
