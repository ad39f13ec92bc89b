"""The permutation test's statistic on pilot cohorts: a fold's intercept must not decide the ranking.

With label-free folds, a fold's training-label mean runs against its test rows' labels; added to the
out-of-fold scores it shifts whole folds the wrong way, and at a large ridge penalty (small slopes) the
pooled AUC falls *below* chance for a real effect. These tests hold the statistic to the slopes' ranking,
and the test to its size and power on cohorts of 30 subjects.
"""

from __future__ import annotations

import numpy as np

from embedx.analysis.folds import subject_folds
from embedx.analysis.permutation import RidgeNull, permutation_test
from embedx.analysis.stats import SubjectIndex


def _pilot(seed: int, effect: float, n_subjects: int = 30, dim: int = 32):
    """30 subjects x 2 images; a third of them positive; the label shifts one latent by `effect`."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_subjects), 2)
    label = np.zeros(n_subjects, dtype=int)
    label[rng.choice(n_subjects, n_subjects // 3, replace=False)] = 1
    factors = rng.normal(size=(n_subjects, dim))
    factors[:, 0] += effect * label
    X = factors[codes] + 0.5 * rng.normal(size=(len(codes), dim))
    return X, label[codes], codes.astype(str)


def test_a_large_penalty_ranks_by_the_slopes_not_by_the_folds_intercepts() -> None:
    stats, continuous = [], []
    for seed in range(20):
        X, y, g = _pilot(seed, effect=2.5)
        null = RidgeNull(X, subject_folds(g, 5, seed), lambdas=(1e3,))
        stats.append(null.statistic(y[:, None], 2)[0])
        age = 50 + 10 * y + np.random.default_rng(seed).normal(0, 5, len(y))
        continuous.append(null.statistic(age[:, None], 0)[0])
    # with the intercepts added: AUC 0.34, r -0.32 (a real effect scored as worse than chance)
    assert np.mean(stats) > 0.65, stats  # 0.74 measured
    assert np.mean(continuous) > 0.15, continuous  # 0.26 measured; -0.32 with the intercepts


def test_on_pilot_cohorts_the_test_keeps_its_size_and_finds_a_real_effect() -> None:
    def share_found(effect: float, cohorts: int) -> float:
        found = 0
        for seed in range(cohorts):
            X, y, g = _pilot(1000 + seed, effect)
            null = RidgeNull(X, subject_folds(g, 5, seed))
            found += permutation_test(null, y, SubjectIndex(g), 2, 199, seed).p_value < 0.05
        return found / cohorts

    assert share_found(0.0, 100) <= 0.1  # 5 % expected; 0.1 is 2.3 binomial sd above it
    assert share_found(2.5, 60) >= 0.35  # 0.45-0.5 measured; with the intercepts at lambda 1e3 it was 0.18
