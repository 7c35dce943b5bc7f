"""Bounds on what one request may make the server do: the body size (413).

A JSON body over GRAFT_MAX_REQUEST_BYTES is refused from its Content-Length before any of it is read, or,
for a chunked body, as soon as the bytes read pass the limit; multipart uploads are bounded by
GRAFT_MAX_UPLOAD_BYTES instead (the files route checks them, the blob store counts the bytes). Prompts too
long for the context are refused before tokenizing by ``Engine.check_prompt_chars``.
"""

from __future__ import annotations

import json

from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from graftlm.config import get_settings

_CLOSE = {"Connection": "close"}  # the rest of the body is not read: the connection cannot be reused


def too_large_message(size: str, limit: int) -> str:
    return (f"request body of {size} exceeds the limit of {limit} bytes (GRAFT_MAX_REQUEST_BYTES); "
            "send less, or upload large data as a file")


class BodyLimit:
    """Pure ASGI middleware: 413 in the OpenAI error shape for a non-multipart body over the limit."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or _content_type(scope).startswith("multipart/form-data"):
            return await self.app(scope, receive, send)
        limit = get_settings().max_request_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            body = {"error": {"message": too_large_message(f"{declared} bytes", limit),
                              "type": "invalid_request_error", "param": None, "code": "request_too_large"}}
            return await JSONResponse(body, status_code=413, headers=_CLOSE)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, too_large_message(f"more than {limit} bytes", limit), headers=_CLOSE)
            return message

        await self.app(scope, counted, send)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _content_type(scope) -> str:
    return (_header(scope, b"content-type") or "").lower()


def _content_length(scope) -> int | None:
    try:
        return int(_header(scope, b"content-length") or "")
    except ValueError:
        return None


class JSONInThreadRoute(APIRoute):
    """A route whose JSON body is parsed on a worker thread: a 4 MiB body of small objects takes ~0.2 s to
    parse, which on the event loop would stall every other request (and /healthz) meanwhile. FastAPI reuses
    the parsed body (Starlette caches it on the request); a body that fails to parse is parsed again by
    FastAPI, which fails at the same early place and answers 400."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def parsed_in_thread(request: Request):
            if "json" in request.headers.get("content-type", ""):
                body = await request.body()
                if body:
                    try:
                        request._json = await run_in_threadpool(json.loads, body)
                    except Exception:  # noqa: BLE001 - FastAPI reports it (400)
                        pass
            return await handler(request)

        return parsed_in_thread
