"""Per-group metrics, intervals and gaps for fixed predictions: the numbers of a fairness audit.

Given out-of-fold predictions of any classifier (the probe's, or the user's own) and one group label per
row, this computes what a fairness reviewer checks (see fairness-anchors.md):

* per group, from fairlearn's MetricFrame: n (rows and subjects), positives, accuracy, TPR, FPR, AUC,
  selection rate, ECE; 95 % CIs by resampling subjects (`ci`; `ci_dropped` counts resamples in which a
  group lost a class);
* **groups too small to judge are shown, not dropped**: fewer than `min_group_n` subjects, or fewer than
  `min_group_class` positive or negative subjects, marks a group `too_small` and keeps it out of the gaps;
* **gaps as fairlearn defines them** (max - min over the eligible groups, e.g. the demographic-parity
  difference), and beside each (`gaps`): the two groups that make it, the *signed* difference between them
  with a bootstrap-SE interval (which always holds the estimate and may cross zero: the percentile interval
  of a "largest gap" is biased upward and can miss its own estimate), and a **permutation p-value** for "no
  gap": group labels exchanged between subjects (for TPR / FPR gaps, within the positives / negatives only),
  with a studentized statistic over every eligible group (`fairness_gaps.ClusterRates`), so that groups
  that differ only in how spread their errors are do not pass for a gap.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

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
from sklearn.metrics import accuracy_score, roc_auc_score

from embedx.analysis.fairness_gaps import (
    gap_evidence,
    gap_nulls,
    rates_from_counts,
)
from embedx.analysis.recall_floor import proportion_floor
from embedx.analysis.stats import (
    SubjectIndex,
    auc_weighted,
    count_dropped,
    normal_interval,
    percentile_ci,
)
from embedx.analysis.typed import JsonResult

__all__ = [
    "FairnessResult",
    "GroupRules",
    "expected_calibration_error",
    "fairness_from_predictions",
    "safe_auc",
    "subject_counts",
]

RATE_METRICS = ("accuracy", "tpr", "fpr", "selection_rate")
GAP_NAMES = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equal_opportunity_difference",
    "worst_group_auc",
)


MIN_SUBJECTS_FOR_CI = 5  # subjects of the class a metric is computed on (positives for TPR)


@dataclass(frozen=True)
class GroupRules:
    """When a group is too small to judge, and how much resampling the intervals and p-values get."""

    min_group_n: int = 30  # subjects
    # positive and negative subjects: with ~10, the gap's p rejected 9 % of null cohorts, with ~20 5-6 %
    min_group_class: int = 20
    n_bootstrap: int = 1000
    n_bootstrap_auc: int = 200
    n_permutations: int = 1000  # resamples of the gaps' bootstrap-t test
    ece_bins: int = 10
    seed: int = 0


@dataclass(frozen=True)
class FairnessResult(JsonResult):
    """One target x sensitive attribute (or intersection): per-group metrics, gaps and their evidence."""

    target: str
    sensitive: str
    by_group: dict[str, dict[str, Any]]
    demographic_parity_difference: float | None = None
    equalized_odds_difference: float | None = None
    demographic_parity_ratio: float | None = None
    equal_opportunity_difference: float | None = None
    worst_group_auc: float | None = None
    worst_group: str | None = None
    mae_difference: float | None = None
    worst_group_mae: float | None = None
    gaps: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps_ci: dict[str, list[float | None]] = field(default_factory=dict)
    gaps_note: str | None = None
    groups_excluded_from_gaps: tuple[str, ...] = ()
    n: int = 0  # rows with a value of the sensitive attribute
    n_missing_sensitive: int = 0  # rows without one
    n_subjects: int = 0
    n_missing_sensitive_subjects: int = 0  # subjects with a row that lacks the sensitive attribute
    model: str | None = None
    kind: str = "binary"
    positive_class: str | None = None
    operating_point: dict[str, Any] | None = None
    overall: dict[str, Any] = field(default_factory=dict)
    n_excluded: int = 0
    rows_encoded: int | None = None  # the model's encoded rows when this ran
    min_group_n: int = 0
    min_group_class: int = 0
    unit_for_too_small: str = "subjects"
    age_bands: Any = None
    bootstrap: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    tuple_fields = ("groups_excluded_from_gaps", "notes")


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


def display_order(group: str) -> tuple[tuple[int, float, str], ...]:
    """Sort key for group names: bands of a continuous attribute by their lower edge ("<40", "40-59",
    "60-79", "80+"; text order put "<40" last), every other name after them in text order; an intersection
    ("F|<40") part by part, so "F|<40" comes before "F|40-59" as "<40" does alone."""
    key = []
    for part in group.split("|"):
        match = re.match(r"^(<)?(-?\d+(?:\.\d+)?)", part)
        if match is None:
            key.append((2, 0.0, part))
        else:
            key.append((0 if match.group(1) else 1, float(match.group(2)), part))
    return tuple(key)


def subject_counts(labels: np.ndarray, groups: np.ndarray, flags: np.ndarray | None = None) -> pd.Series:
    frame = pd.DataFrame({"g": labels, "s": groups})
    if flags is not None:
        frame = frame[flags]
    return frame.groupby("g")["s"].nunique()


def _auc_ece_replicates(
    codes: np.ndarray,
    y: np.ndarray,
    prob: np.ndarray,
    index: SubjectIndex,
    n_groups: int,
    rules: GroupRules,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group AUC and ECE over subject resamples, as weighted statistics (one sort per group serves every
    resample): (n_bootstrap_auc, groups) each, NaN where a resample leaves a group without a class."""
    auc = np.full((rules.n_bootstrap_auc, n_groups), np.nan)
    ece = np.full((rules.n_bootstrap_auc, n_groups), np.nan)
    bins = np.minimum((prob * rules.ece_bins).astype(int), rules.ece_bins - 1)
    for start in range(0, rules.n_bootstrap_auc, 64):
        step = min(64, rules.n_bootstrap_auc - start)
        weights = index.weights(step, rng)[:, index.codes]  # subject multiplicities on their rows
        for j in range(n_groups):
            rows = np.flatnonzero(codes == j)
            w = weights[:, rows]
            auc[start : start + step, j] = auc_weighted(prob[rows], y[rows].astype(bool), w)
            onehot = np.eye(rules.ece_bins)[bins[rows]]
            gap = np.abs((w * y[rows]) @ onehot - (w * prob[rows]) @ onehot).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                ece[start : start + step, j] = np.where(w.sum(axis=1) > 0, gap / w.sum(axis=1), np.nan)
    return auc, ece


def fairness_from_predictions(
    name: str,
    labels: np.ndarray,
    y: np.ndarray,
    prob: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    rules: GroupRules | None = None,
    *,
    target: str = "target",
) -> FairnessResult:
    """Per-group metrics, CIs and gaps for fixed binary predictions (labels: group per row, None = missing).

    Public so that any classifier's predictions (not only the probe's) can be audited the same way.
    """
    rules = rules or GroupRules()
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
    subjects = subject_counts(lab, gr)
    pos_subjects = subject_counts(lab, gr, yt == 1)
    neg_subjects = subject_counts(lab, gr, yt == 0)
    counts = {
        g: (int(subjects.get(g, 0)), int(pos_subjects.get(g, 0)), int(neg_subjects.get(g, 0))) for g in names
    }
    too_small = {
        g: counts[g][0] < rules.min_group_n or min(counts[g][1:]) < rules.min_group_class for g in names
    }
    eligible = np.array([j for j, g in enumerate(names) if not too_small[g]], dtype=int)

    codes = np.searchsorted(np.asarray(names), lab)
    cell = yt * 2 + yp
    index = SubjectIndex(gr)
    per_subject = np.zeros((index.n_subjects, 4 * len(names)))
    np.add.at(per_subject, (index.codes, codes * 4 + cell), 1.0)
    rng = np.random.default_rng(rules.seed)
    rate_reps = {k: [] for k in RATE_METRICS}
    for start in range(0, rules.n_bootstrap, 64):
        step = min(64, rules.n_bootstrap - start)
        boot = rates_from_counts((index.weights(step, rng) @ per_subject).reshape(step, len(names), 4))
        for k in RATE_METRICS:
            rate_reps[k].append(boot[k])
    reps = {k: np.concatenate(v) if v else np.empty((0, len(names))) for k, v in rate_reps.items()}
    auc_reps, ece_reps = _auc_ece_replicates(codes, yt, pr, index, len(names), rules, rng)

    by_group: dict[str, dict[str, Any]] = {}
    for j in sorted(range(len(names)), key=lambda i: display_order(str(names[i]))):  # "<40" before "40-59"
        g = names[j]
        row = by.loc[g]
        entry: dict[str, Any] = {
            k: float(row[k]) for k in ("accuracy", "tpr", "fpr", "auc", "selection_rate", "ece")
        }
        entry.update(
            n=int(row["n"]),
            positives=int(row["positives"]),
            negatives=int(row["negatives"]),
            n_subjects=counts[g][0],
            positive_subjects=counts[g][1],
            negative_subjects=counts[g][2],
            too_small=too_small[g],
        )
        if np.isnan(entry["auc"]):
            entry["auc_note"] = "AUC undefined: this group holds only one class"
        if entry["positives"] == 0:  # fairlearn reports 0, which reads as "misses every positive"
            entry["tpr"] = float("nan")
            entry["tpr_note"] = "TPR undefined: this group holds no positives"
        if entry["negatives"] == 0:
            entry["fpr"] = float("nan")
            entry["fpr_note"] = "FPR undefined: this group holds no negatives"
        # a rate at 0 or 1 resamples to a zero-width interval: each is at least its Wilson interval
        n_of = {"accuracy": counts[g][0], "tpr": counts[g][1], "fpr": counts[g][2],
                "selection_rate": counts[g][0]}
        entry["ci"] = {k: proportion_floor(entry[k], percentile_ci(reps[k][:, j]), n_of[k])
                       for k in RATE_METRICS}
        entry["ci"]["auc"] = list(percentile_ci(auc_reps[:, j]))
        entry["ci"]["ece"] = list(percentile_ci(ece_reps[:, j]))
        # A resample of one or two patients' outcomes gives an interval of zero width around the estimate
        # ("TPR 1.000 [1.000, 1.000]" from one positive subject), which reads as certainty: none is shown.
        # The group's own size bounds accuracy, selection rate and ECE the same way: one subject's images
        # resample to themselves ("ECE 0.310 [0.310, 0.310]").
        few = {"tpr": counts[g][1], "fpr": counts[g][2], "auc": min(counts[g][1:]), "ece": counts[g][0],
               "accuracy": counts[g][0], "selection_rate": counts[g][0]}
        for metric, subjects_of_class in few.items():
            if subjects_of_class < MIN_SUBJECTS_FOR_CI:
                entry["ci"][metric] = [None, None]
                entry.setdefault("ci_note", f"no interval where the group or a class has fewer than "
                                 f"{MIN_SUBJECTS_FOR_CI} subjects in this group")  # fmt: skip
        entry["ci_dropped"] = {k: count_dropped(reps[k][:, j]) for k in ("tpr", "fpr")} | {
            "auc": count_dropped(auc_reps[:, j])
        }
        by_group[g] = entry
    base = {
        "target": target,
        "sensitive": name,
        "by_group": by_group,
        "n": int(present.sum()),
        "n_missing_sensitive": int((~present).sum()),
        "n_subjects": len(np.unique(groups[present])),
        "n_missing_sensitive_subjects": len(np.unique(groups[~present])),
        "groups_excluded_from_gaps": tuple(g for g in names if too_small[g]),
        "min_group_n": rules.min_group_n,
        "min_group_class": rules.min_group_class,
    }
    if len(names) < 2:  # nothing to compare, however large the group: not a question of size
        return FairnessResult(**base, gaps_note=f"the sensitive attribute has one value ({names[0]}): no "
                              "groups to compare" if len(names) else "no rows with a sensitive value")
    if eligible.size < 2:
        return FairnessResult(
            **base,
            gaps_note=(
                f"fewer than 2 groups large enough to compare (>= {rules.min_group_n} subjects, "
                f">= {rules.min_group_class} positive and negative subjects)"
            ),
        )
    rows_e = np.flatnonzero(np.isin(codes, eligible))
    sf, yt_e, yp_e = lab[rows_e], yt[rows_e], yp[rows_e]
    point = rates_from_counts(
        np.stack([np.bincount(cell[codes == j], minlength=4) for j in range(len(names))])
    )
    perm = gap_nulls(codes, cell, yt, gr, rows_e, len(names), eligible, rules.n_permutations, rules.seed + 1)
    gaps = gap_evidence(point, reps, perm, names, eligible, rules.n_permutations)
    aucs = {names[j]: by_group[names[j]]["auc"] for j in eligible if not np.isnan(by_group[names[j]]["auc"])}
    worst = min(aucs.values()) if aucs else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        worst_reps = np.nanmin(auc_reps[:, eligible], axis=1)
    gaps["worst_group_auc"] = {
        "estimate": worst,
        "ci": list(normal_interval(worst, worst_reps)) if worst is not None else [None, None],
        "ci_dropped": count_dropped(worst_reps),
    }
    return FairnessResult(
        **base,
        demographic_parity_difference=float(demographic_parity_difference(yt_e, yp_e, sensitive_features=sf)),
        demographic_parity_ratio=float(demographic_parity_ratio(yt_e, yp_e, sensitive_features=sf)),
        equalized_odds_difference=float(equalized_odds_difference(yt_e, yp_e, sensitive_features=sf)),
        equal_opportunity_difference=float(equal_opportunity_difference(yt_e, yp_e, sensitive_features=sf)),
        worst_group_auc=worst,
        worst_group=min(aucs, key=aucs.get) if aucs else None,  # type: ignore[arg-type]
        gaps=gaps,
        gaps_ci={k: v["ci"] for k, v in gaps.items()},
    )
