"""OpenAI Files API: upload (streamed), list, retrieve, content, delete."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from graftlm.errors import GraftError
from graftlm.files import service as files

router = APIRouter()  # upload sizes: api.limits.BodyLimit (declared and streamed) and the blob store
UPLOAD_FIELDS = {"file", "purpose", "data_policy"}


@router.post("/files")
async def upload_file(request: Request, background: BackgroundTasks, file: UploadFile = File(...),
                      purpose: str = Form(...), data_policy: str | None = Form(None)):
    """``data_policy`` (fine-tune files): warn (default), redact or reject; see files.service.create_file."""
    for name in (await request.form()).keys():  # parsed once already; a misspelt data_policy must not pass
        if name not in UPLOAD_FIELDS:
            raise GraftError(f"unknown form field {name!r}; an upload has {', '.join(sorted(UPLOAD_FIELDS))}",
                             param=name)
    record = await run_in_threadpool(files.create_file, file.file, file.filename or "upload.jsonl", purpose,
                                     data_policy=data_policy)
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
