"""Bootstrap CI coverage on synthetic data, Cohen's kappa on a known table."""

from __future__ import annotations

import numpy as np
import pytest

from graftlm.evals.stats import accuracy, bootstrap_ci, cohen_kappa


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    mean, low, high = bootstrap_ci(x)
    assert mean == pytest.approx(0.7) and low < 0.7 < high


def test_bootstrap_coverage_bernoulli():
    # p = 0.7, n = 200, 200 repetitions: the 95% interval should cover p about 95% of the time
    rng = np.random.default_rng(123)
    covered = 0
    for rep in range(200):
        sample = rng.random(200) < 0.7
        _, low, high = bootstrap_ci(sample, n_resamples=1000, seed=rep)
        covered += low <= 0.7 <= high
    assert 0.91 <= covered / 200 <= 0.99


def test_cohen_kappa_known_table():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o = 0.7, p_e = 0.5, kappa = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert accuracy(a, b) == pytest.approx(0.7)
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    from sklearn.metrics import cohen_kappa_score

    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa([1, 1], [1, 1]) == 1.0
