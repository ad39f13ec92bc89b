"""Shared statistics: Holm by hand, subject-level resampling and permutation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from embedx.analysis.stats import (
    SubjectIndex,
    SubjectPermuter,
    bootstrap_balanced_accuracy,
    bootstrap_mae,
    holm,
    percentile_ci,
    permutation_pvalue,
    permute_by_subject,
)


def test_holm_matches_hand_computation() -> None:
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_ignores_nan_and_caps_at_one() -> None:
    adjusted = holm([0.2, np.nan, 0.6])
    assert np.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.4, 0.6])  # m = 2, not 3
    assert holm([0.9, 0.8])[0] == 1.0 or holm([0.9, 0.8]).max() <= 1.0


def test_permutation_pvalue_counts_ties_and_is_never_zero() -> None:
    assert permutation_pvalue(0.9, np.array([0.1, 0.2, 0.9, 0.95])) == pytest.approx(3 / 5)
    assert permutation_pvalue(5.0, np.array([6.0, 7.0]), greater=False) == pytest.approx(1 / 3)
    assert permutation_pvalue(1.0, np.zeros(999)) == pytest.approx(1 / 1000)


def test_resample_rows_keeps_subjects_whole() -> None:
    groups = np.repeat(np.array(["a", "b", "c", "d"]), [1, 2, 3, 4])
    index = SubjectIndex(groups)
    rows = index.resample_rows(np.random.default_rng(1))
    drawn, counts = np.unique(groups[rows], return_counts=True)
    sizes = dict(zip(*np.unique(groups, return_counts=True), strict=True))
    for g, c in zip(drawn, counts, strict=True):
        assert c % sizes[g] == 0  # each drawn subject brings all of its rows


def test_fast_bootstrap_agrees_with_resampled_rows() -> None:
    """The sufficient-statistics bootstrap equals sklearn on explicitly resampled rows."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), 3)
    y = rng.integers(0, 3, 150)
    pred = np.where(rng.random(150) < 0.6, y, rng.integers(0, 3, 150))
    index = SubjectIndex(groups)
    rows = index.resample_rows(np.random.default_rng(3))
    w = np.bincount(index.codes[rows], minlength=index.n_subjects)
    onehot = np.eye(3)[y]
    correct = w @ index.per_subject((y == pred)[:, None] * onehot)
    total = w @ index.per_subject(onehot)
    fast = np.nanmean(correct / total)
    assert fast == pytest.approx(balanced_accuracy_score(y[rows], pred[rows]))
    reps = bootstrap_balanced_accuracy(y, pred, groups, n_boot=400, seed=0)
    low, high = percentile_ci(reps)
    assert low < balanced_accuracy_score(y, pred) < high


def test_cluster_bootstrap_is_wider_than_row_bootstrap_for_duplicated_subjects() -> None:
    rng = np.random.default_rng(0)
    err = rng.normal(size=40)
    groups = np.repeat(np.arange(40), 10)  # ten identical copies per subject
    y_true, y_pred = np.zeros(400), np.repeat(err, 10)
    by_subject = percentile_ci(bootstrap_mae(y_true, y_pred, groups, n_boot=500))
    by_row = percentile_ci(bootstrap_mae(y_true, y_pred, np.arange(400), n_boot=500))
    assert (by_subject[1] - by_subject[0]) > 2 * (by_row[1] - by_row[0])


def test_permute_by_subject_keeps_labels_constant_within_subject() -> None:
    groups = np.repeat(np.arange(30), 4)
    y = np.repeat(np.arange(30) % 3, 4)
    index = SubjectIndex(groups)
    perm = permute_by_subject(y, index, np.random.default_rng(0))
    assert sorted(perm.tolist()) == sorted(y.tolist())
    for g in range(30):
        assert len(set(perm[groups == g].tolist())) == 1
    assert not np.array_equal(perm, y)


def test_permute_by_subject_moves_varying_labels_as_blocks() -> None:
    groups = np.repeat(np.arange(20), 2)
    y = np.tile([0, 1], 20)  # varies within every subject
    perm = permute_by_subject(y, SubjectIndex(groups), np.random.default_rng(0))
    for g in range(20):
        assert sorted(perm[groups == g].tolist()) == [0, 1]


def test_holm_matches_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(8)
    for m in (1, 3, 17, 60):
        p = rng.uniform(0, 0.2, m) ** 2
        p[rng.random(m) < 0.2] = 0.049  # ties
        expected = multipletests(p, alpha=0.05, method="holm")[1]
        np.testing.assert_allclose(holm(p), expected)


def test_varying_labels_are_exchanged_only_between_subjects_of_the_same_size() -> None:
    """A permutation gives each subject the labels of a same-sized subject (in any order): the multiset of
    labels is kept exactly, and subjects with a unique row count keep their own labels, reordered."""
    rng = np.random.default_rng(9)
    sizes = np.array([1, 2, 2, 3, 3, 3, 4])
    groups = np.repeat(np.arange(len(sizes)), sizes)
    y = rng.integers(0, 5, len(groups))
    index = SubjectIndex(groups)
    permuter = SubjectPermuter(y, index)
    assert not permuter.constant and permuter.n_fixed == 2  # sizes 1 and 4 occur once
    multisets = {tuple(sorted(y[groups == g])) for g in range(len(sizes))}
    draws = permuter.draw(np.random.default_rng(0), 300)
    moved = reordered = 0
    for b in range(draws.shape[1]):
        perm = draws[:, b]
        assert sorted(perm.tolist()) == sorted(y.tolist())
        for g, size in enumerate(sizes):
            got = perm[groups == g]
            assert tuple(sorted(got)) in multisets and len(got) == size
            moved += tuple(sorted(got)) != tuple(sorted(y[groups == g]))
        for g in (0, 6):  # unique sizes keep their own labels, in some order
            assert sorted(perm[groups == g]) == sorted(y[groups == g])
        reordered += not np.array_equal(perm[groups == 6], y[groups == 6])
    assert moved > 100 and reordered > 100


def test_a_label_tied_to_image_position_is_permuted_within_subjects() -> None:
    """'First image frontal, second lateral' in every subject: exchanging whole sequences between subjects
    would reproduce it every time; shuffling over each subject's images does not."""
    groups = np.repeat(np.arange(100), 2)
    view = np.tile([0, 1], 100)
    permuter = SubjectPermuter(view, SubjectIndex(groups))
    draws = permuter.draw(np.random.default_rng(2), 200)
    assert permuter.mixing(draws) > 0.9
    assert 0.4 < np.mean(draws[::2] == 0) < 0.6  # the first image is no longer always label 0


def test_a_label_that_can_barely_be_permuted_is_measured_as_such() -> None:
    """Every subject's row count is unique and one row is mistyped: permutations barely move the labels."""
    sizes = np.arange(1, 31)
    groups = np.repeat(np.arange(30), sizes)
    sex = np.repeat(np.arange(30) % 2, sizes)
    sex[np.flatnonzero(groups == 29)[0]] = 1 - sex[np.flatnonzero(groups == 29)[0]]
    permuter = SubjectPermuter(sex, SubjectIndex(groups))
    assert permuter.n_fixed == 30
    assert permuter.mixing(permuter.draw(np.random.default_rng(3), 400)) < 0.02
    constant = SubjectPermuter(np.repeat(np.arange(30) % 2, sizes), SubjectIndex(groups))
    assert constant.mixing(constant.draw(np.random.default_rng(3), 400)) > 0.9


def test_constant_labels_permute_uniformly_over_subjects() -> None:
    groups = np.repeat(np.arange(4), [1, 3, 2, 1])
    y = np.repeat([1, 0, 0, 0], [1, 3, 2, 1])
    draws = SubjectPermuter(y, SubjectIndex(groups)).draw(np.random.default_rng(1), 4000)
    positive_subject = np.array([[draws[groups == g, b][0] for g in range(4)] for b in range(4000)])
    np.testing.assert_allclose(positive_subject.mean(axis=0), 0.25, atol=0.03)  # each subject equally often


def test_a_resample_that_loses_a_class_is_dropped_not_averaged() -> None:
    """Five positives among 400 subjects: some resamples hold none; they are NaN (counted as dropped)."""
    y = np.zeros(400, dtype=int)
    y[:5] = 1
    pred = y.copy()
    pred[5:200] = 1  # many false positives: recall of the negatives alone would be about 0.5
    reps = bootstrap_balanced_accuracy(y, pred, np.arange(400), n_boot=2000, seed=0)
    assert 0 < np.sum(np.isnan(reps)) < 40  # P(no positive drawn) = (1 - 5/400)^400, about 0.7 %
    assert np.nanmin(reps) >= 0.7  # every kept resample averages both recalls (1.0 and about 0.5)
