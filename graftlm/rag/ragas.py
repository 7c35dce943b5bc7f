"""RAGAS-style generation metrics (Es et al. 2023), reimplemented with a local judge and the embedding model.

- faithfulness: share of the answer's claims (its sentences) that the judge finds supported by the context;
- answer relevancy: mean cosine between the question and questions the judge writes from the answer
  (the question-answer cosine when no question comes back);
- context precision: rank-weighted share of retrieved chunks the judge finds relevant,
  Σ_k precision@k · v_k / Σ_k v_k (v_k = 1 if chunk k is relevant);
- context recall: share of the reference answer's sentences the judge can attribute to the context.

A judge is any ``judge(prompts) -> replies`` (batched); :func:`chat_judge` wraps a hosted model, tests use a
stub. Yes/no replies count as yes when their first word is "yes". A metric with nothing to judge is None.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

Judge = Callable[[list[str]], list[str]]
Embed = Callable[[list[str]], np.ndarray]

FAITHFULNESS_PROMPT = ("Context:\n{context}\n\nStatement: {statement}\n\n"
                       "Is the statement supported by the context? Answer yes or no.")
QUESTION_PROMPT = ("Write one question that the following answer responds to. Reply with the question only.\n\n"
                   "Answer: {answer}")
RELEVANCE_PROMPT = ("Question: {question}\n\nPassage: {context}\n\n"
                    "Is the passage useful to answer the question? Answer yes or no.")
ATTRIBUTION_PROMPT = ("Context:\n{context}\n\nSentence: {statement}\n\n"
                      "Can the sentence be attributed to the context? Answer yes or no.")
METRICS = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")

_CITATION = re.compile(r"\s*\[\d+(?:,\s*\d+)*\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """Claims: sentences with citation markers removed, empty ones dropped."""
    return [s.strip() for s in _SENTENCE.split(_CITATION.sub("", text or "")) if s.strip(" .!?\t")]


def is_yes(reply: str) -> bool:
    words = re.findall(r"[a-z]+", (reply or "").lower())
    return bool(words) and words[0] == "yes"


def _context(contexts: list[str]) -> str:
    return "\n\n".join(contexts)


def faithfulness(answer: str, contexts: list[str], judge: Judge) -> float | None:
    claims = sentences(answer)
    if not claims:
        return None
    replies = judge([FAITHFULNESS_PROMPT.format(context=_context(contexts), statement=c) for c in claims])
    return sum(map(is_yes, replies)) / len(claims)


def answer_relevancy(question: str, answer: str, judge: Judge, embed: Embed, *, n: int = 1) -> float | None:
    if not (answer or "").strip():
        return None
    generated = [r.strip() for r in judge([QUESTION_PROMPT.format(answer=answer)] * n) if r and r.strip()]
    vectors = _unit(embed([question, *(generated or [answer])]))
    return float(np.mean(vectors[1:] @ vectors[0]))


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def context_precision(question: str, contexts: list[str], judge: Judge) -> float | None:
    if not contexts:
        return None
    verdicts = [is_yes(r) for r in judge([RELEVANCE_PROMPT.format(question=question, context=c) for c in contexts])]
    if not any(verdicts):
        return 0.0
    hits, total = 0, 0.0
    for k, relevant in enumerate(verdicts, start=1):
        hits += relevant
        total += (hits / k) if relevant else 0.0
    return total / sum(verdicts)


def context_recall(reference: str, contexts: list[str], judge: Judge) -> float | None:
    claims = sentences(reference)
    if not claims or not contexts:
        return None
    replies = judge([ATTRIBUTION_PROMPT.format(context=_context(contexts), statement=c) for c in claims])
    return sum(map(is_yes, replies)) / len(claims)


def score(row: dict, judge: Judge, embed: Embed | None = None) -> dict:
    """One row {"question", "answer", "contexts": [str], "reference"?} -> the four metrics (None: not defined)."""
    q, a, ctx, ref = row["question"], row.get("answer") or "", row.get("contexts") or [], row.get("reference")
    return {"faithfulness": faithfulness(a, ctx, judge) if a else None,
            "answer_relevancy": answer_relevancy(q, a, judge, embed) if a and embed is not None else None,
            "context_precision": context_precision(q, ctx, judge),
            "context_recall": context_recall(ref, ctx, judge) if ref else None}


def evaluate(rows: list[dict], judge: Judge, embed: Embed | None = None) -> dict:
    """{"mean": {metric: mean over rows where defined, or None}, "per_question": [...]}."""
    per = [score(r, judge, embed) for r in rows]
    mean = {}
    for m in METRICS:
        values = [p[m] for p in per if p[m] is not None]
        mean[m] = sum(values) / len(values) if values else None
    return {"mean": mean, "per_question": per}


def chat_judge(model: str, *, max_tokens: int = 24) -> Judge:
    """A hosted model (any name /v1/chat/completions accepts) as the judge, greedy, one batch per call."""
    from graftlm.inference.service import chat_batch

    def judge(prompts: list[str]) -> list[str]:
        outs = chat_batch([(model, [{"role": "user", "content": p}]) for p in prompts], max_tokens=max_tokens)
        return [o["text"] for o in outs]

    return judge


def embedder(model: str | None = None) -> Embed:
    from graftlm.rag.embeddings import embed

    return lambda texts: embed(texts, model)
