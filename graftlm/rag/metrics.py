"""Retrieval metrics against relevance judgments (qrels): nDCG@k, recall@k, precision@k, MRR.

qrels: {query_id: {doc_id: relevance}}; a run: {query_id: [doc_id, ...] best first}. Queries without
relevant documents are skipped, as trec_eval does.
"""

from __future__ import annotations

import math
from pathlib import Path

Qrels = dict[str, dict[str, float]]


def load_qrels(path: str | Path) -> Qrels:
    """TREC ``qid 0 docid rel`` or CISI ``qid docid 0 0.0`` (every listed pair relevant)."""
    qrels: Qrels = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise ValueError(f"{path} line {lineno}: expected 4 fields, got {len(parts)}")
        if parts[1] == "0" and not _is_cisi(parts):
            qid, doc, rel = parts[0], parts[2], float(parts[3])
        else:
            qid, doc, rel = parts[0], parts[1], 1.0
        if rel > 0:
            qrels.setdefault(qid, {})[doc] = rel
    return qrels


def _is_cisi(parts: list[str]) -> bool:
    # CISI: "qid docid 0 0.0" — a float in the last field and a 0 in the third
    return parts[2] == "0" and "." in parts[3]


def dcg(gains: list[float]) -> float:
    return sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranked: list[str], relevant: dict[str, float], k: int = 10) -> float:
    ideal = dcg(sorted(relevant.values(), reverse=True)[:k])
    return dcg([relevant.get(d, 0.0) for d in ranked[:k]]) / ideal if ideal > 0 else 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, float], k: int) -> float:
    return len(set(ranked[:k]) & set(relevant)) / len(relevant) if relevant else 0.0


def precision_at_k(ranked: list[str], relevant: dict[str, float], k: int) -> float:
    return len(set(ranked[:k]) & set(relevant)) / k


def reciprocal_rank(ranked: list[str], relevant: dict[str, float]) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranked) if d in relevant), 0.0)


def evaluate(run: dict[str, list[str]], qrels: Qrels, *, k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """Means over judged queries (a judged query missing from the run scores 0)."""
    qids = [q for q in qrels if qrels[q]]
    if not qids:
        raise ValueError("no judged queries")
    out = {f"ndcg@{k}": 0.0, f"recall@{recall_k}": 0.0, f"precision@{k}": 0.0, "mrr": 0.0}
    for q in qids:
        ranked, rel = _dedupe(run.get(q, [])), qrels[q]
        out[f"ndcg@{k}"] += ndcg_at_k(ranked, rel, k)
        out[f"recall@{recall_k}"] += recall_at_k(ranked, rel, recall_k)
        out[f"precision@{k}"] += precision_at_k(ranked, rel, k)
        out["mrr"] += reciprocal_rank(ranked, rel)
    return {name: total / len(qids) for name, total in out.items()}


def _dedupe(ranked: list[str]) -> list[str]:
    """A document counts once, at its best rank (chunk hits map to documents)."""
    return list(dict.fromkeys(ranked))
