"""The subject-share enrichment p is a permutation p: the normal approximation of a zero-inflated rank sum
is far too small in the tail that Benjamini-Hochberg reads (16x at p ~ 2e-3 in the case below)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from embedx.analysis import subject_shares
from embedx.analysis.enrichment import CohortTests
from embedx.analysis.subject_shares import _ranks, permutation_p
from embedx.data.schema import AttributeSpec


def _zero_inflated(seed: int = 4, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Shares of a small cluster (most subjects have none of their images in it) and a 4-subject value
    holding 3 of the 8 subjects that do."""
    rng = np.random.default_rng(seed)
    shares = np.zeros(n)
    hot = rng.choice(n, 8, replace=False)
    shares[hot] = rng.choice([0.25, 0.5, 1.0], 8)
    group = np.zeros(n, dtype=bool)
    group[hot[:3]] = True
    group[rng.choice(np.flatnonzero(shares == 0), 1)] = True
    return shares, group


def test_the_permutation_p_is_scipys_exact_one_where_the_normal_approximation_fails() -> None:
    shares, group = _zero_inflated()
    n = shares.size
    ranks, _ = _ranks(shares)

    def deviation(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.abs(x.sum(axis=axis) - x.shape[axis] * (n + 1) / 2)

    exact = stats.permutation_test((ranks[group], ranks[~group]), deviation, permutation_type="independent",
                                   n_resamples=np.inf, alternative="greater").pvalue
    p, draws = permutation_p(ranks, group, float(deviation(ranks[group], None, 0)))
    assert draws >= 2_000
    assert p == pytest.approx(exact, rel=0.35)  # Monte-Carlo error of ~20 exceedances
    normal = stats.mannwhitneyu(shares[group], shares[~group], method="asymptotic").pvalue
    assert normal < exact / 5  # the approximation this replaces


def test_the_enrichment_table_uses_it_and_falls_back_to_a_drawn_image_above_its_size(monkeypatch) -> None:
    shares, group = _zero_inflated()
    images = 4  # each subject's images: its share of them in the cluster
    subject = np.repeat(np.arange(shares.size), images)
    inside = np.zeros(subject.size, dtype=bool)
    for s, share in enumerate(shares):
        inside[s * images: s * images + round(share * images)] = True
    frame = pd.DataFrame({"scanner": np.where(group, "rare", "common")[subject]})
    schema = {"scanner": AttributeSpec("scanner", "categorical", "acquisition")}
    tests = CohortTests(frame, schema, groups=subject.astype(str))
    row = tests.table(inside, correct=False).set_index("value").loc["rare"]
    assert "permutation p" in row["test"]
    assert row["p_value"] > 1e-3  # the normal approximation said 1.4e-4; the exact p is 2.2e-3
    monkeypatch.setattr(subject_shares, "EXACT_MAX_SUBJECTS", 10)
    drawn = CohortTests(frame, schema, groups=subject.astype(str)).table(inside, correct=False)
    assert not drawn["test"].str.contains("mannwhitney").any()
    assert (drawn["units_tested"] == shares.size).all()


def test_the_kruskal_wallis_permutation_p_is_scipys() -> None:
    from embedx.analysis.subject_shares import RankMoments, kruskal_permutation_p

    rng = np.random.default_rng(9)
    shares = np.where(rng.random(90) < 0.15, rng.choice([0.25, 0.5, 1.0], 90), 0.0)
    groups = np.sort(rng.choice(3, 90, p=[0.6, 0.3, 0.1]))
    shares[groups == 2] = np.maximum(shares[groups == 2], rng.choice([0.0, 0.5], (groups == 2).sum()))
    ranks, _ = _ranks(shares)
    sums = np.bincount(groups, weights=ranks)
    moments = RankMoments(ranks, groups, 3, np.zeros(90, dtype=np.int64))
    used = np.ones(3, dtype=bool)
    h, df = moments.kruskal(sums, used)
    h_scipy = stats.kruskal(*(shares[groups == g] for g in range(3))).statistic
    assert df == 2 and h[0] == pytest.approx(h_scipy)
    p, draws = kruskal_permutation_p(moments, used, float(h[0]))

    def kruskal(*samples: np.ndarray, axis: int) -> np.ndarray:
        return sum(x.sum(axis=axis) ** 2 / x.shape[axis] for x in samples)

    scipy_p = stats.permutation_test([ranks[groups == g] for g in range(3)], kruskal, alternative="greater",
                                     permutation_type="independent", n_resamples=20_000,
                                     rng=np.random.default_rng(2)).pvalue
    assert 1e-4 < scipy_p < 0.05  # a tail the chi-square approximation gets wrong
    assert p == pytest.approx(scipy_p, rel=0.4) and draws >= 2_000
