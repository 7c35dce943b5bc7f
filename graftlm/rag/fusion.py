"""Reciprocal rank fusion: combine ranked lists by rank alone, so scores on different scales mix."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence


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
