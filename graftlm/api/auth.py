"""Bearer-key authentication for every route but /healthz, and the one role check every route goes through."""

from __future__ import annotations

from fastapi import Request

from graftlm.errors import GraftError
from graftlm.keys.service import ROLES, key_identity

READ_METHODS = {"GET", "HEAD", "OPTIONS"}


class Unauthorized(GraftError):
    status_code = 401
    error_type = "authentication_error"


class Forbidden(GraftError):
    status_code = 403
    error_type = "permission_error"


def required_role(method: str, path: str) -> str:
    """The policy: reading needs a viewer key; anything else (create, run, change, delete) an editor key;
    ``GET /metrics`` any key (a ``metrics`` key reads nothing else)."""
    if path == "/metrics" and method.upper() in READ_METHODS:
        return "metrics"
    return "viewer" if method.upper() in READ_METHODS else "editor"


def has_role(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


async def require_key(request: Request) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>` "
                           "(the admin key is in GRAFT_HOME/admin.key)", code="missing_api_key")
    identity = key_identity(token.strip())
    if identity is None:
        raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
    needed = required_role(request.method, request.url.path)
    if not has_role(identity["role"], needed):
        raise Forbidden(f"{request.method} {request.url.path} needs a key with the {needed} role; "
                        f"this key is a {identity['role']}", code="permission_denied")
    request.state.key = identity
