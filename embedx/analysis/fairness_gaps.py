"""The evidence behind a fairness gap: which two groups make it, how sure, and is it there at all.

`gap_evidence` gives, for each gap of `fairness_from_predictions`, the extreme pair of groups, their signed
difference with an interval that is simultaneous over every pair of groups (bootstrap max-t: it always holds
the estimate, may cross zero, and stays valid although the pair was chosen as the most extreme) and a
permutation p-value for "no gap". The permutation nulls exchange group labels between subjects
(`SubjectPermuter`): across every row for the selection rate; within the positives for TPR and within the
negatives for FPR, so that a group's prevalence does not pass for a gap in its error rates. The statistic is
the max - min over the eligible groups each time, which accounts for having picked the extreme pair after
looking.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from embedx.analysis.stats import SubjectIndex, SubjectPermuter, count_dropped, permutation_pvalue

__all__ = [
    "gap_evidence",
    "gap_nulls",
    "mae_gap_null",
    "pair_critical_value",
    "rates_from_counts",
    "simultaneous_interval",
    "spread",
]


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


def pair_critical_value(points: list[np.ndarray], replicates: list[np.ndarray], level: float = 0.95) -> float:
    """The bootstrap max-t critical value over every pair of groups (in every component given).

    points[c] (G,) and replicates[c] (B, G) per component; returns q such that d_ij +- q se_ij covers all
    pairwise differences at once with probability `level`. The interval of the pair picked as the largest
    gap is then valid although it was picked after looking (a plain +-1.96 se interval around it excludes 0
    in a third of null cohorts with five groups). With two groups, q is about 1.96.
    """
    t_max = None
    for point, reps in zip(points, replicates, strict=True):
        i, j = np.triu_indices(len(point), k=1)
        if i.size == 0:
            continue
        d = point[i] - point[j]
        diffs = reps[:, i] - reps[:, j]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            se = np.nanstd(diffs, axis=0, ddof=1)
            t = np.abs(diffs - d) / np.where(se > 0, se, np.nan)
            t = np.nanmax(np.where(np.isfinite(t), t, np.nan), axis=1)
        t_max = t if t_max is None else np.fmax(t_max, t)
    if t_max is None or not np.isfinite(t_max).any():
        return float("nan")
    return float(np.nanquantile(t_max, level))


def simultaneous_interval(estimate: float, replicates: np.ndarray, q: float) -> list[float | None]:
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2 or not np.isfinite(estimate) or not np.isfinite(q):
        return [None, None]
    half = q * float(values.std(ddof=1))
    return [estimate - half, estimate + half]


def gap_evidence(
    rates: dict[str, np.ndarray],
    rate_reps: dict[str, np.ndarray],
    perm: dict[str, np.ndarray],
    names: list[str],
    eligible: np.ndarray,
    n_permutations: int,
) -> dict[str, dict[str, Any]]:
    """Signed pair difference, its simultaneous interval over all pairs, and the permutation p per gap."""
    out: dict[str, dict[str, Any]] = {}
    q = {
        components: pair_critical_value(
            [rates[c][eligible] for c in components], [rate_reps[c][:, eligible] for c in components]
        )
        for components in (("selection_rate",), ("tpr",), ("tpr", "fpr"))
    }
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
        p = permutation_pvalue(max(spreads.values()), null)
        out[gap] = {
            "estimate": max(spreads.values()),
            "component": component,
            "pair": [names[eligible[hi]], names[eligible[lo]]],
            "signed_difference": estimate,
            "ci": simultaneous_interval(estimate, reps, q[components]),
            "ci_dropped": count_dropped(reps),
            "interval": "bootstrap max-t interval, simultaneous over every pair of groups",
            "p_value": p,
            "permutations": n_permutations,
            "permutations_dropped": count_dropped(null),
        }
    sel = rates["selection_rate"][eligible]
    hi, lo = int(np.nanargmax(sel)), int(np.nanargmin(sel))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_reps = np.log(
            rate_reps["selection_rate"][:, eligible][:, lo] / rate_reps["selection_rate"][:, eligible][:, hi]
        )
        ratio = float(sel[lo] / sel[hi]) if sel[hi] > 0 else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sel = np.log(sel)
        log_reps_all = np.log(rate_reps["selection_rate"][:, eligible])
    q_log = pair_critical_value([log_sel], [log_reps_all])
    low, high = simultaneous_interval(float(np.log(ratio)) if ratio > 0 else float("nan"), log_reps, q_log)
    out["demographic_parity_ratio"] = {
        "estimate": ratio,
        "pair": [names[eligible[lo]], names[eligible[hi]]],
        "ci": [float(np.exp(low)), float(np.exp(high))] if low is not None else [None, None],
        "ci_dropped": count_dropped(log_reps),
        "p_value": out["demographic_parity_difference"]["p_value"],
        "interval": "bootstrap max-t interval on the log ratio, simultaneous over every pair of groups",
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
