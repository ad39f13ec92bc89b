"""The evidence behind a fairness gap: which two groups make it, how sure, and is it there at all.

`gap_evidence` gives, for each gap of `fairness_from_predictions`, the extreme pair of groups, their signed
difference with a bootstrap-SE interval (it always holds the estimate and may cross zero) and a permutation
p-value for "no gap". The permutation nulls exchange group labels between subjects (`SubjectPermuter`):
across every row for the selection rate; within the positives for TPR and within the negatives for FPR, so
that a group's prevalence does not pass for a gap in its error rates. The statistic is the max - min over the
eligible groups each time, which accounts for having picked the extreme pair after looking.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from embedx.analysis.stats import SubjectIndex, SubjectPermuter, count_dropped, normal_interval

__all__ = ["gap_evidence", "gap_nulls", "mae_gap_null", "rates_from_counts", "spread"]


def rates_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group rates from confusion counts (..., groups, 4) laid out as [TN, FP, FN, TP]."""
    tn, fp, fn, tp = (counts[..., k] for k in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / (tn + fp + fn + tp),
            "tpr": tp / (tp + fn),
            "fpr": fp / (fp + tn),
            "selection_rate": (tp + fp) / (tn + fp + fn + tp),
        }


def spread(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(values, axis=-1) - np.nanmin(values, axis=-1)


def permuted_counts(
    codes: np.ndarray,
    cell: np.ndarray,
    groups: np.ndarray,
    rows: np.ndarray,
    n_groups: int,
    n_perm: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n_perm, groups, 4) confusion counts with the group labels of `rows` exchanged between subjects."""
    if len(rows) == 0 or n_perm == 0:
        return np.zeros((n_perm, n_groups, 4))
    permuter = SubjectPermuter(codes[rows], SubjectIndex(groups[rows]))
    out = []
    for start in range(0, n_perm, 64):
        step = min(64, n_perm - start)
        perm = permuter.draw(rng, step)  # (rows, step)
        index = (perm * 4 + cell[rows][:, None]) + (n_groups * 4) * np.arange(step)[None, :]
        out.append(np.bincount(index.ravel(), minlength=step * n_groups * 4).reshape(step, n_groups, 4))
    return np.concatenate(out).astype(float)


def gap_evidence(
    rates: dict[str, np.ndarray],
    rate_reps: dict[str, np.ndarray],
    perm: dict[str, np.ndarray],
    names: list[str],
    eligible: np.ndarray,
    n_permutations: int,
) -> dict[str, dict[str, Any]]:
    """Signed pair difference, its bootstrap-SE interval and the permutation p for each gap."""
    out: dict[str, dict[str, Any]] = {}
    specs = {
        "demographic_parity_difference": ("selection_rate",),
        "equal_opportunity_difference": ("tpr",),
        "equalized_odds_difference": ("tpr", "fpr"),
    }
    for gap, components in specs.items():
        spreads = {c: float(spread(rates[c][eligible])) for c in components}
        component = max(spreads, key=lambda c: spreads[c])
        values = rates[component][eligible]
        hi, lo = int(np.nanargmax(values)), int(np.nanargmin(values))
        estimate = float(values[hi] - values[lo])
        reps = rate_reps[component][:, eligible][:, hi] - rate_reps[component][:, eligible][:, lo]
        null = np.max(np.stack([spread(perm[c][:, eligible]) for c in components]), axis=0)
        valid = null[np.isfinite(null)]
        p = (
            float((1 + np.sum(valid >= max(spreads.values()) - 1e-12)) / (1 + valid.size))
            if valid.size
            else None
        )
        out[gap] = {
            "estimate": max(spreads.values()),
            "component": component,
            "pair": [names[eligible[hi]], names[eligible[lo]]],
            "signed_difference": estimate,
            "ci": list(normal_interval(estimate, reps)),
            "ci_dropped": count_dropped(reps),
            "p_value": p,
            "permutations": n_permutations,
            "permutations_dropped": int(null.size - valid.size),
        }
    sel = rates["selection_rate"][eligible]
    hi, lo = int(np.nanargmax(sel)), int(np.nanargmin(sel))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_reps = np.log(
            rate_reps["selection_rate"][:, eligible][:, lo] / rate_reps["selection_rate"][:, eligible][:, hi]
        )
        ratio = float(sel[lo] / sel[hi]) if sel[hi] > 0 else float("nan")
    low, high = normal_interval(float(np.log(ratio)) if ratio > 0 else float("nan"), log_reps)
    out["demographic_parity_ratio"] = {
        "estimate": ratio,
        "pair": [names[eligible[lo]], names[eligible[hi]]],
        "ci": [float(np.exp(low)), float(np.exp(high))] if np.isfinite(low) else [None, None],
        "ci_dropped": count_dropped(log_reps),
        "p_value": out["demographic_parity_difference"]["p_value"],
        "interval": "bootstrap-SE interval on the log ratio",
    }
    return out


def gap_nulls(
    codes: np.ndarray,
    cell: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    rows: np.ndarray,
    n_groups: int,
    n_perm: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per-group rates under group labels exchanged between subjects: (n_perm, groups) per rate."""
    rng = np.random.default_rng(seed)
    nulls = {
        "selection_rate": rates_from_counts(
            permuted_counts(codes, cell, groups, rows, n_groups, n_perm, rng)
        )["selection_rate"]
    }
    for component, flag in (("tpr", 1), ("fpr", 0)):
        within = rows[y[rows] == flag]
        nulls[component] = rates_from_counts(
            permuted_counts(codes, cell, groups, within, n_groups, n_perm, rng)
        )[component]
    return nulls


def mae_gap_null(
    codes: np.ndarray,
    abs_err: np.ndarray,
    groups: np.ndarray,
    rows: np.ndarray,
    n_groups: int,
    eligible: np.ndarray,
    n_perm: int,
    seed: int,
) -> np.ndarray:
    """The max - min of group MAEs under group labels exchanged between subjects (n_perm values)."""
    permuter = SubjectPermuter(codes[rows], SubjectIndex(groups[rows]))
    err = abs_err[rows]
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, n_perm, 64):
        step = min(64, n_perm - start)
        idx = permuter.draw(rng, step) + n_groups * np.arange(step)[None, :]
        sums = np.bincount(idx.ravel(), weights=np.repeat(err, step), minlength=step * n_groups)
        totals = np.bincount(idx.ravel(), minlength=step * n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            null.append(spread((sums / totals).reshape(step, n_groups)[:, eligible]))
    return np.concatenate(null) if null else np.empty(0)
