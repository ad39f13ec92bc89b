"""Subject-aware train/val/test, k-fold and site-separated splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.data.splits import site_split, subject_kfold, train_val_test_split
from embedx.errors import EmbedxError


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    """1,200 images of 400 subjects (1-5 images each), three manufacturers, label prevalence by manufacturer
    (as in seed 001's cohorts), and a site column with four sites."""
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(400), rng.integers(1, 6, 400))[:1200]
    manufacturer = np.array(["GE", "Siemens", "Philips"])[subjects % 3]
    label = (rng.random(400) < np.array([0.2, 0.5, 0.7])[np.arange(400) % 3]).astype(int)[subjects]
    site = np.array(["a", "b", "c", "d"])[subjects % 4]
    return pd.DataFrame(
        {
            "subject_id": [f"p{s}" for s in subjects],
            "manufacturer": manufacturer,
            "label": label,
            "site": site,
        }
    )


def _subjects(table: pd.DataFrame, rows: np.ndarray) -> set[str]:
    return set(table["subject_id"].iloc[rows])


def test_train_val_test_keeps_subjects_whole_and_balances_manufacturer_by_label(cohort):
    split = train_val_test_split(cohort, (0.8, 0.1, 0.1), stratify=["manufacturer", "label"], seed=1)
    train, val, test = split
    assert len(train) + len(val) + len(test) == len(cohort)
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == 0
    assert not _subjects(cohort, train) & _subjects(cohort, val)
    assert not _subjects(cohort, train) & _subjects(cohort, test)
    assert not _subjects(cohort, val) & _subjects(cohort, test)
    strata = cohort.groupby(["manufacturer", "label"]).size()
    for rows, target in ((train, 0.8), (val, 0.1), (test, 0.1)):
        assert abs(len(rows) / len(cohort) - target) < 0.02
        share = (
            cohort.iloc[rows].groupby(["manufacturer", "label"]).size().reindex(strata.index, fill_value=0)
        )
        assert np.all(np.abs(share / strata - target) < 0.04), (target, (share / strata).round(3).tolist())


def test_train_val_test_is_deterministic_for_a_seed(cohort):
    a = train_val_test_split(cohort, seed=3)
    b = train_val_test_split(cohort, seed=3)
    c = train_val_test_split(cohort, seed=4)
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)


def test_small_cohort_with_rare_strata_still_splits(cohort):
    small = cohort.iloc[:40]
    train, val, test = train_val_test_split(small, (0.6, 0.2, 0.2), stratify="label", seed=0)
    assert len(train) and len(val) and len(test)
    assert not _subjects(small, train) & _subjects(small, test)


def test_unknown_stratify_column_is_named(cohort):
    with pytest.raises(EmbedxError, match="'scanner'"):
        train_val_test_split(cohort, stratify=["manufacturer", "scanner"])
    with pytest.raises(EmbedxError, match="summing to 1"):
        train_val_test_split(cohort, (0.8, 0.3, 0.1))


def test_subject_kfold_covers_every_row_once_without_leaks(cohort):
    seen = np.zeros(len(cohort), dtype=int)
    for train, test in subject_kfold(cohort, 5, stratify=["manufacturer", "label"], seed=0):
        seen[test] += 1
        assert not _subjects(cohort, train) & _subjects(cohort, test)
        assert len(train) + len(test) == len(cohort)
        # StratifiedGroupKFold keeps each fold's positive rate near the cohort's.
        assert abs(cohort["label"].iloc[test].mean() - cohort["label"].mean()) < 0.05
    assert np.all(seen == 1)


def test_site_split_holds_out_named_sites(cohort):
    train, test = site_split(cohort, "site", ["b", "d"])
    assert set(cohort["site"].iloc[test]) == {"b", "d"}
    assert set(cohort["site"].iloc[train]) == {"a", "c"}
    assert len(train) + len(test) == len(cohort)


def test_site_split_keeps_a_subject_seen_at_two_sites_out_of_train():
    table = pd.DataFrame({"subject_id": ["x", "x", "y", "z"], "site": ["a", "b", "a", None]})
    train, test = site_split(table, "site", "b")
    assert test.tolist() == [1] and train.tolist() == [2]  # x's site-a image left out; z has no site


def test_site_split_unknown_site_lists_the_real_ones(cohort):
    with pytest.raises(EmbedxError, match=r"'e'.*sites: a, b, c, d"):
        site_split(cohort, "site", ["a", "e"])
    with pytest.raises(EmbedxError, match="nothing is left to train on"):
        site_split(cohort, "site", ["a", "b", "c", "d"])
    with pytest.raises(EmbedxError, match="'hospital'"):
        site_split(cohort, "hospital", ["a"])


def test_unstratified_kfold_is_subject_disjoint_and_seeded(cohort):
    folds = [test for _, test in subject_kfold(cohort, 4, seed=2)]
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(cohort)))
    for i, a in enumerate(folds):
        for b in folds[i + 1 :]:
            assert not _subjects(cohort, a) & _subjects(cohort, b)
    again = [test for _, test in subject_kfold(cohort, 4, seed=2)]
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))
    with pytest.raises(EmbedxError, match="at least 4 subjects"):
        next(subject_kfold(cohort.iloc[:3], 4))
