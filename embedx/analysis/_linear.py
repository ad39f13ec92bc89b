"""The linear-probe toolkit the control experiments share (grouped folds, fixed-prediction AUC bootstrap).

The controls need things the per-attribute probes do not: fitting on one site and scoring another, and
bootstrapping many AUCs over the same resampled subjects. The classifier is the same family as the probes
(standardise -> linear SVM, in one Pipeline so scaling is learnt on training folds only), with C chosen by
an inner grouped CV on the training rows only.

Scale policy (as for the probes): a training set above `MAX_TRAIN_ROWS` rows is subsampled *by subject* for
the fit (linear probes saturate long before that), and C is tuned on at most `TUNE_MAX_ROWS` rows of it.
Scores and bootstraps always cover every row to be scored.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

C_GRID = (0.01, 0.1, 1.0)
MAX_TRAIN_ROWS = 20_000
TUNE_MAX_ROWS = 3_000


def subject_subsample(groups: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Row indices of whole subjects, drawn at random until about ``max_rows`` rows (all rows if fewer)."""
    if len(groups) <= max_rows:
        return np.arange(len(groups))
    subjects, codes = np.unique(groups, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(subjects))
    sizes = np.bincount(codes.reshape(-1), minlength=len(subjects))[order]
    keep = order[: int(np.searchsorted(np.cumsum(sizes), max_rows, side="right")) + 1]
    return np.flatnonzero(np.isin(codes.reshape(-1), keep))


def linear_svm(C: float = 0.1) -> Pipeline:
    return make_pipeline(StandardScaler(), LinearSVC(C=C, class_weight="balanced", max_iter=5000))


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def fit_tuned(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0, tune: bool = True) -> Pipeline:
    """Fit the linear SVM, C picked by a 3-fold grouped inner CV (balanced accuracy) on these rows only.

    A plain loop rather than GridSearchCV: the controls fit dozens of small models, and GridSearchCV's
    per-candidate overhead was most of their run time.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit_rows = subject_subsample(groups, MAX_TRAIN_ROWS, seed)
        X, y, groups = X[fit_rows], y[fit_rows], groups[fit_rows]
        n_groups = len(np.unique(groups))
        if not tune or n_groups < 6 or len(np.unique(y)) < 2:
            return linear_svm().fit(X, y)
        tune_rows = subject_subsample(groups, TUNE_MAX_ROWS, seed)
        Xt, yt, gt = X[tune_rows], y[tune_rows], groups[tune_rows]
        splits = [
            (tr, te) for tr, te in GroupKFold(n_splits=3).split(Xt, yt, gt) if len(np.unique(yt[tr])) > 1
        ]
        best_c, best_score = C_GRID[1], -np.inf
        for C in C_GRID:
            scores = [
                _balanced_accuracy(yt[te], linear_svm(C).fit(Xt[tr], yt[tr]).predict(Xt[te]))
                for tr, te in splits
            ]
            score = float(np.mean(scores)) if scores else -np.inf
            if score > best_score + 1e-12:
                best_c, best_score = C, score
        return linear_svm(best_c).fit(X, y)


def grouped_folds(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Subject-grouped, class-stratified folds; k shrinks to what the rarest class's subjects allow.

    The fold assignment is the probes' own (`embedx.analysis.probes.grouped_folds`: StratifiedGroupKFold
    for small cohorts, stratified folds over subjects for large ones, where StratifiedGroupKFold is slow).
    """
    from embedx.analysis.probes import grouped_folds as probe_folds

    y = np.asarray(y)
    classes = np.unique(y)
    per_class = min(len(np.unique(groups[y == c])) for c in classes)
    k = int(min(folds, per_class, len(np.unique(groups))))
    if k < 2:
        raise ValueError(f"too few subjects per class for cross-validation ({per_class})")
    fold = probe_folds(y, np.asarray(groups), k, seed)
    rows = np.arange(len(y))
    return [(rows[fold != f], rows[fold == f]) for f in range(k) if (fold == f).any()]


def oof_scores(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int, tune: bool = True
) -> np.ndarray:
    """Out-of-fold decision scores (binary) or predicted labels (multiclass) under grouped CV."""
    out: np.ndarray | None = None
    for train, test in grouped_folds(y, groups, folds, seed):
        model = fit_tuned(X[train], y[train], groups[train], seed, tune)
        pred = model.decision_function(X[test]) if len(np.unique(y)) == 2 else model.predict(X[test])
        if out is None:
            out = np.empty(len(y), dtype=pred.dtype)
        out[test] = pred
    assert out is not None
    return out


def auc_weighted(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count one half) for each row of ``weights`` (B, n): the bootstrap without refitting.

    A resample is a vector of multiplicities; AUC is the weighted Mann-Whitney statistic, computed from one
    sort shared by all B resamples. Rows where a class has zero weight give NaN.
    """
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    boundaries = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    pos_w = np.add.reduceat(w * positive[order], boundaries, axis=1)
    neg_w = np.add.reduceat(w * ~positive[order], boundaries, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    total_pos, total_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1) / (total_pos * total_neg)
    auc[(total_pos == 0) | (total_neg == 0)] = np.nan
    return auc


def subject_weights(
    strata: np.ndarray, groups: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n) row multiplicities: subjects drawn with replacement *within each stratum* (e.g. site).

    Resampling within strata keeps every site's size fixed, so a cross-site cell never loses its test set;
    every AUC of one replicate is computed on the same drawn subjects, which pairs the differences.
    """
    strata = np.asarray(strata)
    groups = np.asarray(groups)
    W = np.zeros((n_boot, len(groups)), dtype=np.float32)
    for stratum in np.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        subjects, codes = np.unique(groups[rows], return_inverse=True)
        draws = rng.multinomial(len(subjects), np.full(len(subjects), 1.0 / len(subjects)), size=n_boot)
        W[:, rows] = draws[:, codes.reshape(-1)]
    return W
