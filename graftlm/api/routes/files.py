"""OpenAI Files API: upload (streamed), list, retrieve, content, delete."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from graftlm.files import service as files

router = APIRouter()  # upload sizes: api.limits.BodyLimit (declared and streamed) and the blob store


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
