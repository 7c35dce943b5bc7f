"""GET /v1/models in OpenAI shape; custom models name their base model in `parent`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from graftlm.models import catalog

router = APIRouter()


def openai_model(m: dict) -> dict:
    return {"id": m["id"], "object": "model", "created": m["created_at"], "owned_by": "graftlm",
            "parent": m["parent"], "root": m["parent"] or m["id"], "kind": m["kind"],
            "context_length": m["context_length"], "parameter_count": m["parameter_count"]}


@router.get("/models")
async def list_models():
    models = await run_in_threadpool(catalog.list_models)
    return {"object": "list", "data": [openai_model(m) for m in models], "has_more": False}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str):
    return openai_model(await run_in_threadpool(catalog.get_model, model_id))


@router.delete("/models/{model_id:path}")
async def delete_model(model_id: str):
    """A custom model with its checkpoints and training directory (the bytes are removed from disk)."""
    from graftlm.models.deletion import delete_model as delete

    return await run_in_threadpool(delete, model_id)
