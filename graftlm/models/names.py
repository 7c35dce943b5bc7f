"""Closest-name suggestions for errors ("did you mean cs-base?")."""

from __future__ import annotations

import difflib


def closest(name: str, candidates) -> str | None:
    """The candidate nearest to ``name`` (difflib ratio >= 0.6), or None."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates) -> str:
    """' Did you mean 'x'?' or ''."""
    best = closest(name, candidates)
    return f" Did you mean {best!r}?" if best else ""
