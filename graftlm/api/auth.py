"""Bearer-key authentication for every route but /healthz."""

from __future__ import annotations

from fastapi import Request

from graftlm.errors import GraftError
from graftlm.keys.service import check_key


class Unauthorized(GraftError):
    status_code = 401
    error_type = "authentication_error"


async def require_key(request: Request) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` "
                           "(the admin key is in GRAFT_HOME/admin.key)", code="missing_api_key")
    if not check_key(token.strip()):
        raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
