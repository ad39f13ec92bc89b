"""A balanced accuracy's interval must not collapse where a class's recall sits at 0 or 1.

In null simulations (150 subjects x 256-d, a label in 3-10 % of subjects, near-duplicate rows) a probe that
predicted no rare subject as rare got intervals such as 0.497 [0.492, 0.498]: 19 of 60 missed 0.5, the
only true value of a label with no effect. The Wilson floor on recalls at 0 or 1 (`recall_floor`) brought
8 of 40 such cohorts to 3 of 40 (`python bench/recall_floor.py` measures it).
"""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe
from embedx.analysis.recall_floor import proportion_floor, recall_floor
from embedx.analysis.stats import wilson_interval


@pytest.mark.parametrize(("successes", "n"), [(0, 5), (5, 5), (1, 7), (12, 40), (3.5, 9), (150, 300)])
def test_wilson_interval_matches_statsmodels(successes: float, n: int) -> None:
    expected = proportion_confint(successes, n, alpha=0.05, method="wilson")
    assert wilson_interval(successes, n) == pytest.approx(expected, abs=1e-12)


def test_a_recall_at_zero_of_five_keeps_chance_inside_the_interval() -> None:
    """5 rare subjects none predicted rare, 1 of 145 common subjects predicted rare: balanced accuracy
    0.4966, and a collapsed interval just below 0.5; recall 0/5 allows a true recall to 0.43."""
    subjects = np.arange(150)
    codes = (subjects < 5).astype(int)
    pred = np.zeros(150, dtype=int)
    pred[100] = 1
    score = 0.5 * (0 + 144 / 145)
    (low, high), moved = recall_floor(score, (0.492, 0.498), codes, pred, subjects)
    assert moved
    upper_recall = proportion_confint(0, 5, alpha=0.05, method="wilson")[1]
    assert high == pytest.approx(score + upper_recall / 2)  # 144/145 is inside (0, 1): resampling's
    assert low < score < 0.5 < high


def test_the_floor_only_widens_and_leaves_a_wide_interval_alone() -> None:
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(400), 2)
    codes = rng.integers(0, 3, 400)[subjects]
    pred = np.where(rng.random(800) < 0.6, codes, rng.integers(0, 3, 800))
    score = float(np.mean([np.mean(pred[codes == c] == c) for c in range(3)]))
    wide = (score - 0.2, score + 0.2)
    assert recall_floor(score, wide, codes, pred, subjects) == (wide, False)
    # recalls inside (0, 1): resampling sees their spread, at the images' own n; no floor
    assert recall_floor(score, (score, score), codes, pred, subjects) == ((score, score), False)
    # a class recalled perfectly: its 2 rows per subject agree, so the floor counts its subjects
    perfect = np.where(codes == 0, 0, pred)
    score = float(np.mean([np.mean(perfect[codes == c] == c) for c in range(3)]))
    (low, high), moved = recall_floor(score, (score, score), codes, perfect, subjects)
    n0 = len(np.unique(subjects[codes == 0]))
    assert moved and high == score and low == pytest.approx(score - (1 - wilson_interval(n0, n0)[0]) / 3)


def test_a_rare_null_label_in_a_small_high_dimensional_cohort_is_not_placed_off_chance() -> None:
    """The case that exposed it, end to end: the whole probe, refit interval and floor together."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 9, 150)
    label = np.zeros(150, dtype=int)
    label[rng.choice(150, 6, replace=False)] = 1
    rows = np.repeat(np.arange(150), sizes)
    X = rng.normal(size=(150, 256))[rows] + 0.1 * rng.normal(size=(len(rows), 256))
    result = cross_validated_probe(X, label[rows].astype(str), rows.astype(str), "binary",
                                   config=ProbeConfig(n_permutations=0, n_bootstrap=30))
    assert result.bootstrap["over"] == "refits on subject resamples"
    assert result.ci[0] <= 0.5 <= result.ci[1], (result.score, result.ci)
    assert result.bootstrap["recall_floor"] is True
    assert any("Wilson" in note for note in result.notes)


def test_a_groups_rate_at_one_gets_its_wilson_interval_not_zero_width() -> None:
    """A fairness group's TPR of 10 of 10 positive subjects resamples to [1, 1]."""
    assert proportion_floor(1.0, (1.0, 1.0), 10) == pytest.approx(
        [proportion_confint(10, 10, alpha=0.05, method="wilson")[0], 1.0])
    assert proportion_floor(0.5, (0.2, 0.8), 10) == [0.2, 0.8]  # inside (0, 1): resampling's own
    assert proportion_floor(0.4, (0.4, 0.4), 10) == [0.4, 0.4]
    assert proportion_floor(float("nan"), (0.0, 1.0), 10) == [0.0, 1.0]
