"""The console: its static files at /console (no data in them) and its helper routes under /v1/console
(behind the key like every /v1 route)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask

from graftlm.api.auth import has_role
from graftlm.console import STATIC_DIR, views

router = APIRouter(prefix="/console")

# Scripts and styles come from the console's own files only; data calls go to this server only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class ConsoleFiles(StaticFiles):
    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount(app: FastAPI) -> None:
    app.add_api_route("/console", lambda: RedirectResponse("/console/"), include_in_schema=False)
    app.mount("/console", ConsoleFiles(directory=STATIC_DIR, html=True), name="console")


@router.get("/whoami")
async def whoami(request: Request):
    key = request.state.key
    return {"key": key, "role": key["role"], "project": key["project"], "can_write": has_role(key["role"], "editor")}


@router.get("/files/{file_id}/report")
async def file_report(file_id: str, model: str | None = None):
    return await run_in_threadpool(views.file_report, file_id, model)


@router.get("/models")
async def models():
    return await run_in_threadpool(views.models)


@router.get("/models/{model_id:path}/archive")
async def model_archive(model_id: str):
    path, name = await run_in_threadpool(views.model_archive, model_id)
    return FileResponse(path, media_type="application/zip", filename=name,
                        background=BackgroundTask(views.remove_file, path))


@router.get("/models/{model_id:path}")
async def model_detail(model_id: str):
    return await run_in_threadpool(views.model_detail, model_id)


@router.get("/finetune_form")
async def finetune_form():
    return views.finetune_form()
