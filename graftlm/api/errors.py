"""Every failure leaves as an OpenAI-shaped error; bad input is a 4xx, never a 500."""

from __future__ import annotations

import errno
import logging
import shutil

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from graftlm.config import get_settings
from graftlm.errors import GraftError

log = logging.getLogger("graftlm.api")


def error_body(message: str, *, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "bytes"}


def _is_union_tag(part: str) -> bool:
    """pydantic names the branch of a union in the location (``str``, ``list[ContentPart]``): not a field."""
    return part in _TYPE_TAGS or any(c in part for c in "[-(") or part[:1].isupper()


def _loc_to_param(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(p for p in parts if not _is_union_tag(p)) or None


def _most_specific(errors: list[dict]) -> dict:
    """Of a union's errors, the one from the branch that got furthest (the list, not the string), and of
    those a broken constraint rather than a wrong type (the branch the client meant)."""
    if not errors:
        return {"loc": (), "msg": "invalid request"}
    return max(errors, key=lambda e: (len(e.get("loc", ())), not str(e.get("type", "")).endswith("_type")))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GraftError)
    async def graft_error(request: Request, exc: GraftError):
        headers = {"Retry-After": str(getattr(exc, "retry_after", 1))} if exc.status_code == 429 else None
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = _most_specific(exc.errors())
        param = _loc_to_param(first.get("loc", ()))
        msg = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body(msg, type_="invalid_request_error", param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(getattr(exc, "body", None), dict):  # limits.TooLarge: already in the error shape
            return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_=type_), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return unexpected_error(getattr(request.state, "request_id", "-"), exc)


def internal_error(rid: str) -> JSONResponse:
    return JSONResponse(error_body(f"internal error (request id {rid})", type_="server_error"), status_code=500)


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_MESSAGES = ("database or disk is full", "no space left on device", "disk quota exceeded")


def storage_full(exc: BaseException) -> bool:
    """Whether the failure is the disk (or quota) being full, anywhere down the chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if any(m in str(exc).lower() for m in _FULL_MESSAGES):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__  # SQLAlchemy keeps the DBAPI error in .orig
    return False


def insufficient_storage(rid: str) -> JSONResponse:
    home = get_settings().home
    try:
        free = f"{shutil.disk_usage(home).free} bytes free"
    except OSError:
        free = "free space unknown"
    message = (f"the disk holding GRAFT_HOME ({home}) is full ({free}); nothing was stored. Free some space "
               f"or move GRAFT_HOME to a larger disk, then retry (request id {rid})")
    return JSONResponse(error_body(message, type_="server_error", code="insufficient_storage"), status_code=507)


def unexpected_error(rid: str, exc: BaseException) -> JSONResponse:
    """The answer to an exception no handler knew: 507 when the disk is full, else a logged 500."""
    if storage_full(exc):
        log.error("request %s: disk full (%s: %s)", rid, type(exc).__name__, exc)
        return insufficient_storage(rid)
    log.error("request %s failed", rid, exc_info=exc)
    return internal_error(rid)
