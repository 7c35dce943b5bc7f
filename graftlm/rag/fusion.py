"""Reciprocal rank fusion: combine ranked lists by rank alone, so scores on different scales mix."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

from graftlm.errors import GraftError

HYBRID_LISTS = ("keyword", "dense")


def rrf(rankings: Mapping[str, Sequence[Hashable]], *, k: int = 60,
        weights: Mapping[str, float] | None = None) -> list[tuple[Hashable, float]]:
    """score(d) = sum over lists m of weights[m] / (k + rank_m(d)), ranks starting at 1.

    Returns (item, score) best first; ties go to the item seen earliest in the first lists.
    """
    if k < 0:
        raise ValueError("rrf k must be >= 0")
    weights = weights or {}
    scores: dict[Hashable, float] = {}
    for name, ranked in rankings.items():
        w = float(weights.get(name, 1.0))
        for rank, item in enumerate(ranked, start=1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def check_fusion(rrf_k, weights) -> dict[str, float]:
    """A GraftError naming the bad value unless ``rrf_k`` is an integer >= 0 and ``weights`` maps "keyword"
    and/or "dense" to finite numbers >= 0, at least one of them positive (a missing list weighs 1)."""
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
        raise GraftError(f"rrf_k must be an integer >= 0 (got {rrf_k!r}); 60 is the usual choice", param="rrf_k")
    weights = {} if weights is None else weights
    if not isinstance(weights, Mapping):
        raise GraftError("weights must be an object like {\"keyword\": 1.0, \"dense\": 0.5}", param="weights")
    for name, w in weights.items():
        if name not in HYBRID_LISTS:
            raise GraftError(f"weights: unknown list {name!r}; use \"keyword\" and/or \"dense\"", param="weights")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise GraftError(f"weights.{name} must be a finite number >= 0 (got {w!r})", param="weights")
    if all(float(weights.get(name, 1.0)) == 0 for name in HYBRID_LISTS):
        raise GraftError("weights: at least one of keyword and dense must be > 0", param="weights")
    return {name: float(w) for name, w in weights.items()}
