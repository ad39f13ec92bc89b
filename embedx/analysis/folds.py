"""Subject-grouped folds and subject subsamples: every split in embedx keeps a patient on one side.

Two kinds of folds, for two jobs:

* `stratified_folds` balance the classes (or quintiles of a continuous label) across folds. They give the
  most stable *estimate* of a probe's score, so the reported score and its interval use them.
* `subject_folds` ignore the labels. A permutation test must compare the observed statistic with permuted
  labels on the *same* folds; folds cut to balance the observed labels are balanced for them only, which
  favours the observed labelling and makes p-values too small. The permutation tests use these.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

__all__ = [
    "FAST_FOLDS_MIN_SUBJECTS",
    "class_balanced_subsample",
    "fold_splits",
    "stratified_folds",
    "stratified_group_folds",
    "stratified_splits",
    "subject_codes",
    "subject_folds",
    "subject_subsample",
]

# Above this many subjects, folds for a label that varies within subjects are dealt per subject (stratified
# by the subject's first label) instead of by `stratified_group_folds`, whose greedy pass visits every subject
# in turn (scikit-learn's own loop cost ~30 s at 65k patients).
FAST_FOLDS_MIN_SUBJECTS = 5_000


def subject_codes(groups: np.ndarray) -> np.ndarray:
    """Subject ids as integer codes 0..S-1 (hashing: far faster than sorting 220k id strings)."""
    return pd.factorize(np.asarray(groups))[0].astype(np.int64)


def stratified_folds(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int, continuous: bool = False
) -> np.ndarray:
    """Fold id per row, every subject in exactly one fold, classes (or quintiles) balanced across folds.

    A label constant within each subject is stratified exactly by dealing subjects (`StratifiedKFold` over
    subjects); one that varies within subjects goes through `stratified_group_folds` (scikit-learn's
    `StratifiedGroupKFold` algorithm) up to `FAST_FOLDS_MIN_SUBJECTS` subjects, and is dealt by each
    subject's first label above. Raises ValueError, as scikit-learn does, when no class has `folds` members.
    """
    subjects, first, codes = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    codes = codes.reshape(-1)
    if continuous:
        # quintiles, fewer when the cohort is too small for every quantile to fill each fold
        values = np.asarray(y, float)
        bins = int(max(1, min(5, len(subjects) // folds)))
        if np.all(values == values[first][codes]):  # one value per subject: rank subjects, not images
            strata = _quantile_bins(values[first], bins)[codes]
        else:
            strata = _quantile_bins(values, bins)
    else:
        strata = np.unique(np.asarray(y), return_inverse=True)[1].reshape(-1)
    constant = bool(np.all(strata == strata[first][codes]))
    if constant or len(subjects) >= FAST_FOLDS_MIN_SUBJECTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class": callers merge tiny ones
            splitter_s = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            subject_fold = np.full(len(subjects), -1, dtype=int)
            for f, (_, test) in enumerate(splitter_s.split(np.zeros(len(subjects)), strata[first])):
                subject_fold[test] = f
        return subject_fold[codes]
    return stratified_group_folds(strata, codes, folds, seed)


def _quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    ranks = pd.Series(values).rank(method="first").to_numpy()
    return np.minimum((ranks - 1) * bins // len(ranks), bins - 1).astype(int)


def stratified_group_folds(strata: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id per row: scikit-learn's `StratifiedGroupKFold(folds, shuffle=True, random_state=seed)`, the
    same folds, with each subject's choice among the folds made in one array operation.

    The algorithm is scikit-learn's greedy pass: subjects in a seeded random order, those with the most
    uneven class counts first, each put where the per-class spread of fold proportions stays smallest
    (ties: the fold with fewer rows). Its per-fold Python loop was half the time of a small-cohort probe.
    """
    _, y_inv, y_cnt = np.unique(np.asarray(strata), return_inverse=True, return_counts=True)
    _, g_inv = np.unique(np.asarray(groups), return_inverse=True)
    y_inv, g_inv = y_inv.reshape(-1), g_inv.reshape(-1)
    n_groups, n_classes = int(g_inv.max()) + 1, len(y_cnt)
    if folds > n_groups:
        raise ValueError(f"Cannot have number of splits n_splits={folds} greater than the number of groups: "
                         f"{n_groups}.")
    if np.all(folds > y_cnt):
        raise ValueError(f"n_splits={folds} cannot be greater than the number of members in each class.")
    counts = np.zeros((n_groups, n_classes))
    np.add.at(counts, (g_inv, y_inv), 1)
    perm = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(perm)
    counts = counts[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(n_groups)
    g_inv = inv_perm[g_inv]
    fold_counts = np.zeros((folds, n_classes))
    group_fold = np.empty(n_groups, dtype=int)
    add_to = np.eye(folds)[:, :, None]  # candidate i adds the subject to fold i
    for group in np.argsort(-np.std(counts, axis=1), kind="stable"):
        proposed = fold_counts[None] + add_to * counts[group]
        evals = np.mean(np.std(proposed / y_cnt, axis=1), axis=1).tolist()
        sizes = fold_counts.sum(axis=1).tolist()
        best, min_eval, min_size = 0, float("inf"), float("inf")
        for i, (value, size) in enumerate(zip(evals, sizes, strict=True)):
            close = abs(value - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)  # np.isclose's tolerances
            if value < min_eval or (close and size < min_size):
                best, min_eval, min_size = i, value, size
        fold_counts[best] += counts[group]
        group_fold[group] = best
    return group_fold[g_inv]


def subject_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id per row from a seeded shuffle of the subjects alone (no label is looked at).

    Subjects are dealt round-robin in random order, so fold sizes (in subjects) differ by at most one.
    """
    codes = subject_codes(groups)
    n_subjects = int(codes.max()) + 1 if codes.size else 0
    order = np.random.default_rng(seed).permutation(n_subjects)
    subject_fold = np.empty(n_subjects, dtype=int)
    subject_fold[order] = np.arange(n_subjects) % folds
    return subject_fold[codes]


def fold_splits(fold: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) for each fold id present, in fold order."""
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in np.unique(fold) if f >= 0]


def subject_subsample(
    rows: np.ndarray, groups: np.ndarray, max_rows: int, rng: np.random.Generator
) -> np.ndarray:
    """At most ~`max_rows` of `rows`, taking whole subjects in random order (keeps the grouping)."""
    rows = np.asarray(rows)
    if len(rows) <= max_rows:
        return rows
    g = np.asarray(groups)[rows]
    _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    order = rng.permutation(len(counts))
    keep_subjects = order[np.cumsum(counts[order]) <= max_rows]
    if keep_subjects.size == 0:
        keep_subjects = order[:1]
    return rows[np.isin(inverse.reshape(-1), keep_subjects)]


def class_balanced_subsample(
    rows: np.ndarray, groups: np.ndarray, codes: np.ndarray, max_rows: int, rng: np.random.Generator
) -> np.ndarray:
    """About `max_rows` of `rows` by whole subjects, sharing the row budget between the classes.

    The budget is shared out class by class, rarest first, each class getting at most an equal share of
    what is left, so a 2 % class keeps every subject instead of the ~200 rows a plain subsample of 10k would
    leave it. Subjects are chosen by the labels they hold (a subject holding a rare class is taken for it,
    with all its rows), which keeps a permutation test exact: choosing subjects by their labels alone leaves
    the chosen subjects' latents as exchangeable under the null as before. Every class keeps at least 2
    subjects where it has them.
    """
    rows = np.asarray(rows)
    if len(rows) <= max_rows:
        return rows
    g, c = np.asarray(groups)[rows], np.asarray(codes)[rows]
    sizes = pd.Series(c).value_counts().sort_values()
    budget, left = {}, max_rows
    for i, (cls, size) in enumerate(sizes.items()):
        budget[cls] = min(int(size), left // (len(sizes) - i))
        left -= budget[cls]
    subject, g_codes = np.unique(g, return_inverse=True)
    g_codes = g_codes.reshape(-1)
    chosen = np.zeros(len(subject), dtype=bool)
    for cls in sizes.index:
        held = np.bincount(g_codes[c == cls], minlength=len(subject))  # rows of this class per subject
        have = int(held[chosen].sum())
        for taken, s_ in enumerate(rng.permutation(np.flatnonzero(held > 0))):
            if have >= budget[cls] and taken >= 2:
                break
            if not chosen[s_]:
                chosen[s_] = True
                have += int(held[s_])
    keep = np.flatnonzero(chosen[g_codes])
    return rows[keep]


def stratified_splits(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified subject-grouped (train, test) splits; k shrinks to the subjects of the rarest class.

    Raises `EmbedxError` when a class has fewer than 2 subjects: no split could train and test on it.
    """
    from embedx.errors import EmbedxError

    y = np.asarray(y)
    groups = np.asarray(groups)
    per_class = min(len(np.unique(groups[y == c])) for c in np.unique(y))
    k = int(min(folds, per_class, len(np.unique(groups))))
    if k < 2:
        raise EmbedxError(f"too few subjects per class for cross-validation ({per_class})")
    return fold_splits(stratified_folds(y, groups, k, seed))
