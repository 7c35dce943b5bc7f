"""API keys: random secrets shown once, stored as sha256 hashes. Each key belongs to one project with a role and
may expire; the instance admin key (``is_admin``: GRAFT_ADMIN_KEY or GRAFT_HOME/admin.key) manages projects and
acts in any of them."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from sqlalchemy import select

from graftlm.config import get_settings
from graftlm.errors import GraftError, NotFound
from graftlm.store import scope
from graftlm.store.db import session
from graftlm.store.models import ApiKey, new_id, now


# metrics reads GET /metrics only (for a Prometheus scraper); viewer reads every /v1 route of its project (and
# /metrics); editor also creates, runs and changes; admin also manages the keys of its project
ROLES = ("metrics", "viewer", "editor", "admin")
MAX_EXPIRY_S = 10 * 365 * 86400


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key_dict(k: ApiKey) -> dict:
    return {"id": k.id, "object": "api_key", "name": k.name, "prefix": k.prefix, "project": k.project_id,
            "role": k.role, "is_admin": k.is_admin, "created_at": k.created_at, "expires_at": k.expires_at,
            "revoked_at": k.revoked_at}


def create_key(name: str, *, is_admin: bool = False, role: str | None = None, project: str | None = None,
               expires_at: int | None = None, secret: str | None = None) -> tuple[str, dict]:
    """Returns (the secret, shown once; its record). ``project`` defaults to the caller's (else ``default``);
    the role defaults to admin for the instance admin key (``is_admin``), else editor. ``expires_at``: unix
    seconds after which the key is refused (None: never)."""
    from graftlm.keys.projects import project_exists

    role = role or ("admin" if is_admin else "editor")
    if role not in ROLES:
        raise GraftError(f"role must be one of {', '.join(ROLES)}", param="role")
    project = project or scope.project_for_new_rows()
    if not project_exists(project):
        raise NotFound(f"no project {project!r}; the instance admin creates it with POST /v1/projects "
                       "(graft projects create)", param="project")
    if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, int)
                                   or not now() < expires_at <= now() + MAX_EXPIRY_S):
        raise GraftError("expires_at must be unix seconds in the future, at most 10 years ahead", param="expires_at")
    if name is None or not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise GraftError("name must be 1-200 characters", param="name")
    secret = secret or "gk-" + secrets.token_urlsafe(32)
    with session() as s:
        k = ApiKey(id=new_id("key"), name=name, prefix=secret[:8], key_hash=hash_key(secret), is_admin=is_admin,
                   role=role, project_id=project, expires_at=expires_at)
        s.add(k)
        s.flush()
        return secret, _key_dict(k)


def list_keys(project: str | None = None) -> list[dict]:
    """The keys of ``project`` (default: the caller's; every key when neither is set: the CLI on the machine)."""
    with session() as s, scope.acting_in(project or scope.current()):
        return [_key_dict(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))]


def revoke_key(key_id: str, project: str | None = None) -> dict:
    with session() as s, scope.acting_in(project or scope.current()):
        k = s.get(ApiKey, key_id)
        if k is None:
            raise NotFound(f"no API key with id {key_id!r}", param="key_id")
        k.revoked_at = k.revoked_at or now()
        return _key_dict(k)


def key_identity(secret: str) -> dict | None:
    """{"id", "name", "role", "project", "instance_admin", "expired"} of a known, unrevoked key; None for an
    unknown or revoked one. The instance admin key's project is None (it acts in the one the request names)."""
    admin = get_settings().admin_key
    if admin and secrets.compare_digest(secret, admin):
        return {"id": "admin", "name": "GRAFT_ADMIN_KEY", "role": "admin", "project": None, "instance_admin": True,
                "expired": False}
    with session() as s, scope.unconfined():
        k = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
        if k is None or k.revoked_at is not None:
            return None
        return {"id": k.id, "name": k.name, "role": k.role, "project": None if k.is_admin else k.project_id,
                "instance_admin": bool(k.is_admin), "expired": k.expires_at is not None and k.expires_at <= now()}


def check_key(secret: str) -> bool:
    identity = key_identity(secret)
    return identity is not None and not identity["expired"]


def ensure_admin_key() -> str | None:
    """On first start without GRAFT_ADMIN_KEY: create an admin key, save it (mode 600), return it once."""
    settings = get_settings()
    if settings.admin_key:
        return None
    path: Path = settings.home / "admin.key"
    if path.exists():
        return None
    secret, _ = create_key("admin", is_admin=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
