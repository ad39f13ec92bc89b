"""Fairness of a probe for a target (e.g. a finding), per sensitive attribute and per intersection.

The target's probe is the probe of every other analysis (`embedx.analysis.probe_core.LinearProbe`,
class-balanced, C tuned by subject-grouped inner CV). What a fairness reviewer checks first, and how it is
answered here (the metrics themselves are in `embedx.analysis.fairness_metrics`):

* **The operating point is never chosen on the scored data.** MEDFAIR picks its threshold on the split it
  scores. Here each outer training fold gets out-of-fold *validation* scores from an inner subject-grouped
  CV; Platt calibration is fitted and the threshold chosen (Youden's J, or the threshold reaching a target
  FPR) on those. The outer test fold is scored with that threshold and never seen before.
* **Groups too small to judge are shown, not dropped**, counted in subjects.
* Continuous sensitive attributes are banded (age: <40, 40-59, 60-79, 80+; others: quartiles); continuous
  targets get per-group MAE and bias instead of rates.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd
from fairlearn.metrics import false_positive_rate, true_positive_rate
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, mean_absolute_error, roc_curve

from embedx.analysis.fairness_mae import mae_by_group
from embedx.analysis.fairness_metrics import (
    FairnessResult,
    GroupRules,
    expected_calibration_error,
    fairness_from_predictions,
    safe_auc,
)
from embedx.analysis.folds import fold_splits, stratified_folds, subject_codes
from embedx.analysis.labels import is_age_name, label_strings, missing_mask, positive_class
from embedx.analysis.probe_core import ProbeConfig, out_of_fold_scores
from embedx.analysis.stats import band, holm
from embedx.errors import EmbedxError

log = logging.getLogger(__name__)

__all__ = [
    "FairnessConfig",
    "FairnessResult",
    "expected_calibration_error",
    "fairness_arrays",
    "fairness_from_predictions",
    "run_fairness",
    "safe_auc",
]


@dataclass(frozen=True)
class FairnessConfig:
    """Knobs of the fairness analysis; the probe's own knobs are its `ProbeConfig`."""

    probe: ProbeConfig = field(default_factory=ProbeConfig)
    validation_folds: int = 3
    threshold_rule: Literal["youden", "fpr"] = "youden"
    target_fpr: float = 0.2
    rules: GroupRules = field(default_factory=GroupRules)
    intersections: Literal["none", "pairs", "all"] = "pairs"
    age_edges: tuple[float, ...] | None = None

    @property
    def folds(self) -> int:
        return self.probe.folds


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
    pcfg = cfg.probe
    inner_cfg = ProbeConfig(**{**pcfg.as_dict(), "folds": cfg.validation_folds, "seed": pcfg.seed + 1})
    fold = stratified_folds(y, groups, pcfg.folds, pcfg.seed)
    prob, pred = np.zeros(len(y)), np.zeros(len(y), dtype=int)
    thresholds: list[float] = []
    notes: list[str] = []
    for train, test in fold_splits(fold):
        val_scores, _, inner_notes = out_of_fold_scores(X[train], y[train], groups[train], inner_cfg)
        platt = LogisticRegression().fit(val_scores[:, None], y[train])
        threshold = _threshold(y[train], platt.predict_proba(val_scores[:, None])[:, 1], cfg)
        probe = pcfg.estimator("classification").fit(X[train], y[train], groups[train])
        prob[test] = platt.predict_proba(probe.decision_function(X[test])[:, None])[:, 1]
        pred[test] = (prob[test] >= threshold).astype(int)
        thresholds.append(threshold)
        notes += inner_notes + probe.notes_
    rule = (
        "Youden's J (max TPR - FPR)"
        if cfg.threshold_rule == "youden"
        else f"largest FPR <= {cfg.target_fpr:g}"
    )
    return {
        "prob": prob,
        "pred": pred,
        "notes": sorted(set(notes)),
        "operating_point": {
            "rule": f"{rule} on validation scores (inner grouped folds of each outer training fold), "
            "Platt-calibrated; never on the scored fold",
            "thresholds_per_fold": thresholds,
        },
    }


def _oof_continuous(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: FairnessConfig) -> np.ndarray:
    fold = stratified_folds(y, groups, cfg.probe.folds, cfg.probe.seed, continuous=True)
    pred = np.zeros(len(y))
    for train, test in fold_splits(fold):
        pred[test] = cfg.probe.estimator("regression").fit(X[train], y[train], groups[train]).predict(X[test])
    return pred


def _group_labels(values: np.ndarray, kind: str, name: str, cfg: FairnessConfig) -> np.ndarray:
    if kind == "continuous":
        edges = cfg.age_edges if is_age_name(name) else None
        return band(np.asarray(values, dtype=float), edges, name=name)
    labels = label_strings(values).astype(object)
    labels[missing_mask(values)] = None
    return labels


def _groupings(
    sensitive: pd.DataFrame, kinds: dict[str, str], cfg: FairnessConfig
) -> list[tuple[str, np.ndarray]]:
    single = [
        (name, _group_labels(sensitive[name].to_numpy(), kinds.get(name, "categorical"), name, cfg))
        for name in sensitive.columns
    ]
    if cfg.intersections == "none" or len(single) < 2:
        return single
    combos = combinations(single, 2) if cfg.intersections == "pairs" else [tuple(single)]
    out = list(single)
    for combo in combos:
        labels = np.empty(len(sensitive), dtype=object)
        for i in range(len(sensitive)):
            cells = [c[1][i] for c in combo]
            labels[i] = None if any(c is None for c in cells) else "|".join(map(str, cells))
        out.append(("|".join(c[0] for c in combo), labels))
    return out


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
) -> list[FairnessResult]:
    """Fairness of a probe for `target`, one result per sensitive attribute and per intersection.

    Rows with a missing target or a non-finite latent row are excluded and counted; a row missing one
    sensitive value is left out of that attribute's groups only.
    """
    cfg = config or FairnessConfig()
    X, target = np.asarray(X), np.asarray(target, dtype=object)
    groups = subject_codes(np.asarray(groups).astype(str))
    sensitive = sensitive.reset_index(drop=True)
    rows = np.flatnonzero(~missing_mask(target) & np.all(np.isfinite(X), axis=1))
    Xk, gk, sk = X[rows], groups[rows], sensitive.iloc[rows].reset_index(drop=True)
    n_subjects = len(np.unique(gk))
    if n_subjects < cfg.folds:
        raise EmbedxError(
            f"fairness for {target_name!r}: {n_subjects} subjects, fewer than {cfg.folds} folds"
        )
    rules = cfg.rules
    base: dict[str, Any] = {
        "rows_encoded": int(np.all(np.isfinite(X), axis=1).sum()),
        "model": model,
        "n_excluded": int(len(target) - len(rows)),
        "age_bands": list(cfg.age_edges) if cfg.age_edges else "<40, 40-59, 60-79, 80+",
        "bootstrap": {
            "resamples": rules.n_bootstrap,
            "resamples_auc_ece": rules.n_bootstrap_auc,
            "unit": "subject",
            "gap_permutations": rules.n_permutations,
        },
    }
    if target_kind == "continuous":
        y = np.asarray(target[rows], dtype=float)
        pred = _oof_continuous(Xk, y, gk, cfg)
        overall = {"n": len(y), "n_subjects": n_subjects, "mae": float(mean_absolute_error(y, pred))}
        return [
            mae_by_group(name, labels, y, pred, gk, rules, target=target_name).replace(
                **base, overall=overall
            )
            for name, labels in _groupings(sk, sensitive_kinds, cfg)
        ]
    is_positive, _, positive_text = positive_class(target[rows], target_name, positive)
    y = is_positive.astype(int)
    pos_subjects = len(np.unique(gk[y == 1]))
    neg_subjects = len(np.unique(gk[y == 0]))
    if min(pos_subjects, neg_subjects) < cfg.folds:
        raise EmbedxError(
            f"fairness for {target_name!r}: too few subjects per class ({pos_subjects} positive, "
            f"{neg_subjects} negative; need {cfg.folds} of each)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        oof = _oof_binary(Xk, y, gk, cfg)
    overall = {
        "n": len(y),
        "n_subjects": n_subjects,
        "positives": int(y.sum()),
        "auc": safe_auc(y, oof["pred"], oof["prob"]),
        "accuracy": float(accuracy_score(y, oof["pred"])),
        "tpr": float(true_positive_rate(y, oof["pred"])),
        "fpr": float(false_positive_rate(y, oof["pred"])),
    }
    extra = dict(
        base,
        positive_class=positive_text,
        operating_point=oof["operating_point"],
        overall=overall,
        notes=tuple(oof["notes"]),
    )
    return [
        fairness_from_predictions(
            name, labels, y, oof["prob"], oof["pred"], gk, rules, target=target_name
        ).replace(**extra)
        for name, labels in _groupings(sk, sensitive_kinds, cfg)
    ]


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
) -> list[FairnessResult]:
    """Fairness of a `target` probe for one model (or every model), per sensitive attribute and intersection.

    `sensitive` defaults to every demographic attribute of the store's schema. Results are written to
    `/analysis/fairness/<model>__<target>__<sensitive>` unless `write` is false.
    """
    from embedx.analysis.probes import resolve_names
    from embedx.analysis.results import fairness_key
    from embedx.progress import progress_bar
    from embedx.store.h5store import Store

    cfg = config or FairnessConfig(probe=ProbeConfig(seed=seed), rules=GroupRules(seed=seed))
    with Store.open(store_path) as store:
        schema = store.schema()
        resolve_names([target], list(schema), "attribute", store_path)
        models = resolve_names([model] if model else None, store.models(), "model", store_path)
        if not models:
            raise EmbedxError(f"{store_path}: the store holds no latents yet (run `embedx encode` first)")
        if sensitive:
            names = resolve_names(sensitive, list(schema), "attribute", store_path)
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
        results: list[FairnessResult] = []
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
    results = holm_over_gaps(results)
    if write:
        with Store.open(store_path, mode="a") as store:
            for r in results:
                store.write_analysis("fairness", fairness_key(r), r.to_dict())
    return results


TESTED_GAPS = (
    "demographic_parity_difference", "equal_opportunity_difference", "equalized_odds_difference",
    "mae_difference",
)  # fmt: skip


def holm_over_gaps(results: list[FairnessResult], alpha: float = 0.05) -> list[FairnessResult]:
    """Holm over every gap's p of one model (each sensitive attribute and intersection x each gap), as the
    probes are corrected over their table: a dozen raw p-values per model would show a 'gap' by chance in
    about half of fair cohorts. Adds `p_holm` and `family_size` to each tested gap; the parity ratio shares
    the difference's test."""
    out = list(results)
    for model in dict.fromkeys(r.model for r in results):
        members = [i for i, r in enumerate(results) if r.model == model]
        tests = [(i, k) for i in members for k in TESTED_GAPS
                 if (results[i].gaps.get(k) or {}).get("p_value") is not None]  # fmt: skip
        adjusted = holm([results[i].gaps[k]["p_value"] for i, k in tests]) if tests else []
        for i in members:
            gaps = {k: dict(v) for k, v in results[i].gaps.items()}
            for (j, k), p_adj in zip(tests, adjusted, strict=True):
                if j == i:
                    significant = bool(p_adj < alpha)
                    gaps[k].update(p_holm=float(p_adj), family_size=len(tests), significant=significant)
            ratio = gaps.get("demographic_parity_ratio")
            difference = gaps.get("demographic_parity_difference")
            if ratio is not None and difference is not None and "p_holm" in difference:
                ratio.update(p_holm=difference["p_holm"], family_size=len(tests))
            out[i] = dataclasses.replace(results[i], gaps=gaps)
    return out
