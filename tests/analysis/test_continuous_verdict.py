"""A continuous attribute's verdict: judged on the out-of-fold correlation's interval, not the MAE's.

A review measured that a correlation-0.3 attribute of a 400-subject cohort passed the permutation test in 28
of 40 planted labels and was called encoded in none: the MAE's interval was compared with the median
baseline's point value, though an MAE gain is second order in the effect and both errors move together.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe
from embedx.analysis.probe_result import clear_of_chance
from embedx.analysis.stats import SubjectIndex, bootstrap_correlation

CFG = ProbeConfig(n_permutations=199, n_bootstrap=400, c_grid=(0.1,), seed=0)


def _cohort(n_subjects: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subjects with 1-5 images each, 16-d latents = subject effect + image noise; standardised subject
    means (the direction a planted label correlates with)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n_subjects)
    codes = np.repeat(np.arange(n_subjects), sizes)
    X = rng.normal(size=(n_subjects, 16))[codes] + noise * rng.normal(size=(len(codes), 16))
    means = np.stack([X[codes == s].mean(axis=0) for s in range(n_subjects)])
    return X, codes, (means - means.mean(axis=0)) / means.std(axis=0)


def _planted(zs: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    u = rng.normal(size=zs.shape[1])
    score = zs @ (u / np.linalg.norm(u))
    score = (score - score.mean()) / score.std()
    return 50 + 10 * (r * score + np.sqrt(1 - r**2) * rng.normal(size=len(score)))


def test_bootstrap_correlation_is_pearson_on_the_resampled_rows() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), rng.integers(1, 4, 30)).astype(str)
    y = rng.normal(60, 10, len(groups))
    pred = 0.5 * y + rng.normal(0, 8, len(groups))
    index = SubjectIndex(groups)
    replicates = bootstrap_correlation(y, pred, groups, 5, seed=11, index=index)
    weights = index.weights(5, np.random.default_rng(11))  # the draws the bootstrap made
    for w, replicate in zip(weights, replicates, strict=True):
        rows = np.repeat(np.arange(len(groups)), w[index.codes].astype(int))
        assert replicate == pytest.approx(pearsonr(y[rows], pred[rows])[0], abs=1e-9)
    assert np.all(np.isnan(bootstrap_correlation(y, np.zeros_like(y), groups, 3, index=index)))


def test_a_moderate_correlation_that_the_permutation_test_finds_is_called_encoded() -> None:
    X, codes, zs = _cohort(400, seed=5)
    rng = np.random.default_rng(6)
    results = [
        cross_validated_probe(X, _planted(zs, 0.3, rng)[codes], codes.astype(str), "continuous", config=CFG)
        for _ in range(6)
    ]
    significant = [r for r in results if r.p_value < 0.05]
    assert len(significant) >= 4, [r.p_value for r in results]
    # each significant label's correlation interval clears 0 (the old MAE interval cleared chance for none)
    assert sum(r.encoded for r in significant) >= len(significant) - 1, [r.to_dict() for r in significant]
    for r in results:
        low, high = r.correlation_ci
        assert low <= r.correlation <= high
        assert r.ci_vs_chance[0] <= r.score - r.chance <= r.ci_vs_chance[1]


def test_a_null_continuous_label_rarely_clears_chance() -> None:
    X, codes, _ = _cohort(200, seed=8)
    rng = np.random.default_rng(9)
    cleared = encoded = 0
    n = 40
    for _ in range(n):
        y = rng.normal(50, 10, 200)[codes]
        r = cross_validated_probe(X, y, codes.astype(str), "continuous", config=CFG)
        cleared += clear_of_chance(r)
        encoded += r.encoded
    assert cleared <= 4, cleared  # one-sided 2.5 % nominal: at most 10 % of 40 (P(X > 4) < 1 %)
    assert encoded <= 3, encoded


def test_a_pilot_continuous_probe_gets_its_correlation_interval_from_refits() -> None:
    X, codes, zs = _cohort(24, seed=12, noise=0.3)
    y = _planted(zs, 0.95, np.random.default_rng(13))[codes]
    r = cross_validated_probe(X, y, codes.astype(str), "continuous", config=CFG)
    assert r.bootstrap["over"] == "refits on subject resamples"
    assert r.correlation_ci is not None and 0 < r.correlation_ci[0] <= r.correlation_ci[1] <= 1
    assert r.encoded, r.to_dict()


def test_a_result_stored_before_the_correlation_existed_keeps_the_old_rule() -> None:
    old = {"metric": "mae", "score": 8.0, "ci": (7.5, 8.5), "chance": 9.0}
    assert clear_of_chance(old)
    assert not clear_of_chance({**old, "ci": (7.5, 9.5)})
    assert not clear_of_chance({**old, "correlation": 0.2, "correlation_ci": None})
    assert clear_of_chance({**old, "ci": (7.5, 9.5), "correlation": 0.2, "correlation_ci": (0.05, 0.3)})
    assert not clear_of_chance({**old, "correlation": 0.02, "correlation_ci": (-0.05, 0.1)})


def test_the_probe_table_shows_the_correlation_a_continuous_verdict_rests_on() -> None:
    from rich.console import Console

    from embedx.analysis.tables import _fmt, probe_rich_table

    row = {"model": "dae", "attribute": "age", "metric": "mae", "score": 7.0, "ci": (6.5, 7.5), "chance": 7.2,
           "correlation": 0.22, "correlation_ci": (0.14, 0.29), "encoded": True, "verdict": "encoded"}
    console = Console(width=200, record=True)
    console.print(probe_rich_table([row]))
    assert "r 0.22 [0.140, 0.290]" in console.export_text()
    assert _fmt(1.39e-17) == "0.000" and _fmt(2e-4) == "0.0002"
