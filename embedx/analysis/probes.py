"""Per-attribute probes: how well can a simple model read an attribute off the latents?

A probe is only evidence when it is compared with chance on the *same* folds, carries an uncertainty that
respects patients, and survives multiple testing. So every probe here:

* uses outer folds from `StratifiedGroupKFold` by subject: no patient's images straddle train and test;
* fits scaler + SVM (SVR for continuous attributes) as one Pipeline, with C tuned by a grouped inner CV on the
  training fold only; scores come from the out-of-fold predictions;
* reports chance from a Dummy baseline on the same folds (stratified for classes: its expected balanced
  accuracy, computed in closed form from each fold's `class_prior_`; median for continuous: its actual MAE);
* gets a 95 % CI by resampling subjects over the out-of-fold predictions (no refits);
* gets a permutation p-value from a test that refits for every permutation (see `ridge_permutation_test`);
* is judged with Holm's correction across attributes x models: `encoded` only when the adjusted p < alpha
  AND the CI's bound is clear of chance.

Scale policy (documented in every result): training folds above `max_train_rows` rows are subsampled by
subject for the fit (linear probes saturate long before that), C is tuned on at most `tune_max_rows` rows,
and the permutation test runs on a subject subsample of at most `permutation_max_rows` rows. Predictions,
scores and CIs always cover every row.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.compose import TransformedTargetRegressor
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

from embedx.analysis.results import probe_table, verdict_text
from embedx.analysis.stats import (
    SubjectIndex,
    band,
    bootstrap_balanced_accuracy,
    bootstrap_mae,
    holm,
    percentile_ci,
    permutation_pvalue,
    permute_by_subject,
)
from embedx.errors import EmbedxError

log = logging.getLogger(__name__)

__all__ = [
    "ProbeConfig",
    "apply_holm",
    "grouped_folds",
    "probe_arrays",
    "probe_table",
    "probe_within_strata",
    "ridge_permutation_test",
]

Kind = Literal["categorical", "binary", "continuous"]
OTHER = "(other)"


@dataclass
class ProbeConfig:
    """Every knob of a probe; recorded in each result so that a number can be reproduced."""

    folds: int = 5
    inner_folds: int = 2  # grouped inner CV for C; 2 keeps tuning at a third of the probe cost
    # Standardised latents with n >> d: the probe's accuracy is flat in C above ~0.1, while liblinear's primal
    # solver slows down sharply at C >= 1 when the tuning subsample is near-separable.
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1)
    kernel: Literal["linear", "rbf"] = "linear"
    n_permutations: int = 1000
    n_bootstrap: int = 2000
    alpha: float = 0.05
    max_train_rows: int = 20_000
    tune_max_rows: int = 1_500
    permutation_max_rows: int = 10_000
    rbf_exact_max_rows: int = 10_000
    nystroem_components: int = 500
    ridge_lambdas: tuple[float, ...] = (1e-3, 1e-1, 10.0)
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise EmbedxError(f"probe folds must be at least 2, got {self.folds}")
        if self.kernel not in ("linear", "rbf"):
            raise EmbedxError(f"probe kernel must be 'linear' or 'rbf', got {self.kernel!r}")
        if self.n_permutations < 0 or self.n_bootstrap < 0:
            raise EmbedxError("numbers of permutations and bootstrap resamples cannot be negative")


# ---- labels


def _missing_mask(values: np.ndarray) -> np.ndarray:
    series = pd.Series(values, dtype=object)
    missing = series.isna().to_numpy()
    as_text = series.astype(str).str.strip().str.lower()
    return missing | as_text.isin(["", "nan", "none", "<na>"]).to_numpy()


def _label_strings(values: np.ndarray) -> np.ndarray:
    """Class labels as strings; floats that are whole numbers lose their '.0' (1.0 -> '1')."""
    out = []
    for v in values:
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            out.append(str(int(v)))
        elif isinstance(v, bytes):
            out.append(v.decode("utf-8", "replace"))
        else:
            out.append(str(v))
    return np.asarray(out, dtype=object)


def _merge_small_classes(
    y: np.ndarray, groups: np.ndarray, min_subjects: int
) -> tuple[np.ndarray, list[str], int]:
    """Merge classes seen in fewer than `min_subjects` subjects into one '(other)' class.

    Returns the new labels (rows of a still-too-small merged class are set to None), the merged class names
    and the number of dropped rows. Grouped folds cannot place a class in every test fold otherwise.
    """
    frame = pd.DataFrame({"y": y, "g": groups})
    subjects = frame.groupby("y")["g"].nunique()
    small = sorted(subjects.index[subjects < min_subjects].tolist())
    if not small:
        return y, [], 0
    out = y.copy()
    is_small = np.isin(y, small)
    out[is_small] = OTHER
    dropped = 0
    if frame.loc[is_small, "g"].nunique() < min_subjects or len(small) == 1:
        out[is_small] = None
        dropped = int(is_small.sum())
    return out, small, dropped


# ---- folds


# Above this many subjects, folds are dealt per subject (stratified by the subject's first label) instead of
# sklearn's StratifiedGroupKFold, whose per-group Python loop costs ~30 s at CheXpert's 65k patients.
FAST_FOLDS_MIN_SUBJECTS = 5_000


def grouped_folds(
    y: np.ndarray, groups: np.ndarray, folds: int, seed: int, continuous: bool = False
) -> np.ndarray:
    """Fold id per row, every subject in exactly one fold, classes (or quintiles) balanced across folds.

    `StratifiedGroupKFold` up to `FAST_FOLDS_MIN_SUBJECTS` subjects; above, `StratifiedKFold` over subjects
    labelled by their first row -- exact stratification when a label is constant within subject, and the
    same guarantee (no subject straddles folds) always.
    """
    if continuous:
        ranks = pd.Series(np.asarray(y, float)).rank(method="first").to_numpy()
        strata = np.minimum((ranks - 1) * 5 // len(ranks), 4).astype(int)
    else:
        strata = np.unique(y, return_inverse=True)[1].reshape(-1)
    fold = np.full(len(strata), -1, dtype=int)
    subjects, first, codes = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" -- handled by merging above
        if len(subjects) >= FAST_FOLDS_MIN_SUBJECTS:
            splitter_s = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            subject_fold = np.full(len(subjects), -1, dtype=int)
            for f, (_, test) in enumerate(splitter_s.split(np.zeros(len(subjects)), strata[first])):
                subject_fold[test] = f
            return subject_fold[codes.reshape(-1)]
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        for f, (_, test) in enumerate(splitter.split(np.zeros(len(strata)), strata, groups)):
            fold[test] = f
    return fold


def _subject_subsample(
    index_rows: np.ndarray, groups: np.ndarray, max_rows: int, rng: np.random.Generator
) -> np.ndarray:
    """At most ~max_rows of `index_rows`, taking whole subjects in random order (keeps the grouping)."""
    if len(index_rows) <= max_rows:
        return index_rows
    g = groups[index_rows]
    subjects, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    order = rng.permutation(len(subjects))
    keep_subjects = order[np.cumsum(counts[order]) <= max_rows]
    if keep_subjects.size == 0:
        keep_subjects = order[:1]
    keep = np.isin(inverse.reshape(-1), keep_subjects)
    return index_rows[keep]


# ---- estimators


def _estimator(
    continuous: bool, kernel: str, n_train: int, n_features: int, cfg: ProbeConfig, C: float
) -> tuple[Pipeline, str]:
    """Scaler + SVM as one Pipeline, so scaling is learnt on the training fold only."""
    seed = cfg.seed
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if kernel == "rbf" and n_train > cfg.rbf_exact_max_rows:
        steps.append(
            (
                "kernel",
                Nystroem(
                    gamma=1.0 / max(n_features, 1),
                    n_components=min(cfg.nystroem_components, n_train),
                    random_state=seed,
                ),
            )
        )
        name = f"Nystroem({cfg.nystroem_components}) + Linear" + ("SVR" if continuous else "SVC")
        exact_rbf = False
    else:
        exact_rbf = kernel == "rbf"
        name = (
            ("SVR" if continuous else "SVC") + "(rbf)"
            if exact_rbf
            else ("LinearSVR" if continuous else "LinearSVC")
        )
    if continuous:
        base = (
            SVR(kernel="rbf", C=C, gamma="scale", cache_size=1000)
            if exact_rbf
            else LinearSVR(
                C=C,
                loss="squared_epsilon_insensitive",
                epsilon=0.0,
                dual="auto",
                tol=1e-3,
                max_iter=5000,
                random_state=seed,
            )
        )
        model: Any = TransformedTargetRegressor(regressor=base, transformer=StandardScaler())
    else:
        model = (
            SVC(kernel="rbf", C=C, gamma="scale", cache_size=1000)
            if exact_rbf
            else LinearSVC(C=C, dual="auto", tol=1e-3, max_iter=5000, random_state=seed)
        )
    steps.append(("model", model))
    return Pipeline(steps), name


def _c_param(continuous: bool) -> str:
    return "model__regressor__C" if continuous else "model__C"


def _tune_c(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, continuous: bool, kernel: str, cfg: ProbeConfig
) -> float:
    """Grid-search C with grouped inner folds of the (subsampled) training fold only."""
    if len(cfg.c_grid) == 1:
        return float(cfg.c_grid[0])
    n_subjects = len(np.unique(groups))
    inner = min(cfg.inner_folds, n_subjects)
    if inner < 2:
        return float(cfg.c_grid[len(cfg.c_grid) // 2])
    estimator, _ = _estimator(continuous, kernel, len(y), X.shape[1], cfg, C=1.0)
    cv = (
        GroupKFold(n_splits=inner)
        if continuous
        else StratifiedGroupKFold(n_splits=inner, shuffle=True, random_state=cfg.seed)
    )
    search = GridSearchCV(
        estimator,
        {_c_param(continuous): list(cfg.c_grid)},
        cv=cv,
        n_jobs=1,
        scoring="neg_mean_absolute_error" if continuous else "balanced_accuracy",
        error_score=np.nan,
        refit=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(X, y, groups=groups)
    return float(search.best_params_[_c_param(continuous)])


def _decision(estimator: Pipeline, X: np.ndarray) -> np.ndarray:
    return np.asarray(estimator.decision_function(X), dtype=float)


def _macro_ovr_auc(y_codes: np.ndarray, scores: np.ndarray, n_classes: int) -> float:
    """Macro one-vs-rest AUC from decision scores (sklearn's 'ovr' path insists on probabilities)."""
    try:
        if n_classes == 2:
            s = scores if scores.ndim == 1 else scores[:, 1] - scores[:, 0]
            return float(roc_auc_score(y_codes == 1, s))
        aucs = [
            roc_auc_score(y_codes == k, scores[:, k])
            for k in range(n_classes)
            if 0 < np.sum(y_codes == k) < len(y_codes)
        ]
        return float(np.mean(aucs)) if aucs else float("nan")
    except ValueError:
        return float("nan")


# ---- permutation test


def ridge_permutation_test(
    X: np.ndarray,
    y: np.ndarray,
    fold: np.ndarray,
    groups: np.ndarray,
    continuous: bool,
    n_permutations: int,
    lambdas: Sequence[float] = (1e-3, 1e-1, 10.0),
    seed: int = 0,
    fold_X: Callable[[int], np.ndarray] | None = None,
) -> tuple[float, float, np.ndarray]:
    """Permutation test of "the latents carry no information about y", refitting for every permutation.

    Refitting an SVM a thousand times per attribute is out of reach at CheXpert size, so the test statistic
    is the out-of-fold score of a *ridge* probe on the same grouped folds (balanced accuracy of one-vs-rest
    least squares for classes, MAE for continuous), maximised over a fixed grid of penalties
    lambda = l * n_train. Ridge has a closed form: per fold the eigen-decomposition of X'X is label-free and
    computed once, so each permutation's exact refit is two matrix products, done for many permutations at
    once. The identical statistic (including the max over lambdas) is computed for the observed and every
    permuted labelling, so the test is exact under subject-level exchangeability whatever probe reports the
    effect size. Labels are permuted between subjects (`permute_by_subject`); folds stay fixed.

    Returns (observed statistic, p-value, null statistics).
    """

    def standardised(matrix: np.ndarray) -> np.ndarray:
        matrix = np.asarray(matrix, dtype=np.float64)
        mean, std = matrix.mean(axis=0), matrix.std(axis=0)
        return (matrix - mean) / np.where(std > 0, std, 1.0)

    X = standardised(X) if fold_X is None else None
    index = SubjectIndex(groups)
    rng = np.random.default_rng(seed)
    if continuous:
        y_values = np.asarray(y, dtype=float)
        n_classes = 0
    else:
        classes, codes = np.unique(y, return_inverse=True)
        y_values = codes.reshape(-1)
        n_classes = classes.size
    folds = [f for f in np.unique(fold) if f >= 0]
    prepared = []
    for f in folds:
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        Xf = X if fold_X is None else standardised(fold_X(f))  # per-fold data (e.g. harmonised by fold)
        mu = Xf[train].mean(axis=0)
        Xtr, Xte = Xf[train] - mu, Xf[test] - mu
        evals, evecs = np.linalg.eigh(Xtr.T @ Xtr)
        # float32 for the per-permutation products: twice as fast, far more precise than the test needs
        prepared.append(
            (
                train,
                test,
                (Xtr @ evecs).astype(np.float32),
                (Xte @ evecs).astype(np.float32),
                np.maximum(evals, 0.0),
            )
        )

    def statistic(labels: np.ndarray) -> np.ndarray:
        """Statistic for a batch of labellings (n x B) -> (B,)."""
        B = labels.shape[1]
        if continuous:
            targets = labels[:, :, None]  # n x B x 1
        else:
            targets = (labels[:, :, None] == np.arange(n_classes)[None, None, :]).astype(float)
        T = targets.reshape(len(labels), -1).astype(np.float32)
        best = np.full(B, np.inf if continuous else -np.inf)
        oof = {lam: np.empty_like(T) for lam in lambdas}
        for train, test, XtrV, XteV, evals in prepared:
            Ttr = T[train]
            t_mean = Ttr.mean(axis=0)
            proj = XtrV.T @ (Ttr - t_mean)
            for lam in lambdas:
                coef = proj / (evals + lam * len(train)).astype(np.float32)[:, None]
                oof[lam][test] = XteV @ coef + t_mean
        for lam in lambdas:
            pred = oof[lam].reshape(len(labels), B, -1)
            if continuous:
                score = np.mean(np.abs(pred[:, :, 0] - labels), axis=0)
                best = np.minimum(best, score)
            else:
                hard = pred.argmax(axis=2)
                cell = (labels + n_classes * np.arange(B)[None, :]).ravel()  # (class, permutation) bins
                hits = np.bincount(cell[(hard == labels).ravel()], minlength=n_classes * B)
                totals = np.bincount(cell, minlength=n_classes * B)
                with np.errstate(invalid="ignore", divide="ignore"):
                    recall = (hits / np.where(totals > 0, totals, np.nan)).reshape(B, n_classes)
                score = np.nanmean(recall, axis=1)
                best = np.maximum(best, score)
        return best

    observed = float(statistic(y_values[:, None])[0])
    width = max(1, n_classes)
    chunk = int(max(1, min(n_permutations, 2e7 // max(1, len(y_values) * width))))
    null = []
    done = 0
    while done < n_permutations:
        step = min(chunk, n_permutations - done)
        labels = np.column_stack([permute_by_subject(y_values, index, rng) for _ in range(step)])
        null.append(statistic(labels))
        done += step
    null_arr = np.concatenate(null) if null else np.empty(0)
    p = permutation_pvalue(observed, null_arr, greater=not continuous) if null_arr.size else float("nan")
    return observed, p, null_arr


# ---- the probe


def _skipped(base: dict[str, Any], reason: str) -> dict[str, Any]:
    base.update(
        score=None,
        ci=[None, None],
        chance=None,
        p_value=None,
        p_holm=None,
        encoded=False,
        skipped=reason,
        verdict=verdict_text(False, reason),
    )
    return base


def probe_arrays(
    X: np.ndarray,
    y: np.ndarray | pd.Series,
    groups: np.ndarray,
    kind: Kind,
    *,
    model: str = "model",
    attribute: str = "attribute",
    config: ProbeConfig | None = None,
    role: str | None = None,
    fold: np.ndarray | None = None,
    fold_X: Callable[[int], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Probe one attribute from one model's latents; returns the design card's probe dict.

    Rows whose label is missing or whose latent row is not finite are excluded and counted (`n_missing`,
    `n_not_encoded`). Classes seen in fewer subjects than folds are merged into '(other)' (`merged_classes`);
    when fewer than two classes or fewer subjects than folds remain, the result says `skipped` and why.
    A single call is its own family (Holm with m = 1); `apply_holm` rejudges a table of results. A `fold`
    array (row -> fold id) may be given to share folds between probes; with it, `fold_X(f)` may supply the
    matrix (same rows as X) that fold f trains and tests on -- e.g. latents harmonised by a ComBat fitted on
    that fold's training rows only (`embedx.analysis.combat`).
    """
    cfg = config or ProbeConfig()
    started = time.perf_counter()
    if kind not in ("categorical", "binary", "continuous"):
        raise EmbedxError(f"attribute {attribute!r}: unknown kind {kind!r}")
    X = np.asarray(X)
    y = np.asarray(y, dtype=object)
    # subjects as integer codes once: every later unique/sort over 220k subject strings would cost ~0.3 s
    groups = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)
    if X.ndim != 2 or len(X) != len(y) or len(y) != len(groups):
        raise EmbedxError(
            f"probe {model}/{attribute}: latents {X.shape}, labels {len(y)} and subjects "
            f"{len(groups)} do not line up"
        )
    continuous = kind == "continuous"
    result: dict[str, Any] = {
        "model": model,
        "attribute": attribute,
        "kind": kind,
        "metric": "mae" if continuous else "balanced_accuracy",
        "role": role,
        "n": 0,
        "classes": {},
        "n_total": len(y),
        "folds": cfg.folds,
        "kernel": cfg.kernel,
        "skipped": None,
    }
    missing = _missing_mask(y)
    not_encoded = ~np.all(np.isfinite(X), axis=1)
    result["n_missing"] = int(missing.sum())
    result["n_not_encoded"] = int((not_encoded & ~missing).sum())
    keep = ~missing & ~not_encoded
    if continuous:
        try:
            y_kept = np.asarray(y[keep], dtype=float)
        except (TypeError, ValueError) as err:
            raise EmbedxError(
                f"attribute {attribute!r} is declared continuous but holds non-numbers"
            ) from err
        labels: np.ndarray = y_kept
    else:
        labels = _label_strings(y[keep])
        labels, merged, dropped = _merge_small_classes(labels, groups[keep], cfg.folds)
        result["merged_classes"] = merged
        result["n_dropped_small_classes"] = dropped
        if dropped:
            rows = np.flatnonzero(keep)
            keep[rows[pd.isna(labels)]] = False
            labels = labels[~pd.isna(labels)]
    rows = np.flatnonzero(keep)
    Xk, gk = (X, groups) if len(rows) == len(X) else (X[rows], groups[rows])  # no 450 MB copy at 220k
    fold_k = None if fold is None else np.asarray(fold)[rows]
    result["n"] = len(rows)
    n_subjects = len(np.unique(gk))
    result["n_subjects"] = n_subjects
    if not continuous:
        values, counts = np.unique(labels, return_counts=True)
        result["classes"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
        if len(values) < 2:
            return _skipped(result, f"fewer than 2 classes with at least {cfg.folds} subjects each")
    elif len(np.unique(labels)) < 2:
        return _skipped(result, "the attribute is constant")
    if n_subjects < cfg.folds:
        return _skipped(result, f"{n_subjects} subjects with this attribute, fewer than {cfg.folds} folds")

    rng = np.random.default_rng(cfg.seed)
    if continuous:
        y_fit = labels.astype(float)
        class_names = np.empty(0)
    else:
        class_names, y_fit = np.unique(labels, return_inverse=True)
        y_fit = y_fit.reshape(-1)
    if fold_k is None:
        fold_k = grouped_folds(y_fit, gk, cfg.folds, cfg.seed, continuous=continuous)

    n_classes = len(class_names)
    oof_pred = np.zeros(len(rows), dtype=float if continuous else int)
    oof_score = np.zeros(len(rows)) if (continuous or n_classes == 2) else np.zeros((len(rows), n_classes))
    chance_oof = np.zeros(len(rows))
    expected_hits = np.zeros(max(n_classes, 1))
    chosen_c: list[float] = []
    estimator_name = ""
    train_rows_used: list[int] = []
    train_rows_all: list[int] = []
    for f in np.unique(fold_k):
        test = np.flatnonzero(fold_k == f)
        train_all = np.flatnonzero(fold_k != f)
        train = _subject_subsample(train_all, gk, cfg.max_train_rows, rng)
        if not continuous and len(np.unique(y_fit[train])) < n_classes:
            train = train_all  # a subsample lost a class: fit on the whole fold instead
        tune = _subject_subsample(train, gk, cfg.tune_max_rows, rng)
        Xf = Xk if fold_X is None else np.asarray(fold_X(int(f)))[rows]
        C = _tune_c(Xf[tune], y_fit[tune], gk[tune], continuous, cfg.kernel, cfg)
        chosen_c.append(C)
        estimator, estimator_name = _estimator(continuous, cfg.kernel, len(train), Xk.shape[1], cfg, C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.fit(Xf[train], y_fit[train])
        train_rows_used.append(len(train))
        train_rows_all.append(len(train_all))
        oof_pred[test] = estimator.predict(Xf[test])
        if continuous:
            dummy = DummyRegressor(strategy="median").fit(np.zeros((len(train_all), 1)), y_fit[train_all])
            chance_oof[test] = dummy.predict(np.zeros((len(test), 1)))
        else:
            oof_score[test] = _decision(estimator, Xf[test])
            dummy = DummyClassifier(strategy="stratified").fit(
                np.zeros((len(train_all), 1)), y_fit[train_all]
            )
            prior = np.zeros(n_classes)
            prior[dummy.classes_] = dummy.class_prior_
            # a random guess drawn from the training prior hits class k with probability prior[k]
            np.add.at(expected_hits, y_fit[test], prior[y_fit[test]])

    index = SubjectIndex(gk)
    if continuous:
        score = float(mean_absolute_error(y_fit, oof_pred))
        chance = float(mean_absolute_error(y_fit, chance_oof))
        result["r2"] = float(r2_score(y_fit, oof_pred))
        result["chance_r2"] = float(r2_score(y_fit, chance_oof))
        replicates = bootstrap_mae(y_fit, oof_pred, gk, cfg.n_bootstrap, cfg.seed, index=index)
    else:
        score = float(balanced_accuracy_score(y_fit, oof_pred))
        totals = np.bincount(y_fit, minlength=n_classes)
        chance = float(np.mean(expected_hits / totals))
        result["auc"] = _macro_ovr_auc(y_fit, oof_score, n_classes)
        result["auc_chance"] = 0.5
        replicates = bootstrap_balanced_accuracy(y_fit, oof_pred, gk, cfg.n_bootstrap, cfg.seed, index=index)
    ci = percentile_ci(replicates) if cfg.n_bootstrap else (float("nan"), float("nan"))

    perm_rows = _subject_subsample(np.arange(len(rows)), gk, cfg.permutation_max_rows, rng)
    if cfg.n_permutations > 0:
        observed, p_value, _ = ridge_permutation_test(
            Xk[perm_rows],
            y_fit[perm_rows],
            fold_k[perm_rows],
            gk[perm_rows],
            continuous,
            cfg.n_permutations,
            cfg.ridge_lambdas,
            seed=cfg.seed + 1,
            fold_X=None if fold_X is None else (lambda f: np.asarray(fold_X(int(f)))[rows][perm_rows]),
        )
    else:
        observed, p_value = float("nan"), float("nan")
    result.update(
        score=score,
        ci=list(ci),
        chance=chance,
        p_value=p_value,
        estimator=estimator_name,
        C=float(np.median(chosen_c)),
        C_per_fold=chosen_c,
        bootstrap={
            "resamples": cfg.n_bootstrap,
            "unit": "subject",
            "level": 0.95,
            "over": "out-of-fold predictions",
        },
        permutation={
            "permutations": cfg.n_permutations,
            "unit": "subject",
            "statistic": (
                "out-of-fold "
                + ("MAE" if continuous else "balanced accuracy")
                + " of a ridge probe (max over lambda grid), exact refit per permutation"
            ),
            "rows": len(perm_rows),
            "subsampled": bool(len(perm_rows) < len(rows)),
            "observed_statistic": observed,
            "lambdas": list(cfg.ridge_lambdas),
        },
        train_rows_per_fold=train_rows_used,
        train_subsampled=bool(any(u < a for u, a in zip(train_rows_used, train_rows_all, strict=True))),
        chance_method=(
            "DummyRegressor(median) out-of-fold MAE"
            if continuous
            else "expected balanced accuracy of DummyClassifier(stratified) on the same folds"
        ),
    )
    result["seconds"] = round(time.perf_counter() - started, 3)
    apply_holm([result], cfg.alpha)
    return result


def _clear_of_chance(result: dict[str, Any]) -> bool:
    ci, chance = result.get("ci") or [None, None], result.get("chance")
    if chance is None:
        return False
    if result["metric"] == "mae":
        return ci[1] is not None and not np.isnan(ci[1]) and ci[1] < chance
    return ci[0] is not None and not np.isnan(ci[0]) and ci[0] > chance


def apply_holm(results: list[dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Holm-adjust the p-values of a family of probes in place and set `encoded` / `verdict`.

    `encoded` is true only when the Holm-adjusted p < alpha AND the 95 % CI is clear of chance (lower bound
    above chance for accuracy, upper bound below the baseline MAE). Skipped probes are not tests.
    """
    pvals = [
        np.nan if (r.get("skipped") or r.get("p_value") is None) else float(r["p_value"]) for r in results
    ]
    adjusted = holm(pvals)
    m = int(np.sum(~np.isnan(adjusted)))
    floors = [1.0 / (1 + (r.get("permutation") or {}).get("permutations", 0)) for r in results]
    if m and min(floors) * m >= alpha:
        log.warning(
            "with %d tests and at most %d permutations no probe can pass Holm at alpha=%.2g; "
            "raise the number of permutations to at least %d",
            m,
            round(1 / min(floors)) - 1,
            alpha,
            int(np.ceil(m / alpha)),
        )
    for r, p_adj in zip(results, adjusted, strict=True):
        if r.get("skipped"):
            continue
        r["p_holm"] = None if np.isnan(p_adj) else float(p_adj)
        r["family_size"] = m
        r["alpha"] = alpha
        r["encoded"] = bool(r["p_holm"] is not None and r["p_holm"] < alpha and _clear_of_chance(r))
        r["verdict"] = verdict_text(r["encoded"])
    return results


def config_dict(cfg: ProbeConfig) -> dict[str, Any]:
    return asdict(cfg)


# ---- confound control: within strata


def strata_labels(
    frame: pd.DataFrame, kinds: dict[str, str], age_edges: tuple[float, ...] | None = None
) -> np.ndarray:
    """One label per row for the combination of the given columns ('F|40-59'); continuous ones banded."""
    parts = []
    for name in frame.columns:
        values = frame[name].to_numpy()
        if kinds.get(name) == "continuous":
            parts.append(band(values, age_edges if "age" in name.lower() else None, name=name))
        else:
            labels = _label_strings(values).astype(object)
            labels[_missing_mask(values)] = None
            parts.append(labels)
    out = np.empty(len(frame), dtype=object)
    for i in range(len(frame)):
        cells = [p[i] for p in parts]
        out[i] = None if any(c is None for c in cells) else "|".join(str(c) for c in cells)
    return out


def probe_within_strata(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    strata: pd.DataFrame,
    kinds: dict[str, str],
    *,
    kind: Kind = "categorical",
    attribute: str = "site",
    model: str = "model",
    config: ProbeConfig | None = None,
    min_rows: int = 30,
    age_edges: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Probe `attribute` separately inside each stratum (e.g. sex x age band).

    If site is still decodable among, say, women aged 60-79 only, the site probe cannot be explained by
    sites differing in their sex or age mix. Strata with fewer than `min_rows` rows are reported as skipped
    with their n; Holm runs across the strata probed. Rows with a missing stratum value are excluded.
    """
    cfg = config or ProbeConfig()
    labels = strata_labels(strata.reset_index(drop=True), kinds, age_edges)
    X = np.asarray(X)
    y = np.asarray(y, dtype=object)
    groups = np.asarray(groups).astype(str)
    results = []
    for stratum in sorted({s for s in labels if s is not None}):
        rows = np.flatnonzero(labels == stratum)
        if len(rows) < min_rows:
            r = _skipped(
                {
                    "model": model,
                    "attribute": attribute,
                    "kind": kind,
                    "metric": "balanced_accuracy",
                    "n": len(rows),
                    "classes": {},
                },
                f"stratum has {len(rows)} rows (< {min_rows})",
            )
        else:
            r = probe_arrays(
                X[rows], y[rows], groups[rows], kind, model=model, attribute=attribute, config=cfg
            )
        r["stratum"] = stratum
        results.append(r)
    apply_holm(results, cfg.alpha)
    probed = [r for r in results if not r.get("skipped")]
    return {
        "control": "within_strata",
        "model": model,
        "attribute": attribute,
        "within": list(strata.columns),
        "age_bands": list(age_edges) if age_edges else "default (<40, 40-59, 60-79, 80+)",
        "n_excluded": int(np.sum([s is None for s in labels])),
        "strata": results,
        "n_strata_probed": len(probed),
        "n_strata_encoded": int(sum(bool(r["encoded"]) for r in probed)),
        "encoded_in_every_stratum": bool(probed) and all(r["encoded"] for r in probed),
    }


# ---- the store


def _cnn_labels(store: Any, models: Sequence[str]) -> dict[str, str]:
    """Map model -> the attribute its supervised CNN was trained on (from /embeddings/<name> attrs)."""
    import yaml

    out: dict[str, str] = {}
    for name in models:
        info = store.embedding_info(name)
        if str(info.get("kind", "")) != "cnn":
            continue
        label = info.get("label")
        if not label and info.get("config"):
            try:
                config = yaml.safe_load(str(info["config"])) or {}
            except yaml.YAMLError:
                config = {}
            label = (config.get("data") or {}).get("label") if isinstance(config, dict) else None
        if label:
            out[name] = str(label)
    return out


def add_normalized_encoding(results: list[dict[str, Any]], cnn_labels: dict[str, str]) -> None:
    """(probe - chance) / (CNN - chance), where a supervised CNN for that attribute was probed too.

    The CNN's own features probed for its own label stand in for the supervised upper bound (UEB). Where the
    CNN was trained on these images that bound is optimistic, which makes the ratio conservative.
    """
    by_key = {(r["model"], r["attribute"]): r for r in results}
    for r in results:
        if r.get("skipped") or r.get("score") is None:
            continue
        for cnn, label in cnn_labels.items():
            ref = by_key.get((cnn, label))
            if label != r["attribute"] or ref is None or ref.get("score") is None or cnn == r["model"]:
                continue
            gap = ref["score"] - r["chance"]
            if r["metric"] == "mae":
                gap = r["chance"] - ref["score"]
                value = (r["chance"] - r["score"]) / gap if gap > 0 else None
            else:
                value = (r["score"] - r["chance"]) / gap if gap > 0 else None
            r["normalized_encoding"] = value
            r["normalized_by"] = cnn


def _resolve(names: Sequence[str] | None, known: Sequence[str], what: str, path: Any) -> list[str]:
    if not names:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EmbedxError(
            f"{path}: no {what} named {', '.join(map(repr, unknown))} (known: {', '.join(known) or 'none'})"
        )
    return list(names)


def run_probes(
    store_path: Any,
    models: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
    *,
    folds: int = 5,
    n_permutations: int | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    write: bool = True,
    kernel: Literal["linear", "rbf"] = "linear",
    config: ProbeConfig | None = None,
) -> list[dict[str, Any]]:
    """Probe every attribute (or those named) from every model (or those named) in a store.

    Holm's correction runs across the whole attributes x models table; results are written to
    `/analysis/probes/<model>__<attribute>` unless `write` is false. `config` overrides the keyword knobs.

    `n_permutations=None` picks max(1000, 2 m / alpha) for a family of m tests, so that the smallest
    possible Holm-adjusted p-value (m / (P + 1)) stays below alpha / 2 however many probes run.
    """
    from embedx.progress import progress_bar
    from embedx.store.h5store import Store

    with Store.open(store_path) as store:
        model_names = _resolve(models, store.models(), "model", store_path)
        schema = store.schema()
        attribute_names = _resolve(attributes, list(schema), "attribute", store_path)
        if config is not None:
            cfg = config
        else:
            family = len(model_names) * len(attribute_names)
            permutations = (
                n_permutations if n_permutations is not None else max(1000, int(np.ceil(2 * family / 0.05)))
            )
            cfg = ProbeConfig(
                folds=folds, n_permutations=permutations, n_bootstrap=n_bootstrap, seed=seed, kernel=kernel
            )
        if not model_names:
            raise EmbedxError(f"{store_path}: the store holds no latents yet (run `embedx encode` first)")
        if not attribute_names:
            raise EmbedxError(f"{store_path}: the store holds no attributes to probe")
        table = store.attributes()
        subjects = np.asarray(store.subject_ids).astype(str)
        cnn_labels = _cnn_labels(store, model_names)
        results: list[dict[str, Any]] = []
        with progress_bar(len(model_names) * len(attribute_names), "probes", unit="probe") as advance:
            for model in model_names:
                latents = store.latents(model)
                for attribute in attribute_names:
                    spec = schema[attribute]
                    r = probe_arrays(
                        latents,
                        table[attribute].to_numpy(),
                        subjects,
                        spec.kind,  # type: ignore[arg-type]
                        model=model,
                        attribute=attribute,
                        config=cfg,
                        role=spec.role,
                    )
                    results.append(r)
                    advance(1)
    apply_holm(results, cfg.alpha)
    add_normalized_encoding(results, cnn_labels)
    if write:
        from embedx.analysis.results import probe_key, to_jsonable

        with Store.open(store_path, mode="a") as store:
            for r in results:
                store.write_analysis("probes", probe_key(r), to_jsonable(r))
    return results
