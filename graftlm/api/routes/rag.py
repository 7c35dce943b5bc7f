"""HTTP routes for RAG: knowledge bases, documents (background ingestion jobs), search, and /v1/embeddings.

Mounted under /v1. Grounded chat lives in /v1/chat/completions (``knowledge_base_id``, graftlm.rag.generate).
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from graftlm import rag
from graftlm.api.limits import JSONInThreadRoute
from graftlm.errors import GraftError
from graftlm.rag import embeddings, ingestions, rank
from graftlm.rag.loaders import load_file

router = APIRouter(route_class=JSONInThreadRoute)


class KnowledgeBaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    chunk_size: int = 250
    chunk_overlap: int = 32
    embedding_model: str | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str
    top_k: int = Field(10, ge=1, le=1000)
    mode: str = "hybrid"
    rerank: bool = False
    ranker: str | None = None  # a registered ranker, "cosine", "mmr" or "llm:<model>"
    filters: dict[str, Any] | None = None
    rrf_k: int = 60  # hybrid: score = sum of weights[list] / (rrf_k + rank in list)
    weights: dict[str, Any] | None = None  # hybrid: {"keyword": w, "dense": w}, each >= 0; a missing one is 1


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str] | list[int] | list[list[int]]
    model: str = embeddings.DEFAULT_MODEL
    encoding_format: str = "float"


def kb_object(kb_id: str) -> dict:
    return {"object": "knowledge_base", **rag.describe_kb(kb_id)}


@router.post("/knowledge_bases")
async def create_knowledge_base(body: KnowledgeBaseCreate):
    kb = await run_in_threadpool(rag.create_kb, body.name, chunk_size=body.chunk_size,
                                 chunk_overlap=body.chunk_overlap, embedding_model=body.embedding_model)
    return await run_in_threadpool(kb_object, kb.id)


@router.get("/knowledge_bases")
async def list_knowledge_bases():
    kbs = await run_in_threadpool(rag.list_kbs)
    return {"object": "list", "data": [await run_in_threadpool(kb_object, kb.id) for kb in kbs], "has_more": False}


@router.get("/knowledge_bases/{kb_id}")
async def get_knowledge_base(kb_id: str):
    return await run_in_threadpool(kb_object, kb_id)


@router.delete("/knowledge_bases/{kb_id}")
async def delete_knowledge_base(kb_id: str):
    kb = await run_in_threadpool(rag.get_kb, kb_id)
    await run_in_threadpool(rag.delete_kb, kb.id)
    return {"id": kb.id, "object": "knowledge_base", "deleted": True}


@router.post("/knowledge_bases/{kb_id}/documents")
async def add_documents(kb_id: str, request: Request):
    """JSON ``{"documents": [{"id", "text", "metadata"}]}`` or multipart files (txt, md, html, pdf, jsonl).

    A file that cannot be read is reported as failed in the job's "files" while the others are ingested.
    Returns the ingestion job at once; poll GET …/ingestions/{job_id}. ``?wait=true`` returns it finished."""
    await run_in_threadpool(rag.get_kb, kb_id)  # 404 before reading a large upload
    wait = request.query_params.get("wait", "").lower() in ("1", "true", "yes")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        groups = await _uploaded_groups(request)
    else:
        try:
            body = await request.json()
        except ValueError as e:
            raise GraftError("send JSON {\"documents\": [...]} or multipart files", param="documents") from e
        docs = body.get("documents") if isinstance(body, dict) else None
        if not isinstance(docs, list):
            raise GraftError("body must be {\"documents\": [{\"id\", \"text\", \"metadata\"}, ...]}",
                             param="documents")
        groups = [(None, docs)]
    return await run_in_threadpool(ingestions.start, kb_id, groups, wait=wait)


async def _uploaded_groups(request: Request) -> list[tuple[str, list[dict] | GraftError]]:
    """(file name, its documents) per uploaded file, or (file name, the GraftError) for one that cannot be read:
    a bad file is reported by the ingestion job, not allowed to sink the good ones."""
    form = await request.form()
    uploads = [v for _, v in form.multi_items() if hasattr(v, "filename") and hasattr(v, "read")]
    if not uploads:
        raise GraftError("no files in the upload (multipart field \"files\" or \"file\")", param="files")
    groups = []
    with tempfile.TemporaryDirectory() as tmp:
        for up in uploads:
            name = Path(up.filename or "upload.txt").name
            path = Path(tmp) / name
            path.write_bytes(await up.read())
            groups.append((name, await run_in_threadpool(_load_upload, path)))
    return groups


def _load_upload(path: Path) -> list[dict] | GraftError:
    try:
        return load_file(path)
    except GraftError as e:
        return e


@router.get("/knowledge_bases/{kb_id}/ingestions/{job_id}")
async def get_ingestion(kb_id: str, job_id: str):
    return await run_in_threadpool(ingestions.get, kb_id, job_id)


@router.get("/knowledge_bases/{kb_id}/documents")
async def list_documents(kb_id: str):
    docs = await run_in_threadpool(rag.list_documents, kb_id)
    return {"object": "list", "data": [{"object": "knowledge_base.document", **d} for d in docs], "has_more": False}


@router.delete("/knowledge_bases/{kb_id}/documents/{doc_id}")
async def delete_document(kb_id: str, doc_id: str):
    await run_in_threadpool(rag.delete_document, kb_id, doc_id)
    return {"id": doc_id, "object": "knowledge_base.document", "deleted": True}


@router.post("/knowledge_bases/{kb_id}/search")
async def search(kb_id: str, body: SearchRequest):
    hits = await run_in_threadpool(rag.search, kb_id, body.query, top_k=body.top_k, mode=body.mode,
                                   rerank=body.rerank, ranker=body.ranker, filters=body.filters,
                                   rrf_k=body.rrf_k, weights=body.weights)
    ranker = None
    if body.rerank:
        ranker = hits[0]["ranker"] if hits else rank.resolve(body.ranker)[0]
    return {"object": "list", "data": [{"object": "search_result", **h} for h in hits], "ranker": ranker}


@router.post("/embeddings")
async def create_embeddings(body: EmbeddingRequest):
    if body.encoding_format not in ("float", "base64"):
        raise GraftError("encoding_format must be \"float\" or \"base64\"", param="encoding_format")
    texts = body.input
    if isinstance(texts, list) and texts and not all(isinstance(t, str) for t in texts):
        raise GraftError("input must be text (a string or a list of strings); token-id input is not supported",
                         param="input")
    if isinstance(texts, list) and any(not t for t in texts) or texts == "":
        raise GraftError("input must not contain empty strings", param="input")
    out = await run_in_threadpool(embeddings.openai_embeddings, texts, body.model)
    if body.encoding_format == "base64":
        import numpy as np

        for item in out["data"]:
            item["embedding"] = base64.b64encode(np.asarray(item["embedding"], dtype="<f4").tobytes()).decode()
    return out
