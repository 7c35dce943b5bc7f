"""Keyset paging for OpenAI-style lists: newest first, `after` = the last id of the previous page."""

from __future__ import annotations

from graftlm.errors import GraftError


def check_limit(limit: int, most: int) -> None:
    if not 1 <= limit <= most:
        raise GraftError(f"limit must be between 1 and {most}", param="limit")


def newest_first_page(s, model, query, anchor, limit: int) -> tuple[list, bool]:
    """Rows of `query` (a select of `model`, which has created_at and id) after `anchor`, newest first."""
    query = query.order_by(model.created_at.desc(), model.id.desc())
    if anchor is not None:
        query = query.where((model.created_at < anchor.created_at)
                            | ((model.created_at == anchor.created_at) & (model.id < anchor.id)))
    rows = list(s.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit
