"""Fairness of a probe for a target (e.g. a finding), per sensitive attribute and per intersection.

What a fairness reviewer checks, and how this module answers (see fairness-anchors.md):

* **The operating point is never chosen on the scored data.** MEDFAIR picks its threshold on the split it
  scores. Here each outer training fold is split again by subject (inner grouped folds); the inner
  out-of-fold scores are the *validation* scores on which Platt calibration is fitted and the threshold is
  chosen (Youden's J, or the threshold reaching a target FPR). The outer test fold is scored with that
  threshold and never seen before. The rule and the per-fold thresholds are recorded.
* **Per-group metrics come from fairlearn's MetricFrame** on the out-of-fold predictions (n, positives,
  accuracy, TPR, FPR, AUC, selection rate, ECE), and the gaps from fairlearn's own functions
  (`demographic_parity_difference` / `_ratio`, `equalized_odds_difference`, `equal_opportunity_difference`).
* **Groups too small to judge are shown, not dropped.** A group with n < `min_group_n` or fewer than
  `min_group_class` positives or negatives is marked `too_small: true` with its counts and is left out of
  the gap computations (a gap driven by 3 patients is noise); the excluded groups are listed.
* **Uncertainty by subject.** 95 % CIs for every group metric and every gap come from resampling subjects
  over the fixed out-of-fold predictions.
* **AUC on a one-class group is NaN with a reason**, never a crash.
* Continuous sensitive attributes are banded (age: <40, 40-59, 60-79, 80+; others: quartiles); continuous
  targets get per-group MAE and bias instead of rates.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, mean_absolute_error, roc_auc_score, roc_curve

from embedx.analysis.probes import (
    ProbeConfig,
    _estimator,
    _label_strings,
    _missing_mask,
    _resolve,
    _subject_subsample,
    _tune_c,
    grouped_folds,
)
from embedx.analysis.stats import SubjectIndex, band, percentile_ci
from embedx.errors import EmbedxError

log = logging.getLogger(__name__)

__all__ = [
    "FairnessConfig",
    "expected_calibration_error",
    "fairness_arrays",
    "fairness_from_predictions",
    "run_fairness",
    "safe_auc",
]

_POSITIVE_WORDS = ("1", "1.0", "true", "yes", "positive", "pos", "present", "abnormal", "finding", "disease")
RATE_METRICS = ("accuracy", "tpr", "fpr", "selection_rate")


@dataclass
class FairnessConfig:
    """Knobs of the fairness analysis; recorded in each result."""

    folds: int = 5
    inner_folds: int = 3
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0)
    threshold_rule: Literal["youden", "fpr"] = "youden"
    target_fpr: float = 0.2
    min_group_n: int = 30
    min_group_class: int = 5
    n_bootstrap: int = 1000
    n_bootstrap_auc: int = 200
    ece_bins: int = 10
    intersections: Literal["none", "pairs", "all"] = "pairs"
    age_edges: tuple[float, ...] | None = None
    max_train_rows: int = 20_000
    tune_max_rows: int = 2_000
    seed: int = 0

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(
            folds=self.folds,
            inner_folds=self.inner_folds,
            c_grid=self.c_grid,
            seed=self.seed,
            max_train_rows=self.max_train_rows,
            tune_max_rows=self.tune_max_rows,
        )


# ---- metrics that must not crash on small groups


def safe_auc(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores`; NaN when the group holds one class only (AUC is undefined there)."""
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, np.asarray(scores)))


def expected_calibration_error(
    y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray, bins: int = 10
) -> float:
    """ECE with equal-width probability bins: sum_b (n_b / n) |mean(y)_b - mean(p)_b|."""
    y_true, p = np.asarray(y_true, float), np.asarray(scores, float)
    if len(p) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    n_b = np.bincount(which, minlength=bins)
    y_b = np.bincount(which, weights=y_true, minlength=bins)
    p_b = np.bincount(which, weights=p, minlength=bins)
    used = n_b > 0
    return float(np.sum(np.abs(y_b[used] - p_b[used])) / len(p))


def _positives(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sum(y_true))


def _negatives(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.sum(1 - np.asarray(y_true)))


# ---- out-of-fold predictions with a validation-chosen operating point


def _threshold(y: np.ndarray, prob: np.ndarray, cfg: FairnessConfig) -> float:
    fpr, tpr, thresholds = roc_curve(y, prob)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if cfg.threshold_rule == "fpr":
        ok = np.flatnonzero(fpr <= cfg.target_fpr)
        return float(thresholds[ok[-1]]) if ok.size else float(thresholds[0])
    return float(thresholds[np.argmax(tpr - fpr)])


def _oof_binary(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: FairnessConfig) -> dict[str, Any]:
    """Out-of-fold calibrated probabilities and thresholded predictions, threshold from inner validation."""
    pcfg = cfg.probe_config()
    rng = np.random.default_rng(cfg.seed)
    fold = grouped_folds(y, groups, cfg.folds, cfg.seed)
    prob = np.zeros(len(y))
    pred = np.zeros(len(y), dtype=int)
    thresholds: list[float] = []
    for f in np.unique(fold):
        test = np.flatnonzero(fold == f)
        train = _subject_subsample(np.flatnonzero(fold != f), groups, cfg.max_train_rows, rng)
        tune = _subject_subsample(train, groups, cfg.tune_max_rows, rng)
        C = _tune_c(X[tune], y[tune], groups[tune], False, "linear", pcfg)
        inner = grouped_folds(
            y[train], groups[train], min(cfg.inner_folds, len(np.unique(groups[train]))), cfg.seed + 1
        )
        val_scores = np.zeros(len(train))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for g in np.unique(inner):
                fit_rows, val_rows = train[inner != g], train[inner == g]
                est, _ = _estimator(False, "linear", len(fit_rows), X.shape[1], pcfg, C)
                est.fit(X[fit_rows], y[fit_rows])
                val_scores[inner == g] = est.decision_function(X[val_rows])
            platt = LogisticRegression().fit(val_scores[:, None], y[train])
            threshold = _threshold(y[train], platt.predict_proba(val_scores[:, None])[:, 1], cfg)
            est, _ = _estimator(False, "linear", len(train), X.shape[1], pcfg, C)
            est.fit(X[train], y[train])
        prob[test] = platt.predict_proba(est.decision_function(X[test])[:, None])[:, 1]
        pred[test] = (prob[test] >= threshold).astype(int)
        thresholds.append(threshold)
    rule = (
        "Youden's J (max TPR - FPR)"
        if cfg.threshold_rule == "youden"
        else f"largest FPR <= {cfg.target_fpr:g}"
    )
    return {
        "prob": prob,
        "pred": pred,
        "fold": fold,
        "operating_point": {
            "rule": f"{rule} on validation scores (inner grouped folds of each outer training fold), "
            "Platt-calibrated; never on the scored fold",
            "thresholds_per_fold": thresholds,
        },
    }


def _oof_continuous(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: FairnessConfig) -> np.ndarray:
    pcfg = cfg.probe_config()
    rng = np.random.default_rng(cfg.seed)
    fold = grouped_folds(y, groups, cfg.folds, cfg.seed, continuous=True)
    pred = np.zeros(len(y))
    for f in np.unique(fold):
        test = np.flatnonzero(fold == f)
        train = _subject_subsample(np.flatnonzero(fold != f), groups, cfg.max_train_rows, rng)
        tune = _subject_subsample(train, groups, cfg.tune_max_rows, rng)
        C = _tune_c(X[tune], y[tune], groups[tune], True, "linear", pcfg)
        est, _ = _estimator(True, "linear", len(train), X.shape[1], pcfg, C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X[train], y[train])
        pred[test] = est.predict(X[test])
    return pred


# ---- grouping


def _group_labels(values: np.ndarray, kind: str, name: str, cfg: FairnessConfig) -> np.ndarray:
    if kind == "continuous":
        return band(
            np.asarray(values, dtype=float), cfg.age_edges if "age" in name.lower() else None, name=name
        )
    labels = _label_strings(np.asarray(values, dtype=object)).astype(object)
    labels[_missing_mask(np.asarray(values, dtype=object))] = None
    return labels


def _groupings(
    sensitive: pd.DataFrame, kinds: dict[str, str], cfg: FairnessConfig
) -> list[tuple[str, np.ndarray]]:
    single = [
        (name, _group_labels(sensitive[name].to_numpy(), kinds.get(name, "categorical"), name, cfg))
        for name in sensitive.columns
    ]
    out = list(single)
    if cfg.intersections == "none" or len(single) < 2:
        return out
    combos = combinations(single, 2) if cfg.intersections == "pairs" else [tuple(single)]
    for combo in combos:
        name = "|".join(c[0] for c in combo)
        parts = [c[1] for c in combo]
        labels = np.empty(len(sensitive), dtype=object)
        for i in range(len(sensitive)):
            cells = [p[i] for p in parts]
            labels[i] = None if any(c is None for c in cells) else "|".join(map(str, cells))
        out.append((name, labels))
    return out


# ---- per-grouping analysis


def _rates_from_counts(counts: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
    """Per-group rates from confusion counts laid out as (..., group * 4 + [TN, FP, FN, TP])."""
    counts = counts.reshape(*counts.shape[:-1], n_groups, 4)
    tn, fp, fn, tp = (counts[..., k] for k in range(4))
    n = tn + fp + fn + tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / n,
            "tpr": tp / (tp + fn),
            "fpr": fp / (fp + tn),
            "selection_rate": (tp + fp) / n,
        }


def _gaps(rates: dict[str, np.ndarray], auc: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """fairlearn's definitions (max - min over groups) from per-group rates; last axis = groups."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sel, tpr, fpr = rates["selection_rate"], rates["tpr"], rates["fpr"]
        d_tpr = np.nanmax(tpr, axis=-1) - np.nanmin(tpr, axis=-1)
        d_fpr = np.nanmax(fpr, axis=-1) - np.nanmin(fpr, axis=-1)
        out = {
            "demographic_parity_difference": np.nanmax(sel, axis=-1) - np.nanmin(sel, axis=-1),
            "demographic_parity_ratio": np.nanmin(sel, axis=-1) / np.nanmax(sel, axis=-1),
            "equalized_odds_difference": np.maximum(d_tpr, d_fpr),
            "equal_opportunity_difference": d_tpr,
        }
        if auc is not None:
            out["worst_group_auc"] = np.nanmin(auc, axis=-1)
    return out


def fairness_from_predictions(
    name: str,
    labels: np.ndarray,
    y: np.ndarray,
    prob: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    cfg: FairnessConfig,
) -> dict[str, Any]:
    """Per-group metrics, CIs and gaps for fixed binary predictions (labels: group per row, None = missing).

    Public so that any classifier's predictions (not only the probe's) can be audited the same way.
    """
    labels = np.asarray(labels, dtype=object)
    y, pred, prob = np.asarray(y).astype(int), np.asarray(pred).astype(int), np.asarray(prob, dtype=float)
    groups = np.asarray(groups).astype(str)
    present = np.array([v is not None for v in labels])
    lab = labels[present].astype(str)
    yt, yp, pr, gr = y[present], pred[present], prob[present], groups[present]
    frame = MetricFrame(
        metrics={
            "n": count,
            "positives": _positives,
            "negatives": _negatives,
            "accuracy": accuracy_score,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "selection_rate": selection_rate,
            "auc": safe_auc,
            "ece": expected_calibration_error,
        },
        y_true=yt,
        y_pred=yp,
        sensitive_features=pd.Series(lab, name=name),
        sample_params={"auc": {"scores": pr}, "ece": {"scores": pr}},
    )
    by = frame.by_group
    names = [str(g) for g in by.index]
    too_small = {
        g: bool(
            by.loc[g, "n"] < cfg.min_group_n
            or by.loc[g, "positives"] < cfg.min_group_class
            or by.loc[g, "negatives"] < cfg.min_group_class
        )
        for g in names
    }
    eligible = [g for g in names if not too_small[g]]
    elig_rows = np.isin(lab, eligible)

    # 95 % CIs by subject: rates through per-subject confusion counts, AUC / ECE through explicit resamples
    codes = np.searchsorted(np.asarray(names), lab)
    index = SubjectIndex(gr)
    cells = codes * 4 + yt.astype(int) * 2 + yp.astype(int)
    per_subject = np.zeros((index.n_subjects, 4 * len(names)))
    np.add.at(per_subject, (index.codes, cells), 1.0)
    rng = np.random.default_rng(cfg.seed)
    rate_reps: dict[str, list[np.ndarray]] = {k: [] for k in RATE_METRICS}
    gap_reps: dict[str, list[np.ndarray]] = {}
    elig_idx = np.array([names.index(g) for g in eligible], dtype=int)
    done = 0
    while done < cfg.n_bootstrap:
        step = min(64, cfg.n_bootstrap - done)
        rates = _rates_from_counts(index.weights(step, rng) @ per_subject, len(names))
        for k in RATE_METRICS:
            rate_reps[k].append(rates[k])
        if len(eligible) >= 2:
            for k, v in _gaps({k: r[:, elig_idx] for k, r in rates.items()}).items():
                gap_reps.setdefault(k, []).append(v)
        done += step
    auc_reps = np.full((cfg.n_bootstrap_auc, len(names)), np.nan)
    ece_reps = np.full((cfg.n_bootstrap_auc, len(names)), np.nan)
    for b in range(cfg.n_bootstrap_auc):
        rows = index.resample_rows(rng)
        for j in range(len(names)):
            sel = rows[codes[rows] == j]
            if sel.size:
                auc_reps[b, j] = safe_auc(yt[sel], yp[sel], pr[sel])
                ece_reps[b, j] = expected_calibration_error(yt[sel], yp[sel], pr[sel], cfg.ece_bins)

    def ci(values: list[np.ndarray] | np.ndarray, j: int) -> list[float]:
        arr = np.concatenate(values) if isinstance(values, list) else values
        return list(percentile_ci(arr[:, j])) if len(arr) else [float("nan"), float("nan")]

    by_group: dict[str, dict[str, Any]] = {}
    for j, g in enumerate(names):
        row = by.loc[g]
        entry = {k: float(row[k]) for k in ("accuracy", "tpr", "fpr", "auc", "selection_rate", "ece")}
        entry.update(
            n=int(row["n"]),
            positives=int(row["positives"]),
            negatives=int(row["negatives"]),
            too_small=too_small[g],
        )
        if np.isnan(entry["auc"]):
            entry["auc_note"] = "AUC undefined: this group holds only one class"
        entry["ci"] = {k: ci(rate_reps[k], j) for k in RATE_METRICS}
        entry["ci"]["auc"] = ci(auc_reps, j)
        entry["ci"]["ece"] = ci(ece_reps, j)
        by_group[g] = entry

    result: dict[str, Any] = {
        "sensitive": name,
        "by_group": by_group,
        "n": int(present.sum()),
        "n_missing_sensitive": int((~present).sum()),
        "groups_excluded_from_gaps": [g for g in names if too_small[g]],
    }
    if len(eligible) >= 2:
        sf = lab[elig_rows]
        yt_e, yp_e = yt[elig_rows], yp[elig_rows]
        result.update(
            demographic_parity_difference=float(
                demographic_parity_difference(yt_e, yp_e, sensitive_features=sf)
            ),
            demographic_parity_ratio=float(demographic_parity_ratio(yt_e, yp_e, sensitive_features=sf)),
            equalized_odds_difference=float(equalized_odds_difference(yt_e, yp_e, sensitive_features=sf)),
            equal_opportunity_difference=float(
                equal_opportunity_difference(yt_e, yp_e, sensitive_features=sf)
            ),
        )
        aucs = {g: by_group[g]["auc"] for g in eligible if not np.isnan(by_group[g]["auc"])}
        result["worst_group_auc"] = min(aucs.values()) if aucs else None
        result["worst_group"] = min(aucs, key=aucs.get) if aucs else None  # type: ignore[arg-type]
        gaps_ci = {k: list(percentile_ci(np.concatenate(v))) for k, v in gap_reps.items()}
        worst = np.nanmin(auc_reps[:, elig_idx], axis=1) if elig_idx.size else np.empty(0)
        gaps_ci["worst_group_auc"] = list(percentile_ci(worst))
        result["gaps_ci"] = gaps_ci
    else:
        for key in (
            "demographic_parity_difference",
            "demographic_parity_ratio",
            "equalized_odds_difference",
            "equal_opportunity_difference",
            "worst_group_auc",
        ):
            result[key] = None
        result["gaps_note"] = (
            f"fewer than 2 groups large enough to compare (n >= {cfg.min_group_n}, "
            f">= {cfg.min_group_class} positives and negatives)"
        )
    return result


def _continuous_grouping(
    name: str, labels: np.ndarray, y: np.ndarray, pred: np.ndarray, groups: np.ndarray, cfg: FairnessConfig
) -> dict[str, Any]:
    present = np.array([v is not None for v in labels])
    lab = labels[present].astype(str)
    yt, yp, gr = y[present], pred[present], groups[present]
    frame = MetricFrame(
        metrics={
            "n": count,
            "mae": mean_absolute_error,
            "bias": lambda a, b: float(np.mean(np.asarray(b) - np.asarray(a))),
            "mean_target": lambda a, b: float(np.mean(a)),
        },
        y_true=yt,
        y_pred=yp,
        sensitive_features=pd.Series(lab, name=name),
    )
    by = frame.by_group
    names = [str(g) for g in by.index]
    codes = np.searchsorted(np.asarray(names), lab)
    index = SubjectIndex(gr)
    err = np.zeros((index.n_subjects, len(names)))
    cnt = np.zeros((index.n_subjects, len(names)))
    np.add.at(err, (index.codes, codes), np.abs(yt - yp))
    np.add.at(cnt, (index.codes, codes), 1.0)
    rng = np.random.default_rng(cfg.seed)
    reps = []
    for _ in range(0, cfg.n_bootstrap, 64):
        w = index.weights(min(64, cfg.n_bootstrap - len(reps) * 64), rng)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps.append((w @ err) / (w @ cnt))
    reps_arr = np.concatenate(reps) if reps else np.empty((0, len(names)))
    by_group = {}
    for j, g in enumerate(names):
        row = by.loc[g]
        by_group[g] = {
            "n": int(row["n"]),
            "mae": float(row["mae"]),
            "bias": float(row["bias"]),
            "mean_target": float(row["mean_target"]),
            "too_small": bool(row["n"] < cfg.min_group_n),
            "ci": {"mae": list(percentile_ci(reps_arr[:, j])) if len(reps_arr) else [None, None]},
        }
    eligible = [g for g in names if not by_group[g]["too_small"]]
    maes = [by_group[g]["mae"] for g in eligible]
    return {
        "sensitive": name,
        "by_group": by_group,
        "n": int(present.sum()),
        "n_missing_sensitive": int((~present).sum()),
        "groups_excluded_from_gaps": [g for g in names if by_group[g]["too_small"]],
        "mae_difference": (max(maes) - min(maes)) if len(maes) >= 2 else None,
        "worst_group_mae": max(maes) if maes else None,
        "worst_group": eligible[int(np.argmax(maes))] if maes else None,
        "demographic_parity_difference": None,
        "equalized_odds_difference": None,
        "gaps_note": "rate-based gaps are not defined for a continuous target; see mae_difference",
    }


def _binarise(values: np.ndarray, positive: str | None, target: str) -> tuple[np.ndarray, str]:
    labels = _label_strings(values)
    classes = sorted(set(labels.tolist()))
    if positive is not None:
        positive = str(positive)
        if positive not in classes:
            raise EmbedxError(
                f"target {target!r}: positive class {positive!r} not among its values {classes}"
            )
    elif len(classes) == 2:
        hits = [c for c in classes if c.lower() in _POSITIVE_WORDS]
        positive = hits[0] if len(hits) == 1 else classes[1]
    else:
        raise EmbedxError(
            f"target {target!r} has {len(classes)} classes {classes[:8]}; fairness needs a binary "
            "target: name the positive class (--positive VALUE) to compare it with the rest"
        )
    return (labels == positive).astype(int), positive


def fairness_arrays(
    X: np.ndarray,
    target: np.ndarray,
    sensitive: pd.DataFrame,
    groups: np.ndarray,
    *,
    target_kind: str,
    sensitive_kinds: dict[str, str],
    target_name: str = "target",
    model: str = "model",
    positive: str | None = None,
    config: FairnessConfig | None = None,
) -> list[dict[str, Any]]:
    """Fairness of a probe for `target`, one result per sensitive attribute and per intersection.

    Rows with a missing target or a non-finite latent row are excluded and counted; a row missing one
    sensitive value is left out of that attribute's groups only.
    """
    cfg = config or FairnessConfig()
    X = np.asarray(X)
    target = np.asarray(target, dtype=object)
    groups = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)  # integer codes
    sensitive = sensitive.reset_index(drop=True)
    keep = ~_missing_mask(target) & np.all(np.isfinite(X), axis=1)
    rows = np.flatnonzero(keep)
    Xk, gk, sk = X[rows], groups[rows], sensitive.iloc[rows].reset_index(drop=True)
    if len(np.unique(gk)) < cfg.folds:
        raise EmbedxError(
            f"fairness for {target_name!r}: {len(np.unique(gk))} subjects, fewer than {cfg.folds} folds"
        )
    base: dict[str, Any] = {
        "model": model,
        "target": target_name,
        "n_excluded": int(len(target) - len(rows)),
        "min_group_n": cfg.min_group_n,
        "min_group_class": cfg.min_group_class,
        "age_bands": list(cfg.age_edges) if cfg.age_edges else "<40, 40-59, 60-79, 80+",
        "bootstrap": {
            "resamples": cfg.n_bootstrap,
            "resamples_auc_ece": cfg.n_bootstrap_auc,
            "unit": "subject",
        },
    }
    results = []
    if target_kind == "continuous":
        y = np.asarray(target[rows], dtype=float)
        pred = _oof_continuous(Xk, y, gk, cfg)
        base.update(kind="continuous", overall={"n": len(y), "mae": float(mean_absolute_error(y, pred))})
        for name, labels in _groupings(sk, sensitive_kinds, cfg):
            results.append({**base, **_continuous_grouping(name, labels, y, pred, gk, cfg)})
        return results
    y, positive_class = _binarise(target[rows], positive, target_name)
    if min(y.sum(), len(y) - y.sum()) < cfg.folds:
        raise EmbedxError(
            f"fairness for {target_name!r}: too few positives or negatives ({int(y.sum())} of {len(y)})"
        )
    oof = _oof_binary(Xk, y, gk, cfg)
    base.update(
        kind="binary",
        positive_class=positive_class,
        operating_point=oof["operating_point"],
        overall={
            "n": len(y),
            "positives": int(y.sum()),
            "auc": safe_auc(y, oof["pred"], oof["prob"]),
            "accuracy": float(accuracy_score(y, oof["pred"])),
            "tpr": float(true_positive_rate(y, oof["pred"])),
            "fpr": float(false_positive_rate(y, oof["pred"])),
        },
    )
    for name, labels in _groupings(sk, sensitive_kinds, cfg):
        results.append(
            {**base, **fairness_from_predictions(name, labels, y, oof["prob"], oof["pred"], gk, cfg)}
        )
    return results


def run_fairness(
    store_path: Any,
    target: str,
    sensitive: Sequence[str] | None = None,
    model: str | None = None,
    *,
    seed: int = 0,
    write: bool = True,
    positive: str | None = None,
    config: FairnessConfig | None = None,
) -> list[dict[str, Any]]:
    """Fairness of a `target` probe for one model (or every model), per sensitive attribute and intersection.

    `sensitive` defaults to every demographic attribute of the store's schema. Results are written to
    `/analysis/fairness/<model>__<target>__<sensitive>` unless `write` is false.
    """
    from embedx.analysis.results import fairness_key, to_jsonable
    from embedx.progress import progress_bar
    from embedx.store.h5store import Store

    cfg = config or FairnessConfig(seed=seed)
    with Store.open(store_path) as store:
        schema = store.schema()
        _resolve([target], list(schema), "attribute", store_path)
        models = _resolve([model] if model else None, store.models(), "model", store_path)
        if not models:
            raise EmbedxError(f"{store_path}: the store holds no latents yet (run `embedx encode` first)")
        if sensitive:
            names = _resolve(sensitive, list(schema), "attribute", store_path)
        else:
            names = [n for n, s in schema.items() if s.role == "demographic" and n != target]
            if not names:
                raise EmbedxError(
                    f"{store_path}: no demographic attributes in the schema; name them with --sensitive"
                )
        names = [n for n in names if n != target]
        table = store.attributes()
        subjects = np.asarray(store.subject_ids).astype(str)
        kinds = {n: s.kind for n, s in schema.items()}
        results: list[dict[str, Any]] = []
        with progress_bar(len(models), f"fairness {target}", unit="model") as advance:
            for name in models:
                results.extend(
                    fairness_arrays(
                        store.latents(name),
                        table[target].to_numpy(),
                        table[names],
                        subjects,
                        target_kind=kinds[target],
                        sensitive_kinds=kinds,
                        target_name=target,
                        model=name,
                        positive=positive,
                        config=cfg,
                    )
                )
                advance(1)
    results = [to_jsonable(r) for r in results]
    if write:
        with Store.open(store_path, mode="a") as store:
            for r in results:
                store.write_analysis("fairness", fairness_key(r), r)
    return results
