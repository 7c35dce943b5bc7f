"""Look rows up by a unique id prefix, as docker and git do (for the CLI, where ids get truncated)."""

from __future__ import annotations

from sqlalchemy import select

from graftlm.errors import GraftError, NotFound
from graftlm.store.db import session

MIN_PREFIX = 3  # shorter prefixes match too much to be meant


def resolve_prefix(model, prefix: str, *, what: str, param: str, where=None) -> str:
    """The id of the one row of ``model`` whose id is ``prefix`` or starts with it; NotFound for none,
    a 400 listing the matches for several. ``where`` narrows the rows (e.g. not deleted)."""
    with session() as s:
        if s.get(model, prefix) is not None:
            return prefix
        if len(prefix) < MIN_PREFIX:
            raise NotFound(f"no {what} with id {prefix!r}", param=param)
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = select(model.id).where(model.id.like(f"{escaped}%", escape="\\"))
        if where is not None:
            q = q.where(where)
        ids = sorted(s.scalars(q.limit(11)))
    if not ids:
        raise NotFound(f"no {what} with id {prefix!r} or an id starting with it", param=param)
    if len(ids) > 1:
        shown = ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")
        raise GraftError(f"{prefix!r} is the start of several {what} ids ({shown}); give more of the id",
                         param=param, code="ambiguous_id")
    return ids[0]
