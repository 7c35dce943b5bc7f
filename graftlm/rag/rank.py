"""Second-stage ranking over the first stage's top N.

A ranker is one of:
- the name of a registered local cross-encoder (sentence-transformers ``CrossEncoder`` from a path);
- a callable ``score_fn(query, texts) -> list[float]`` (higher is better), e.g. an LLM pointwise
  yes/no scorer built with :func:`llm_yes_no_scorer`;
- ``"cosine"``: the bi-encoder's cosine between query and chunk;
- ``"mmr"``: maximal marginal relevance over the bi-encoder vectors (relevance traded for diversity).

With nothing registered or set, :data:`BUILTIN_DEFAULT` is used, so ``rerank=True`` always works; the
search results say which ranker ran in their ``"ranker"`` field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from graftlm.errors import GraftError, NotFound

ScoreFn = Callable[[str, list[str]], list[float]]
BUILTIN = ("cosine", "mmr")
BUILTIN_DEFAULT = "cosine"
MMR_LAMBDA = 0.7

YES_NO_PROMPT = ("Judge whether the passage helps answer the question. Answer with one word, yes or no.\n\n"
                 "Question: {query}\n\nPassage: {text}\n\nDoes the passage help answer the question?")

_cross_encoders: dict[str, Path] = {}
_default: str | ScoreFn | None = None


def register_cross_encoder(name: str, path: str | Path, *, default: bool = True) -> None:
    """A local CrossEncoder directory, usable as ``ranker=name``; the default ranker unless default=False."""
    global _default
    path = Path(path)
    if not (path / "config.json").exists():
        raise GraftError(f"{path} is not a cross-encoder model directory (no config.json)", param="path")
    if name in BUILTIN:
        raise GraftError(f"{name!r} is a built-in ranker name", param="name")
    _cross_encoders[name] = path.resolve()
    if default:
        _default = name


def set_default_ranker(ranker: str | ScoreFn | None) -> None:
    """Ranker used by ``rerank=True`` when a search names none; None restores the built-in default."""
    global _default
    if isinstance(ranker, str):
        resolve(ranker)
    _default = ranker


def list_rankers() -> list[str]:
    return [*BUILTIN, *sorted(_cross_encoders)]


def _cross_encoder_fn(name: str) -> ScoreFn:
    model = _load_cross_encoder(str(_cross_encoders[name]))

    def score(query: str, texts: list[str]) -> list[float]:
        return [float(s) for s in model.predict([(query, t) for t in texts], show_progress_bar=False)]

    return score


_ce_cache: dict[str, object] = {}


def _load_cross_encoder(path: str):
    from sentence_transformers import CrossEncoder

    if path not in _ce_cache:
        _ce_cache[path] = CrossEncoder(path, device="cpu", local_files_only=True)
    return _ce_cache[path]


def resolve(ranker: str | ScoreFn | None) -> tuple[str, ScoreFn | None]:
    """(name, score_fn); score_fn is None for the built-in rankers, which work on vectors."""
    ranker = ranker if ranker is not None else (_default if _default is not None else BUILTIN_DEFAULT)
    if callable(ranker):
        return getattr(ranker, "ranker_name", getattr(ranker, "__name__", "score_fn")), ranker
    if ranker in BUILTIN:
        return ranker, None
    if ranker in _cross_encoders:
        return f"cross-encoder:{ranker}", _cross_encoder_fn(ranker)
    if ranker.startswith("llm:") and len(ranker) > 4:  # a hosted model as a yes/no judge
        from graftlm.rag.llm_rank import llm_ranker

        return ranker, llm_ranker(ranker[4:])
    raise NotFound(f"ranker {ranker!r} is not registered; known: {', '.join(list_rankers())}, llm:<model>",
                   param="ranker")


def llm_yes_no_scorer(yes_probability: Callable[[str], float], *, prompt: str = YES_NO_PROMPT) -> ScoreFn:
    """Pointwise LLM relevance: P("yes") for a yes/no prompt per passage; plug in any model."""
    def llm_yes_no(query: str, texts: list[str]) -> list[float]:
        return [float(yes_probability(prompt.format(query=query, text=t))) for t in texts]

    llm_yes_no.ranker_name = "llm-yes-no"
    return llm_yes_no


def mmr(query_vector: np.ndarray, vectors: np.ndarray, *, top_k: int, lambda_: float = MMR_LAMBDA) -> list[int]:
    """Indices picked greedily by lambda * cos(q, d) - (1 - lambda) * max cos(d, picked); unit vectors."""
    if len(vectors) == 0:
        return []
    relevance = vectors @ query_vector
    similarity = vectors @ vectors.T
    picked: list[int] = []
    redundancy = np.full(len(vectors), -np.inf)
    left = np.ones(len(vectors), dtype=bool)
    while len(picked) < min(top_k, len(vectors)):
        score = lambda_ * relevance - (1 - lambda_) * redundancy if picked else relevance
        score = np.where(left, score, -np.inf)
        i = int(np.argmax(score))
        picked.append(i)
        left[i] = False
        redundancy = np.maximum(redundancy, similarity[i])
    return picked


def rerank(query: str, candidates: list[dict], *, ranker: str | ScoreFn | None = None, top_k: int = 10,
           query_vector: np.ndarray | None = None, vectors: np.ndarray | None = None) -> tuple[list[dict], str]:
    """Reorder candidates (dicts with "text") and keep top_k; returns (results, ranker name).

    The built-in rankers need ``query_vector`` and ``vectors`` (one unit row per candidate).
    """
    name, score_fn = resolve(ranker)
    if not candidates:
        return [], name
    if score_fn is not None:
        scores = list(score_fn(query, [c["text"] for c in candidates]))
        if len(scores) != len(candidates):
            raise GraftError(f"ranker {name!r} returned {len(scores)} scores for {len(candidates)} passages")
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])[:top_k]
    elif name == "cosine":
        scores = (vectors @ query_vector).tolist()
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])[:top_k]
    else:
        order = mmr(query_vector, vectors, top_k=top_k)
        scores = [0.0] * len(candidates)
        for rank, i in enumerate(order):
            scores[i] = 1.0 / (rank + 1)
    return [{**candidates[i], "score": float(scores[i]), "ranker": name} for i in order], name
