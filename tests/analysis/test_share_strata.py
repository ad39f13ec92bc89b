"""Subject shares over different numbers of images: the enrichment test permutes values within image-count
strata, so a value that goes with how many images its subjects have is not called enriched by that alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.analysis.enrichment import enrichment
from embedx.analysis.share_strata import common_count_shares, count_strata
from embedx.analysis.subject_shares import RankMoments, _ranks, permutation_p


def test_strata_are_exact_counts_with_single_value_strata_merged_into_the_nearest() -> None:
    images = np.array([2, 2, 3, 3, 25, 26, 30, 8, 8])
    values = np.array([0, 1, 0, 1, 1, 1, 1, 0, 1])
    strata = count_strata(images, values)
    # 2, 3 and 8 hold both values and stay; 25, 26 and 30 hold value 1 only: 25 joins 26 (its nearest by
    # ratio), then 30, and the still single-valued 25-30 joins 8, whose 8 images its shares are then over
    assert strata.n_strata == 3
    assert len(set(strata.index[[0, 1]])) == 1 and strata.index[0] != strata.index[2]
    assert len(set(strata.index[[4, 5, 6, 7, 8]])) == 1
    assert strata.common[strata.index[4]] == 8 and strata.subsampled == 3
    one = count_strata(np.full(5, 4), np.array([0, 1, 0, 1, 1]))
    assert one.n_strata == 1 and one.subsampled == 0


def test_a_common_count_share_keeps_the_subjects_expected_share() -> None:
    strata = count_strata(np.array([2, 30]), np.array([0, 1]))  # one stratum, common count 2
    draws = np.array([common_count_shares(np.array([1, 12]), np.array([2, 30]), strata, [s])
                      for s in range(4000)])
    assert np.all(draws[:, 0] == 0.5)  # the 2-image subject keeps its own share
    assert set(np.unique(draws[:, 1])) <= {0.0, 0.5, 1.0}
    assert draws[:, 1].mean() == pytest.approx(12 / 30, abs=0.02)


def test_stratified_moments_and_permutation_p_match_explicit_shuffles() -> None:
    """The rank sum's expectation and variance, and its two-sided p, as 20,000 explicit within-stratum
    shuffles give them."""
    rng = np.random.default_rng(3)
    n = 80
    strata = rng.integers(0, 3, n)
    shares = np.round(rng.random(n) + strata, 1)  # ties within strata; stratum 2 ranks on top
    members = rng.random(n) < np.where(strata == 2, 0.6, 0.1)
    ranks = _ranks(shares)[0]
    moments = RankMoments(ranks, members.astype(np.int64), 2, strata)
    sums = np.empty(20_000)
    shuffled = members.copy()
    for b in range(sums.size):
        for s in range(3):
            inside = np.flatnonzero(strata == s)
            shuffled[inside] = rng.permutation(members[inside])
        sums[b] = ranks[shuffled].sum()
    assert moments.expected[1] == pytest.approx(sums.mean(), rel=2e-3)
    assert moments.variance[1] == pytest.approx(sums.var(), rel=0.05)
    observed = ranks[members].sum()
    deviation = abs(observed - moments.expected[1])
    explicit = (1 + np.sum(np.abs(sums - moments.expected[1]) >= deviation - 1e-9)) / (sums.size + 1)
    p, draws = permutation_p(ranks, members, deviation, strata)
    assert draws >= 1_000 and p == pytest.approx(explicit, rel=0.35, abs=2e-3)
    unstratified = permutation_p(ranks, members, abs(observed - members.sum() * ranks.mean()))[0]
    assert unstratified < p / 5  # the strata change the answer in this case


def _cohort(rng: np.random.Generator, effect: float, flagged_many: bool) -> tuple[pd.DataFrame, np.ndarray,
                                                                                    np.ndarray]:
    flagged = rng.random(150) < 0.1
    flagged[:2] = True
    many, few = rng.integers(25, 31, 150), rng.integers(2, 4, 150)
    images = np.where(flagged == flagged_many, many, few)
    propensity = np.clip(rng.beta(0.5, 4.5, 150) + effect * flagged, 0, 1)
    subject = np.repeat(np.arange(150), images)
    mask = rng.random(subject.size) < propensity[subject]
    return pd.DataFrame({"t": np.where(flagged, "yes", "no")[subject]}), mask, subject


@pytest.mark.parametrize("flagged_many", [True, False])
def test_a_value_that_goes_with_the_image_count_is_at_chance_under_the_null_and_found_under_an_effect(
        flagged_many: bool) -> None:
    """A value on 10 % of 150 subjects, who have 25-30 images where the others have 2-3 (or the reverse).
    The unstratified test gave p < 0.05 in 80 % (55 %) of such null cohorts (`bench/share_strata.py`)."""
    rng = np.random.default_rng(5 + flagged_many)
    null = []
    for _ in range(80):
        frame, mask, subject = _cohort(rng, 0.0, flagged_many)
        row = enrichment(frame, mask, groups=subject).set_index("value").loc["yes"]
        null.append((row["p_value"], row["attribute_p"]))
    null_p = np.array(null)
    assert np.mean(null_p[:, 0] < 0.05) <= 0.125 and np.mean(null_p[:, 1] < 0.05) <= 0.125
    found = 0
    for _ in range(30):
        frame, mask, subject = _cohort(rng, 0.15, flagged_many)
        table = enrichment(frame, mask, groups=subject).set_index("value")
        found += bool(table.loc["yes", "p_value"] < 0.05)
        assert "image-count strat" in table.loc["yes", "test"]
    assert found >= 12  # ~58 % / ~77 % at 200 cohorts in the bench


def test_the_same_selection_gives_the_same_table() -> None:
    frame, mask, subject = _cohort(np.random.default_rng(9), 0.1, True)
    first = enrichment(frame, mask, groups=subject)
    pd.testing.assert_frame_equal(first, enrichment(frame, mask, groups=subject))
