"""API keys: random secrets shown once, stored as sha256 hashes."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from sqlalchemy import select

from graftlm.config import get_settings
from graftlm.errors import GraftError, NotFound
from graftlm.store.db import session
from graftlm.store.models import ApiKey, new_id, now


# metrics reads GET /metrics only (for a Prometheus scraper); viewer reads every /v1 route (and /metrics);
# editor also creates, runs and changes; admin also manages keys (the CLI, for now)
ROLES = ("metrics", "viewer", "editor", "admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key_dict(k: ApiKey) -> dict:
    return {"id": k.id, "name": k.name, "prefix": k.prefix, "is_admin": k.is_admin, "role": k.role,
            "created_at": k.created_at, "revoked_at": k.revoked_at}


def create_key(name: str, *, is_admin: bool = False, role: str | None = None,
               secret: str | None = None) -> tuple[str, dict]:
    """Returns (the secret, shown once; its record). The role defaults to admin for an admin key, else editor."""
    role = role or ("admin" if is_admin else "editor")
    if role not in ROLES:
        raise GraftError(f"role must be one of {', '.join(ROLES)}", param="role")
    secret = secret or "gk-" + secrets.token_urlsafe(32)
    with session() as s:
        k = ApiKey(id=new_id("key"), name=name, prefix=secret[:8], key_hash=hash_key(secret),
                   is_admin=is_admin or role == "admin", role=role)
        s.add(k)
        s.flush()
        return secret, _key_dict(k)


def list_keys() -> list[dict]:
    with session() as s:
        return [_key_dict(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at))]


def revoke_key(key_id: str) -> dict:
    with session() as s:
        k = s.get(ApiKey, key_id)
        if k is None:
            raise NotFound(f"no API key with id {key_id!r}", param="key_id")
        k.revoked_at = k.revoked_at or now()
        return _key_dict(k)


def key_identity(secret: str) -> dict | None:
    """{"id", "name", "role"} of a valid key, None for an unknown or revoked one."""
    admin = get_settings().admin_key
    if admin and secrets.compare_digest(secret, admin):
        return {"id": "admin", "name": "GRAFT_ADMIN_KEY", "role": "admin"}
    with session() as s:
        k = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
        if k is None or k.revoked_at is not None:
            return None
        return {"id": k.id, "name": k.name, "role": k.role}


def check_key(secret: str) -> bool:
    return key_identity(secret) is not None


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
