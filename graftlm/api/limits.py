"""Bounds on what one request may make the server do: its body size (413), and JSON parsed off the event loop.

A JSON body over GRAFT_MAX_REQUEST_BYTES is refused from its Content-Length before any of it is read, or,
for a chunked body, as soon as the bytes read pass the limit; a multipart upload is bounded the same way by
GRAFT_MAX_UPLOAD_BYTES (plus room for its framing; the blob store counts the file's own bytes). Prompts too
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
# Room for the multipart framing around a file (boundaries, part headers, the purpose field), so a file just
# under the upload limit is not refused for its envelope.
MULTIPART_ALLOWANCE = 64 * 1024


class Limit:
    """The byte limit for one request's body and how to say it was passed."""

    def __init__(self, multipart: bool):
        settings = get_settings()
        if multipart:  # an upload: the file limit, plus its envelope
            self.shown, self.setting, self.param, self.code = settings.max_upload_bytes, "GRAFT_MAX_UPLOAD_BYTES", \
                "file", "file_too_large"
            self.bytes = self.shown + MULTIPART_ALLOWANCE
        else:
            self.shown = self.bytes = settings.max_request_bytes
            self.setting, self.param, self.code = "GRAFT_MAX_REQUEST_BYTES", None, "request_too_large"

    def message(self, size: str) -> str:
        advice = ("raise it to accept larger files" if self.param == "file"
                  else "send less, or upload large data as a file")
        return f"request body of {size} exceeds the limit of {self.shown} bytes ({self.setting}); {advice}"

    def error(self, size: str) -> dict:
        return {"error": {"message": self.message(size), "type": "invalid_request_error", "param": self.param,
                          "code": self.code}}


class TooLarge(HTTPException):
    def __init__(self, limit: Limit, size: str):
        super().__init__(413, limit.message(size), headers=_CLOSE)
        self.body = limit.error(size)


class BodyLimit:
    """Pure ASGI middleware: 413 in the OpenAI error shape for a non-multipart body over the limit."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = Limit(_content_type(scope).startswith("multipart/form-data"))
        declared = _content_length(scope)
        if declared is not None and declared > limit.bytes:
            return await JSONResponse(limit.error(f"{declared} bytes"), status_code=413,
                                      headers=_CLOSE)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit.bytes:
                    raise TooLarge(limit, f"more than {limit.bytes} bytes")
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
