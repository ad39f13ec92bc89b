"""The probe: one estimator and one cross-validated scoring routine for every analysis in embedx.

Per-attribute probes, strata and ComBat controls, fairness, the cross-site matrix, the background-patch
control, the calibration and the dashboard's counterfactual direction all fit `LinearProbe` and score with
`cross_validated_probe` (or, for decision scores only, `out_of_fold_scores`). So one change of method reaches
every verdict, and one test of it covers them all.

`LinearProbe` (`embedx.analysis.linear_probe`, re-exported here; scikit-learn compatible): standardise ->
class-balanced linear SVM (SVR for a continuous attribute), C by inner subject-grouped CV. `ProbeConfig`
holds every knob and builds it (`config.estimator(task)`), so no caller assembles its own SVM.

`cross_validated_probe` scores one attribute (see docs/probes-and-fairness.md):
* outer folds stratified by class and grouped by subject; out-of-fold predictions give the score
  (balanced accuracy, chance exactly 1/K; or MAE against the out-of-fold median baseline);
* a 95 % CI by resampling subjects over the out-of-fold predictions, or on pilot cohorts by rerunning the
  cross-validation on subject resamples (`refit_bootstrap`) (`bootstrap.dropped` counts resamples
  that lost a class);
* a permutation p-value from `embedx.analysis.permutation` on label-free subject folds;
* `degenerate` when the probe predicts (nearly) one class or a constant: never "encoded";
* `untestable` when the subject-respecting permutations can hardly move the labels (see `SubjectPermuter`).

Scale policy (recorded in every result): training folds above `max_train_rows` rows are subsampled by
subject for the fit, C is tuned on at most `tune_max_rows` rows, and the permutation test runs on at most
`permutation_max_rows` rows (whole subjects; a rare class is kept whole, which leaves the test exact because
the choice depends on the labels only). Predictions, scores and CIs always cover every row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, r2_score, roc_auc_score

from embedx.analysis.cv_width import null_width, widened
from embedx.analysis.folds import (
    fold_splits,
    stratified_folds,
    stratified_splits,
    subject_codes,
)
from embedx.analysis.labels import far_outlier_note, label_strings, merge_small_classes, missing_mask
from embedx.analysis.linear_probe import C_GRID, PREDICT_CHUNK, LinearProbe
from embedx.analysis.permutation import probe_permutation_test
from embedx.analysis.probe_config import ProbeConfig
from embedx.analysis.probe_result import ProbeResult, judge_family
from embedx.analysis.recall_floor import recall_floor
from embedx.analysis.refit_bootstrap import REFIT_RESAMPLES, centred_interval, refit_replicates
from embedx.analysis.stats import (
    SubjectIndex,
    bootstrap_balanced_accuracy,
    bootstrap_correlation,
    bootstrap_mae,
    count_dropped,
    percentile_ci,
)
from embedx.errors import EmbedxError
from embedx.parallel import map_in_threads

__all__ = ["C_GRID", "LinearProbe", "ProbeConfig", "cross_validated_probe", "out_of_fold_scores"]

Kind = Literal["categorical", "binary", "continuous"]
DEGENERATE_SHARE = 0.99  # a classifier predicting one class for >= 99 % of rows says nothing
SMALL_CI_SUBJECTS = 30  # below this many subjects (in the rarest class) the CI comes from refits
REFIT_MAX_ROWS = 5_000  # refits on resamples cost 200 cross-validations: affordable up to here
MIN_MIXING = 0.1  # permutations that change < 10 % of what a free shuffle would: the test cannot reject


def out_of_fold_scores(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, config: ProbeConfig, fold: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Out-of-fold decision scores of a classification probe: (scores, the splits, notes).

    Binary labels give one score per row (positive class = the larger label); more classes give (n, K).
    Without `fold`, folds are stratified and subject-grouped; k shrinks to the subjects of the rarest class.
    """
    y = np.asarray(y)
    groups = subject_codes(groups)
    splits = stratified_splits(y, groups, config.folds, config.seed) if fold is None else fold_splits(fold)
    scores: np.ndarray | None = None
    notes: list[str] = []
    def fit_fold(split: tuple[np.ndarray, np.ndarray]) -> tuple[LinearProbe, np.ndarray]:
        train, test = split
        probe = config.estimator("classification").fit(X, y[train], groups[train], rows_of_X=train)
        return probe, probe.decision_function(X[test])

    for (_, test), (probe, s) in zip(splits, map_in_threads(fit_fold, splits), strict=True):
        notes += probe.notes_
        if scores is None:
            scores = np.zeros((len(y), *s.shape[1:]))
        scores[test] = s
    assert scores is not None
    return scores, splits, sorted(set(notes))


def _predict_rows(probe: LinearProbe, X: np.ndarray, rows: np.ndarray, k: int,
                  chunk: int = PREDICT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and decision columns for X[rows], a chunk of rows at a time (no whole-fold copy)."""
    preds, decisions = [], []
    for start in range(0, len(rows), chunk):
        part = X[rows[start:start + chunk]]
        preds.append(probe.predict(part))
        decisions.append(_decision_columns(probe, part, k))
    return np.concatenate(preds), np.concatenate(decisions)


def _decision_columns(probe: LinearProbe, X: np.ndarray, k: int) -> np.ndarray:
    """Decision scores laid out for all k classes (a class missing from a training fold scores lowest)."""
    scores = probe.decision_function(X)
    if k <= 2 or (scores.ndim == 2 and scores.shape[1] == k):
        return scores
    full = np.full((len(X), k), float(np.min(scores)) - 1.0)
    present = np.asarray(probe.classes_, dtype=int)
    if scores.ndim == 1:  # two classes present: the score favours the larger one
        full[:, present[1]], full[:, present[0]] = scores, -scores
    else:
        full[:, present] = scores
    return full


def _class_aucs(codes: np.ndarray, scores: np.ndarray, class_names: np.ndarray) -> dict[str, float]:
    """Each class's one-vs-rest AUC of the decision scores, highest first (sklearn's 'ovr' path wants
    probabilities). Their mean is the macro AUC; listed, they say which classes the probe tells apart (site C
    at 0.93, A at 0.55: the encoding is site C's). Descriptive, with no test per class."""
    aucs = {str(name): float(roc_auc_score(codes == c, scores[:, c]))
            for c, name in enumerate(class_names) if 0 < np.sum(codes == c) < len(codes)}
    return dict(sorted(aucs.items(), key=lambda item: -item[1]))


def _macro_auc(codes: np.ndarray, scores: np.ndarray, class_aucs: dict[str, float] | None) -> float:
    """Two classes: the AUC of the one decision score; more: the mean of the per-class AUCs."""
    if class_aucs is None:
        return float(roc_auc_score(codes == 1, scores if scores.ndim == 1 else scores[:, 1]))
    return float(np.mean(list(class_aucs.values()))) if class_aucs else float("nan")


def cross_validated_probe(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    kind: Kind,
    *,
    model: str = "model",
    attribute: str = "attribute",
    config: ProbeConfig | None = None,
    role: str | None = None,
    fold: np.ndarray | None = None,
    fold_X: Callable[[int], np.ndarray] | None = None,
) -> ProbeResult:
    """Probe one attribute from one model's latents (see the module doc); a single call is its own family.

    Rows with a missing label or a non-finite latent row are excluded and counted. Classes seen in fewer
    subjects than folds are merged into '(other)'. A `fold` array (row -> fold id, label-free) may be given to
    share folds between probes; with it, `fold_X(f)` may supply the matrix that fold f trains and tests on.
    """
    cfg = config or ProbeConfig()
    started = time.perf_counter()
    if kind not in ("categorical", "binary", "continuous"):
        raise EmbedxError(f"attribute {attribute!r}: unknown kind {kind!r}")
    X, y = np.asarray(X), np.asarray(y, dtype=object)
    groups = subject_codes(np.asarray(groups).astype(str))
    if X.ndim != 2 or len(X) != len(y) or len(y) != len(groups):
        raise EmbedxError(
            f"probe {model}/{attribute}: latents {X.shape}, labels {len(y)} and subjects "
            f"{len(groups)} do not line up"
        )
    continuous = kind == "continuous"
    base: dict[str, Any] = {
        "model": model,
        "attribute": attribute,
        "kind": kind,
        "role": role,
        "folds": cfg.folds,
        "metric": "mae" if continuous else "balanced_accuracy",
        "kernel": cfg.kernel,
        "n_total": len(y),
    }
    small_notes: list[str] = []
    missing = missing_mask(y)
    not_encoded = ~np.all(np.isfinite(X), axis=1)
    base.update(
        n_missing=int(missing.sum()),
        n_not_encoded=int((not_encoded & ~missing).sum()),
        rows_encoded=int((~not_encoded).sum()),
    )
    keep = ~missing & ~not_encoded
    if continuous:
        try:
            labels: np.ndarray = np.asarray(y[keep], dtype=float)
        except (TypeError, ValueError) as err:
            raise EmbedxError(
                f"attribute {attribute!r} is declared continuous but holds non-numbers"
            ) from err
        far = far_outlier_note(labels, groups[keep])
        if far:
            small_notes.append(far)
    else:
        raw = label_strings(y[keep])
        # every class's subjects before any is left out: what a skipped probe reports
        per_class = pd.DataFrame({"y": raw, "g": groups[keep]}).groupby("y")["g"].nunique()
        before = {"n": int(keep.sum()), "n_subjects": len(np.unique(groups[keep]))}
        labels, merged, dropped = merge_small_classes(raw, groups[keep], cfg.folds)
        base.update(merged_classes=tuple(merged), n_dropped_small_classes=dropped)
        if merged:  # said beside the verdict: a minority left out of "not encoded" must not go unseen
            gone = len(np.unique(groups[keep][np.array([v is None for v in labels])])) if dropped else 0
            small_notes.append(
                f"class(es) seen in fewer than {cfg.folds} subjects "
                + (f"left out of this probe ({gone} subject(s), {dropped} rows): " if dropped
                   else "merged into '(other)': ")
                + ", ".join(merged)
            )
        if dropped:
            keep[np.flatnonzero(keep)[np.array([v is None for v in labels])]] = False
            labels = labels[np.array([v is not None for v in labels])]
    rows = np.flatnonzero(keep)
    Xk, gk = (X, groups) if len(rows) == len(X) else (X[rows], groups[rows])  # no 450 MB copy at 220k
    base.update(n=len(rows), n_subjects=len(np.unique(gk)))
    if len(rows) == 0 and base["n_missing"] == base["n_total"]:
        return _skipped(base, "every value of the attribute is missing")
    if len(rows) == 0 and base["n_not_encoded"]:
        return _skipped(base, "no row with a value of the attribute has been encoded by this model")
    if not continuous:
        values, counts = np.unique(labels.astype(str), return_counts=True)
        base["classes"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
        if len(values) < 2:
            largest = per_class.sort_values(ascending=False)[:10]
            counts_text = ", ".join(f"{k}: {v}" for k, v in largest.items())
            return _skipped(base | before, f"fewer than 2 classes with at least {cfg.folds} subjects each "
                                           f"(subjects per class: {counts_text})")
    elif len(np.unique(labels)) < 2:
        return _skipped(base, "the attribute is constant")
    if base["n_subjects"] < cfg.folds:
        return _skipped(
            base, f"{base['n_subjects']} subjects with this attribute, fewer than {cfg.folds} folds"
        )

    class_names, codes = (
        (np.empty(0), labels.astype(float))
        if continuous
        else np.unique(labels.astype(str), return_inverse=True)
    )
    codes = np.asarray(codes).reshape(-1)
    k = len(class_names)
    fold_k = stratified_folds(codes, gk, cfg.folds, cfg.seed, continuous) if fold is None else fold[rows]
    task = "regression" if continuous else "classification"
    pred = np.zeros(len(rows), dtype=float if continuous else int)
    decision = np.zeros(len(rows)) if k <= 2 else np.zeros((len(rows), k))
    chance_pred = np.zeros(len(rows))
    notes: list[str] = list(small_notes)
    c_used, train_rows, name, any_subsampled = [], [], "", False
    c_by_fold: dict[int, float] = {}
    def fit_fold(split: tuple[int, tuple[np.ndarray, np.ndarray]]) -> tuple[Any, np.ndarray, np.ndarray]:
        f, (train, test) = split
        if not continuous and len(np.unique(codes[train])) < 2:
            return None, np.empty(0), np.empty(0)
        Xf = Xk if fold_X is None else np.asarray(fold_X(int(f)))[rows]
        probe = cfg.estimator(task).fit(Xf, codes[train], gk[train], rows_of_X=train)
        fold_pred, fold_decision = _predict_rows(probe, Xf, test, k)
        return probe, fold_pred, fold_decision

    splits = list(zip(np.unique(fold_k), fold_splits(fold_k), strict=True))
    for (f, (train, test)), (probe, fold_pred, fold_decision) in zip(
            splits, map_in_threads(fit_fold, splits), strict=True):
        chance_pred[test] = np.median(codes[train]) if continuous else 0
        if probe is None:
            pred[test] = codes[train][0]  # shared label-free folds can leave one class in training
            notes.append(f"fold {int(f)}: one class in its training rows; it predicts that class")
            continue
        pred[test] = fold_pred
        decision[test] = fold_decision
        notes += probe.notes_
        c_used.append(probe.C_)
        c_by_fold[int(f)] = probe.C_
        train_rows.append(probe.n_train_rows_)
        any_subsampled |= probe.n_train_rows_ < len(train)
        name = probe.estimator_name_

    index = SubjectIndex(gk)
    few = _fewest_subjects(codes, gk, continuous)
    refit = bool(cfg.n_bootstrap) and few < SMALL_CI_SUBJECTS
    refit_rows_ok = len(rows) <= REFIT_MAX_ROWS and len(c_by_fold) == len(splits)
    oof_resamples = 0 if refit and refit_rows_ok else cfg.n_bootstrap  # the refits replace them
    if continuous:
        score, chance = (
            float(mean_absolute_error(codes, pred)),
            float(mean_absolute_error(codes, chance_pred)),
        )
        replicates = bootstrap_mae(codes, pred, gk, oof_resamples, cfg.seed, index=index)
        # same seed, same subject weights: the baseline's replicates pair with the probe's
        gaps = replicates - bootstrap_mae(codes, chance_pred, gk, oof_resamples, cfg.seed, index=index)
        correlations = bootstrap_correlation(codes, pred, gk, oof_resamples, cfg.seed, index=index)
        extra = {
            "correlation": _correlation(codes, pred),
            "r2": float(r2_score(codes, pred)),
            "chance_r2": float(r2_score(codes, chance_pred)),
            "chance_method": "out-of-fold MAE of the training folds' median (DummyRegressor(median))",
        }
        degenerate = bool(np.std(pred) < 0.01 * np.std(codes))
    else:
        score, chance = float(balanced_accuracy_score(codes, pred)), 1.0 / k
        class_auc = _class_aucs(codes, decision, class_names) if k > 2 else None
        replicates = bootstrap_balanced_accuracy(codes, pred, gk, oof_resamples, cfg.seed, index=index)
        predicted = np.bincount(pred, minlength=k)
        extra = {
            "class_auc": class_auc,
            "auc": _macro_auc(codes, decision, class_auc),
            "auc_chance": 0.5,
            "chance_method": "1/K: the balanced accuracy of any predictor that ignores the latents",
            "predicted_classes": {str(c): int(n) for c, n in zip(class_names, predicted, strict=True)},
        }
        # one class predicted for (nearly) every row, beyond what that class's own share explains: a rare
        # class predicted exactly right also predicts the majority class for > 99 % of rows
        top = int(np.argmax(predicted))
        true_share = float(np.mean(codes == top))
        degenerate = bool(
            (predicted > 0).sum() < 2
            or predicted[top] >= max(DEGENERATE_SHARE, true_share + 0.01) * len(pred)
        )
    ci = percentile_ci(replicates) if oof_resamples else (float("nan"), float("nan"))
    if continuous and oof_resamples:
        extra.update(ci_vs_chance=percentile_ci(gaps), correlation_ci=percentile_ci(correlations))
    width = None
    if oof_resamples and c_used:  # what resampling fixed predictions misses, measured under the null
        width = null_width(Xk if fold_X is None else np.asarray(fold_X(int(splits[0][0])))[rows], codes, gk,
                           float(np.median(c_used)), cfg, continuous)
    if width is not None:
        factor = width.factors.get
        upper = np.inf if continuous else 1.0  # MAE >= 0; balanced accuracy in [0, 1]
        ci = widened(score, ci, factor("score", 1.0), lambda lo, hi: (max(0.0, lo), min(upper, hi)))
        if continuous:
            extra["ci_vs_chance"] = widened(score - chance, extra["ci_vs_chance"], factor("gap", 1.0))
            if extra["correlation"] is not None:
                extra["correlation_ci"] = widened(extra["correlation"], extra["correlation_ci"],
                                                  factor("correlation", 1.0),
                                                  lambda lo, hi: (max(-1.0, lo), min(1.0, hi)))
    if refit and refit_rows_ok:
        replicates = refit_replicates(Xk, codes, gk, fold_k, c_by_fold, cfg, continuous,
                                      min(cfg.n_bootstrap, REFIT_RESAMPLES),
                                      None if fold_X is None else (lambda f: np.asarray(fold_X(f))[rows]),
                                      versus_chance=continuous)
        if continuous:
            extra["ci_vs_chance"] = centred_interval(score - chance, replicates[:, 0] - replicates[:, 1],
                                                     True, clip=False)
            if extra["correlation"] is not None:
                low, high = centred_interval(extra["correlation"], replicates[:, 2], True, clip=False)
                extra["correlation_ci"] = (max(-1.0, low), min(1.0, high))
            replicates = replicates[:, 0]
        ci = centred_interval(score, replicates, continuous)
    floored = False
    if not continuous:  # resampling cannot see a recall's uncertainty at 0 or 1 (see recall_floor)
        resampled = ci
        ci, floored = recall_floor(score, ci, codes, pred, gk)
        if floored and (resampled[0] - ci[0]) + (ci[1] - resampled[1]) >= 0.01:
            notes.append("CI widened to the binomial (Wilson) uncertainty of a class recall at 0 or 1 over "
                         "its subjects, which resampling cannot show")
    permutation = probe_permutation_test(
        Xk,
        codes,
        gk,
        k,
        continuous,
        cfg,
        fold_k if fold is not None else None,
        None if fold_X is None else (lambda f: np.asarray(fold_X(int(f)))[rows]),
    )
    if degenerate:
        notes.append("the probe predicts (nearly) a single value: not evidence of encoding")
    who = f"{few} subjects {'in all' if continuous else 'in the rarest class'}"
    if refit and refit_rows_ok:
        notes.append(f"pilot-sized CI ({who}): each of {len(replicates)} subject resamples reran the whole "
                     "cross-validation, so the interval includes the probe's own variability")
    elif refit:
        notes.append(
            f"approximate CI: {who}; resampling subjects over fixed out-of-fold predictions leaves out the "
            "folds' own variability, and such 95 % intervals covered 79-86 % in simulations at this size "
            f"(refitting is done up to {REFIT_MAX_ROWS:,} rows; the verdict also needs the permutation p, "
            "whose error rate holds)"
        )
    untestable = None
    if permutation.get("mixing") is not None and permutation["mixing"] < MIN_MIXING:
        untestable = (
            f"the permutations barely move this label (mixing {permutation['mixing']:.2f}): it varies within "
            "subjects whose row counts are unique, so no subject can take another's labels; if it should be "
            "constant per subject, fix the rows that differ"
        )
    result = ProbeResult(
        **base,
        **extra,
        score=score,
        ci=ci,
        chance=chance,
        p_value=permutation.pop("p_value"),
        estimator=name,
        C=float(np.median(c_used)) if c_used else None,
        C_per_fold=tuple(c_used),
        degenerate=degenerate,
        untestable=untestable,
        bootstrap={
            "resamples": len(replicates) if cfg.n_bootstrap else 0,
            "dropped": count_dropped(replicates),
            "unit": "subject",
            "level": 0.95,
            "over": "refits on subject resamples" if refit and refit_rows_ok else "out-of-fold predictions",
            "widened": None if width is None else width.as_dict(),
            "recall_floor": floored,
        },
        permutation=permutation,
        train_rows_per_fold=tuple(train_rows),
        train_subsampled=any_subsampled,
        notes=tuple(sorted(set(notes))),
        seconds=round(time.perf_counter() - started, 3),
    )
    return judge_family([result], cfg.alpha)[0]


def _correlation(codes: np.ndarray, pred: np.ndarray) -> float | None:
    """Pearson r of out-of-fold predictions with the label; None when either is constant."""
    if np.ptp(pred) <= 1e-12 or np.ptp(codes) <= 1e-12:
        return None
    return float(np.corrcoef(codes, pred)[0, 1])


def _fewest_subjects(codes: np.ndarray, subjects: np.ndarray, continuous: bool) -> int:
    """Subjects in all (continuous) or in the class held by the fewest subjects."""
    if continuous:
        return len(np.unique(subjects))
    pairs = np.unique(np.stack([np.asarray(codes).astype(np.int64),
                                np.unique(subjects, return_inverse=True)[1].reshape(-1)]), axis=1)
    return int(np.bincount(pairs[0]).min()) if pairs.size else 0


def _skipped(base: dict[str, Any], reason: str) -> ProbeResult:
    return judge_family([ProbeResult(**base, skipped=reason)])[0]
