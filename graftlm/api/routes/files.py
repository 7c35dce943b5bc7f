"""OpenAI Files API: upload (streamed), list, retrieve, content, delete."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute

from graftlm.files import service as files
from graftlm.config import get_settings
from graftlm.errors import GraftError

# Room for the multipart framing around the file (boundaries, part headers, the purpose field),
# so a file just under the limit is not refused for its envelope; put_file still checks the bytes.
MULTIPART_ALLOWANCE = 64 * 1024


def declared_length(request: Request) -> int | None:
    """The request's Content-Length, or None when absent or malformed (chunked bodies have none)."""
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


def check_declared_size(request: Request) -> None:
    """Refuse a body whose Content-Length is already over the upload limit, before reading any of it."""
    declared = declared_length(request)
    limit = get_settings().max_upload_bytes
    if declared is not None and declared > limit + MULTIPART_ALLOWANCE:
        raise GraftError(f"request body of {declared} bytes exceeds the upload limit of {limit} bytes; "
                         "raise GRAFT_MAX_UPLOAD_BYTES to accept larger files", param="file",
                         code="file_too_large", status_code=413)


class SizeCheckedRoute(APIRoute):
    """A route that checks Content-Length before FastAPI reads and parses the body."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def checked(request: Request):
            check_declared_size(request)
            return await handler(request)

        return checked


router = APIRouter(route_class=SizeCheckedRoute)  # only uploads have bodies to check


@router.post("/files")
async def upload_file(background: BackgroundTasks, file: UploadFile = File(...), purpose: str = Form(...)):
    record = await run_in_threadpool(files.create_file, file.file, file.filename or "upload.jsonl", purpose)
    if purpose == "fine-tune":
        background.add_task(files.validate_in_background, record["id"])
    else:
        record = await run_in_threadpool(files.mark_processed, record["id"])
    return record


@router.get("/files")
async def list_files(after: str | None = None, limit: int = 100, purpose: str | None = None):
    return await run_in_threadpool(files.list_files, after=after, limit=limit, purpose=purpose)


@router.get("/files/{file_id}")
async def get_file(file_id: str):
    return await run_in_threadpool(files.get_file, file_id)


@router.get("/files/{file_id}/content")
async def file_content(file_id: str):
    chunks = await run_in_threadpool(files.iter_content, file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str):
    return await run_in_threadpool(files.delete_file, file_id)
