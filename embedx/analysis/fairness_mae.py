"""Fairness for a continuous target (age, a score): MAE and bias per group, the MAE gap and its evidence.

The rate-based gaps of `fairness_metrics` are not defined for a continuous target; here the gap is the
difference of group MAEs, with the same machinery: subject-counted small groups, a bootstrap-t interval
simultaneous over every pair of groups and a Welch bootstrap-t p for "no gap" (`fairness_gaps`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count
from sklearn.metrics import mean_absolute_error

from embedx.analysis.fairness_gaps import (
    GAP_INTERVAL,
    GAP_TEST,
    gap_p_value,
    mae_gap_null,
    studentized_pair_interval,
)
from embedx.analysis.fairness_metrics import FairnessResult, GroupRules, subject_counts
from embedx.analysis.stats import SubjectIndex, count_dropped, percentile_ci

__all__ = ["mae_by_group"]


def mae_by_group(
    name: str,
    labels: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    rules: GroupRules | None = None,
    *,
    target: str = "target",
) -> FairnessResult:
    """A continuous target: MAE and bias per group; the MAE gap with a bootstrap-t interval and p."""
    rules = rules or GroupRules()
    labels = np.asarray(labels, dtype=object)
    present = np.array([v is not None for v in labels])
    lab = labels[present].astype(str)
    yt, yp, gr = np.asarray(y, float)[present], np.asarray(pred, float)[present], np.asarray(groups)[present]
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
    subjects = subject_counts(lab, gr)
    index = SubjectIndex(gr)
    err = np.zeros((index.n_subjects, len(names)))
    cnt = np.zeros((index.n_subjects, len(names)))
    np.add.at(err, (index.codes, codes), np.abs(yt - yp))
    np.add.at(cnt, (index.codes, codes), 1.0)
    rng = np.random.default_rng(rules.seed)
    chunks = []
    for start in range(0, rules.n_bootstrap, 64):
        w = index.weights(min(64, rules.n_bootstrap - start), rng)
        with np.errstate(invalid="ignore", divide="ignore"):
            chunks.append((w @ err) / (w @ cnt))
    reps = np.concatenate(chunks) if chunks else np.empty((0, len(names)))
    by_group = {}
    for j, g in enumerate(names):
        row = by.loc[g]
        by_group[g] = {
            "n": int(row["n"]),
            "n_subjects": int(subjects.get(g, 0)),
            "mae": float(row["mae"]),
            "bias": float(row["bias"]),
            "mean_target": float(row["mean_target"]),
            "too_small": bool(subjects.get(g, 0) < rules.min_group_n),
            "ci": {"mae": list(percentile_ci(reps[:, j]))},
            "ci_dropped": count_dropped(reps[:, j]),
        }
    eligible = np.array([j for j, g in enumerate(names) if not by_group[g]["too_small"]], dtype=int)
    base = {
        "target": target,
        "sensitive": name,
        "by_group": by_group,
        "kind": "continuous",
        "n": int(present.sum()),
        "n_missing_sensitive": int((~present).sum()),
        "n_subjects": len(np.unique(np.asarray(groups)[present])),
        "n_missing_sensitive_subjects": len(np.unique(np.asarray(groups)[~present])),
        "min_group_n": rules.min_group_n,
        "groups_excluded_from_gaps": tuple(names[j] for j in range(len(names)) if j not in eligible),
        "gaps_note": "rate-based gaps are not defined for a continuous target; see mae_difference",
    }
    if eligible.size < 2:
        return FairnessResult(**base)
    maes = np.array([by_group[names[j]]["mae"] for j in eligible])
    hi, lo = int(np.argmax(maes)), int(np.argmin(maes))
    estimate = float(maes[hi] - maes[lo])
    rows_e = np.flatnonzero(np.isin(codes, eligible))
    draws = mae_gap_null(
        codes, np.abs(yt - yp), gr, rows_e, len(names), eligible, rules.n_permutations, rules.seed + 1
    )
    null_arr = draws.null
    p = gap_p_value(draws.observed, null_arr, estimate)
    gap = {
        "estimate": estimate,
        "pair": [names[eligible[hi]], names[eligible[lo]]],
        "signed_difference": estimate,
        "ci": studentized_pair_interval([draws], 0, hi, lo),
        "ci_dropped": count_dropped(draws.rates_star[:, hi]),
        "interval": GAP_INTERVAL,
        "p_value": p,
        "test": GAP_TEST,
        "resamples": rules.n_permutations,
        "resamples_dropped": count_dropped(null_arr),
    }
    return FairnessResult(
        **base,
        mae_difference=estimate,
        worst_group_mae=float(maes[hi]),
        worst_group=names[eligible[hi]],
        gaps={"mae_difference": gap},
        gaps_ci={"mae_difference": gap["ci"]},
    )
