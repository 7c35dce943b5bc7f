"""Aggregates with seeded percentile-bootstrap 95% CIs, accuracy and Cohen's kappa."""

from __future__ import annotations

from collections import Counter

import numpy as np


def bootstrap_ci(values, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                 statistic=np.mean) -> tuple[float, float, float]:
    """(point estimate, low, high): the statistic and its percentile-bootstrap interval."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    stats = statistic(x[idx], axis=1) if statistic is np.mean else np.array([statistic(x[i]) for i in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(statistic(x)), float(low), float(high)


def summarize(values, **kw) -> dict:
    mean, low, high = bootstrap_ci(values, **kw)
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": len(list(values))}


def accuracy(a, b) -> float:
    a, b = list(a), list(b)
    return sum(x == y for x, y in zip(a, b)) / len(a) if a else float("nan")


def cohen_kappa(a, b) -> float:
    """Cohen's kappa for two raters' labels: (p_o - p_e) / (1 - p_e); 1.0 when both agree on one label."""
    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise ValueError("two non-empty label lists of the same length are needed")
    n = len(a)
    p_o = accuracy(a, b)
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)
