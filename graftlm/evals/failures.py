"""Failure analysis: embed the failed examples and group them with k-means."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


def failed_results(run: dict, scorer: str | None = None, threshold: float = 1.0) -> list[dict]:
    scorer = scorer or run["scorers"][0]
    return [r for r in run["results"] if r["scores"][scorer] < threshold]


def cluster_failures(results: list[dict], *, k: int | None = None, samples: int = 3, seed: int = 0,
                     embedding_model: str | None = None) -> list[dict]:
    """Clusters of failed per-example results (question + wrong answer), largest first:
    [{"cluster", "size", "samples": [{"question", "reference", "prediction"}], "common_predictions",
    "common_references"}]. k defaults to about sqrt(n / 2)."""
    from sklearn.cluster import KMeans

    from graftlm.rag.embeddings import embed

    if not results:
        return []
    k = max(1, min(len(results), k or round(math.sqrt(len(results) / 2))))
    texts = [f"{r['question']} => {r['prediction']}" for r in results]
    labels = np.zeros(len(results), int) if k == 1 else \
        KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embed(texts, embedding_model))
    clusters = []
    for c in range(k):
        members = [r for r, lab in zip(results, labels) if lab == c]
        if not members:
            continue
        clusters.append({"size": len(members),
                         "samples": [{"question": r["question"], "reference": r["reference"],
                                      "prediction": r["prediction"]} for r in members[:samples]],
                         "common_predictions": Counter(str(r["prediction"]).strip()[:60] for r in members).most_common(3),
                         "common_references": Counter(str(r["reference"]) for r in members).most_common(3)})
    clusters.sort(key=lambda c: -c["size"])
    return [{"cluster": i, **c} for i, c in enumerate(clusters)]
