"""The shift study's statistics on their own, where the truth is known: the subject-bootstrap interval of a
cell covers the population value about 95 % of the time, and it widens when a subject's rows go together."""

from __future__ import annotations

import numpy as np

from embedx.analysis.shift_design import cell_metrics


def _cell(rng: np.random.Generator, n_subjects: int, rows_per_subject: int, replicates: int):
    """Half the subjects are easy (a model is right 90 % of the time on their rows), half hard (60 %):
    the population accuracy is 0.75, and a subject's rows are correlated through its difficulty."""
    easy = rng.random(n_subjects) < 0.5
    subjects = np.repeat(np.arange(n_subjects), rows_per_subject)
    right = np.where(easy[subjects], 0.9, 0.6)
    y = rng.random(len(subjects)) < 0.5
    scores = []
    for _ in range(replicates):
        correct = rng.random(len(subjects)) < right
        scores.append(np.where(correct == y, 0.8, 0.2))  # P(positive) on the right side of 0.5 when correct
    return y, scores, subjects


def test_the_subject_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    covered, widths, widths_by_row = [], [], []
    for draw in range(300):
        y, scores, subjects = _cell(rng, n_subjects=40, rows_per_subject=3, replicates=2)
        out = cell_metrics(["accuracy"], y, scores, subjects, n_boot=400, seed=draw)
        low, high = out["accuracy_ci"]
        assert low <= out["accuracy_mean"] <= high
        covered.append(low <= 0.75 <= high)
        widths.append(high - low)
        rows = cell_metrics(["accuracy"], y, scores, np.arange(len(y)), n_boot=400, seed=draw)["accuracy_ci"]
        widths_by_row.append(rows[1] - rows[0])
    coverage = float(np.mean(covered))
    assert 0.89 <= coverage <= 0.99, coverage
    # treating the 3 rows of a subject as independent would understate the uncertainty
    assert np.mean(widths) > 1.1 * np.mean(widths_by_row)


def test_undefined_cells_are_none_not_numbers() -> None:
    rng = np.random.default_rng(1)
    y, scores, subjects = _cell(rng, n_subjects=10, rows_per_subject=1, replicates=1)
    y[:] = False  # no positive in the cell: AUROC and sensitivity are undefined
    out = cell_metrics(["auroc", "sensitivity", "specificity"], y, scores, subjects, n_boot=50)
    assert out["auroc_mean"] is None and out["auroc_ci"] is None and out["sensitivity_mean"] is None
    assert out["specificity_mean"] is not None and out["specificity_sd"] is None  # one replicate: no sd
