"""The evidence behind a fairness gap: which two groups make it, how sure, and is it there at all.

`gap_evidence` gives, for each gap of `fairness_from_predictions`, the extreme pair of groups, their signed
difference with an interval that is simultaneous over every pair of groups (bootstrap max-t: it always holds
the estimate, may cross zero, and stays valid although the pair was chosen as the most extreme) and a
p-value for "no gap": the selection rate over every row, TPR within the positives and FPR within the
negatives, so that a group's prevalence does not pass for a gap in its error rates.

The p-value's test is a bootstrap-t of Welch's heteroscedastic ANOVA (`studentized_test`): the groups'
ratios weighted by their cluster-robust precision, W = sum_g (r_g - r_w)^2 / v_g, referred to its
distribution under subjects resampled within each group with the groups' ratios made equal. It tests
equal rates (or MAEs) alone, whatever the groups' spreads and sizes, and covers every eligible group at
once, so picking the extreme pair after looking costs nothing. The former test exchanged group labels
between subjects with the raw max - min as statistic, which tests "the groups are alike in every way": a
small group whose errors were merely more spread out was called a gap in 29-40 % of null cohorts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from embedx.analysis.stats import SubjectIndex, count_dropped, permutation_pvalue

__all__ = [
    "GAP_INTERVAL",
    "GAP_TEST",
    "ClusterRatios",
    "StudentizedDraws",
    "gap_evidence",
    "gap_nulls",
    "gap_p_value",
    "mae_gap_null",
    "pair_critical_value",
    "rates_from_counts",
    "simultaneous_interval",
    "spread",
    "studentized_pair_interval",
    "studentized_test",
    "welch_statistic",
]

GAP_INTERVAL = "bootstrap-t interval (subjects resampled within groups), simultaneous over all group pairs"
GAP_TEST = "bootstrap-t: Welch statistic over the eligible groups, subjects resampled within each group"


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


def welch_statistic(rates: np.ndarray, variances: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """-log p of Welch's heteroscedastic ANOVA for equal group ratios; arrays (..., groups).

    W = sum_g (r_g - r_w)^2 / v_g, referred to Welch's F with the Satterthwaite-type degrees of freedom of
    groups of `clusters` subjects: a 20-subject group's variance is itself uncertain. Groups with no rows
    (NaN rate) are left out; fewer than two give NaN.
    """
    present = np.isfinite(rates) & np.isfinite(variances) & (variances > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(present, 1.0 / np.where(present, variances, 1.0), 0.0)
        r = np.where(present, rates, 0.0)
        total = w.sum(axis=-1, keepdims=True)
        centre = (w * r).sum(axis=-1, keepdims=True) / total
        W = (w * (r - centre) ** 2).sum(axis=-1)
        k = present.sum(axis=-1)
        lam = np.where(present, (1 - w / total) ** 2 / np.maximum(clusters - 1, 1), 0.0).sum(axis=-1)
        F = W / (k - 1) / (1 + 2 * (k - 2) / (k * k - 1) * lam)
        statistic = -np.log(np.maximum(special.fdtrc(k - 1, (k * k - 1) / (3 * lam), F), 1e-300))
    return np.where(k >= 2, statistic, np.nan)


class ClusterRatios:
    """Per group, the ratio sum a / sum b over its rows (a rate, an MAE) with its cluster-robust variance,
    for the rows as they are and for cluster-bootstrap resamples drawn within each group.

    Clusters are subjects (a subject whose rows fall in two groups is a cluster in each). A group's variance
    is the delta-method one, n_c / (n_c - 1) * sum_c (a_c - r b_c)^2 / B^2, plus one mean-sized cluster of
    the pooled row variance, so that a group whose predictions are all alike gets a large but finite weight.

    A rate (every a is 0 or 1) at exactly 0 or 1 has no spread to measure, and that floor alone gave it a
    standard error of ~0.02 where 21 subjects at 21 of 21 are compatible with a rate of 0.85: a group of 21
    positive subjects detected 21 times was a "gap" at p = 0.001 against another group's 0.90 (11 % of null
    cohorts at a true TPR of 0.9; 31 % at 12 positive subjects). Such a group's variance is at least the
    Agresti-Coull one over its subjects, p~(1 - p~) / (n + 4) with p~ = (x + 2) / (n + 4).
    """

    def __init__(
        self, a: np.ndarray, b: np.ndarray, subjects: np.ndarray, codes: np.ndarray, eligible: np.ndarray
    ) -> None:
        a, b, codes = np.asarray(a, dtype=float), np.asarray(b, dtype=float), np.asarray(codes, dtype=int)
        pooled = float(a.sum() / max(b.sum(), 1e-12))
        self.floor = float(np.mean((a - pooled * b) ** 2)) if a.size else 0.0
        self.proportion = bool(a.size) and bool(np.all((a == 0) | (a == 1))) and bool(np.all(b == 1))
        width = int(codes.max()) + 1 if codes.size else 1
        keys, inverse = np.unique(SubjectIndex(subjects).codes * width + codes, return_inverse=True)
        a_c, b_c = np.bincount(inverse, weights=a), np.bincount(inverse, weights=b)
        self.groups = [
            (a_c[keys % width == g], b_c[keys % width == g]) for g in np.asarray(eligible, dtype=int)
        ]

    def _moments(self, weights: list[np.ndarray], observed: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rates, variances, clusters = [], [], []
        for (a_c, b_c), w in zip(self.groups, weights, strict=True):
            A, B = w @ a_c, w @ b_c
            n = np.full(A.shape, float(len(a_c)))
            with np.errstate(invalid="ignore", divide="ignore"):
                r = A / B
                resid = w @ (a_c * a_c) - 2 * r * (w @ (a_c * b_c)) + r * r * (w @ (b_c * b_c))
                pseudo = self.floor * B / np.maximum(n, 1)
                v = (n / np.maximum(n - 1, 1) * np.maximum(resid, 0.0) + pseudo) / (B * B)
                # an observed rate at 0 or 1: at least the Agresti-Coull variance over subjects (not in the
                # resamples: flooring them too took a null's rejections at TPR 0.8 from 4.7 % to 9 %)
                if self.proportion and observed:
                    tilde = (r * n + 2) / (n + 4)
                    v = np.where((r <= 0) | (r >= 1), np.maximum(v, tilde * (1 - tilde) / (n + 4)), v)
            rates.append(r)
            variances.append(v)
            clusters.append(n)
        return np.stack(rates, -1), np.stack(variances, -1), np.stack(clusters, -1)

    def observed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._moments([np.ones((1, len(a_c))) for a_c, _ in self.groups], observed=True)

    def resampled(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        weights = []
        for a_c, _ in self.groups:
            m = len(a_c)
            drawn = rng.integers(0, m, size=(n, m)) + (m * np.arange(n))[:, None]
            weights.append(np.bincount(drawn.ravel(), minlength=n * m).reshape(n, m).astype(float))
        return self._moments(weights)


@dataclass(frozen=True)
class StudentizedDraws:
    """The groups' ratios and variances, observed (G,) and in each within-group resample (B, G), and the
    Welch statistic of the observed ratios with its bootstrap null (B,)."""

    observed: float
    null: np.ndarray
    rates: np.ndarray
    variances: np.ndarray
    rates_star: np.ndarray
    variances_star: np.ndarray
    # a group's rate at exactly 0 or 1: its resamples cannot vary, so the bootstrap null and the pair
    # intervals' critical value see none of its uncertainty (`ClusterRatios`); the callers fall back on
    # Welch's F and the normal quantile as floors
    degenerate: bool = False


def studentized_test(
    codes: np.ndarray,
    a: np.ndarray,
    groups: np.ndarray,
    rows: np.ndarray,
    eligible: np.ndarray,
    n_resamples: int,
    rng: np.random.Generator,
) -> StudentizedDraws:
    """Welch's statistic for "the groups' ratios sum a / rows are equal" on `rows`, and its bootstrap null.

    The null comes from a bootstrap-t: subjects resampled within each group, and the statistic computed on
    each resample's ratios minus the observed ones, which makes them equal in the resampled world while each
    group keeps its own spread (Efron & Tibshirani 1993, ch. 16). Exchanging group labels instead tests
    "the groups are alike in every way": a group whose errors were merely more spread out (same MAE, same
    TPR) was then called a gap in 29-40 % of null cohorts. The same resamples give the gaps' intervals.
    """
    G = len(eligible)
    if len(rows) == 0:
        empty = np.full((n_resamples, G), np.nan)
        return StudentizedDraws(float("nan"), np.full(n_resamples, np.nan), np.full(G, np.nan),
                                np.full(G, np.nan), empty, empty)  # fmt: skip
    ratios = ClusterRatios(a[rows], np.ones(len(rows)), groups[rows], codes[rows], eligible)
    r, v, n = ratios.observed()
    null, r_star, v_star = [], [], []
    for start in range(0, n_resamples, 64):
        rs, vs, ns = ratios.resampled(min(64, n_resamples - start), rng)
        null.append(welch_statistic(rs - r, vs, ns))
        r_star.append(rs)
        v_star.append(vs)
    stack = (lambda parts: np.concatenate(parts) if parts else np.empty((0, G)))  # noqa: E731
    return StudentizedDraws(
        observed=float(welch_statistic(r, v, n)[0]),
        null=np.concatenate(null) if null else np.empty(0),
        rates=r[0],
        variances=v[0],
        rates_star=stack(r_star),
        variances_star=stack(v_star),
        degenerate=ratios.proportion and bool(np.any((r[0] <= 0) | (r[0] >= 1))),
    )


def studentized_pair_interval(
    draws: list[StudentizedDraws], component: int, hi: int, lo: int, level: float = 0.95
) -> list[float | None]:
    """The bootstrap-t interval of rate[hi] - rate[lo] in draws[component], simultaneous over every pair of
    groups in every component given: d +- q se, with q the `level` quantile over resamples of the largest
    |d*_ij - d_ij| / se*_ij, each resample studentized by its own cluster-robust standard error.

    With ~20 positive subjects in a group it missed a null gap of zero in 5 % of cohorts, where the
    interval from the bootstrap's standard deviation missed it in 8 % (with ~10: 13 % vs 15 %).
    """
    t_max = None
    for d in draws:
        i, j = np.triu_indices(len(d.rates), k=1)
        if i.size == 0 or d.rates_star.shape[0] == 0:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.abs((d.rates_star[:, i] - d.rates_star[:, j]) - (d.rates[i] - d.rates[j]))
            t /= np.sqrt(d.variances_star[:, i] + d.variances_star[:, j])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = np.nanmax(np.where(np.isfinite(t), t, np.nan), axis=1)
        t_max = t if t_max is None else np.fmax(t_max, t)
    chosen = draws[component]
    estimate = float(chosen.rates[hi] - chosen.rates[lo])
    se = float(np.sqrt(chosen.variances[hi] + chosen.variances[lo]))
    if t_max is None or not np.isfinite(t_max).any() or not np.isfinite(estimate) or not np.isfinite(se):
        return [None, None]
    q = float(np.nanquantile(t_max, level))
    if any(d.degenerate for d in draws):  # a group that cannot vary in its resamples: at least z
        q = max(q, float(stats.norm.ppf(0.5 + level / 2)))
    return [estimate - q * se, estimate + q * se]


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
    tests: dict[str, StudentizedDraws],
    names: list[str],
    eligible: np.ndarray,
    n_resamples: int,
) -> dict[str, dict[str, Any]]:
    """Signed pair difference, its bootstrap-t interval simultaneous over all pairs, and the p per gap.

    `rate_reps` (subject bootstrap over the cohort) serve the demographic-parity ratio's interval only."""
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
        draws = [tests[c] for c in components]
        # Welch statistics: equalized odds takes the larger of its two rates', observed and in each null draw;
        # a rate with no variance anywhere (TPR 1.0 in every group) leaves the other one to decide
        observed = float(np.fmax.reduce([d.observed for d in draws]))
        null = np.fmax.reduce(np.stack([d.null for d in draws]), axis=0)
        p = gap_p_value(observed, null, max(spreads.values()))
        if p is not None and np.isfinite(observed) and any(d.degenerate for d in draws):
            p = float(np.fmax(p, np.exp(-observed)))  # Welch's F, where the bootstrap null cannot see a group
        ci = studentized_pair_interval(draws, components.index(component), hi, lo)
        out[gap] = {
            "estimate": max(spreads.values()),
            "component": component,
            "pair": [names[eligible[hi]], names[eligible[lo]]],
            "signed_difference": estimate,
            "ci": ci,
            "ci_dropped": count_dropped(draws[components.index(component)].rates_star[:, hi]),
            "interval": GAP_INTERVAL,
            "p_value": p,
            "test": GAP_TEST,
            "resamples": n_resamples,
            "resamples_dropped": count_dropped(null),
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


def gap_p_value(observed: float, null: np.ndarray, spread_observed: float) -> float | None:
    """The bootstrap-t p; 1 where every group has the same rate and no rate varies (nothing to test)."""
    if spread_observed == 0:  # every group at the same rate: nothing to test, whatever the variances
        return 1.0
    if np.isfinite(observed):
        return permutation_pvalue(observed, null)
    return None


def gap_nulls(
    codes: np.ndarray,
    cell: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    rows: np.ndarray,
    n_groups: int,
    eligible: np.ndarray,
    n_perm: int,
    seed: int,
) -> dict[str, StudentizedDraws]:
    """Per rate, the observed Welch statistic and its bootstrap null (`studentized_test`): the selection rate
    over every row, TPR within the positives, FPR within the negatives."""
    rng = np.random.default_rng(seed)
    predicted = (np.asarray(cell) % 2).astype(float)  # cell = 2 y + prediction
    out = {}
    for component, flag in (("selection_rate", None), ("tpr", 1), ("fpr", 0)):
        within = rows if flag is None else rows[y[rows] == flag]
        out[component] = studentized_test(codes, predicted, groups, within, eligible, n_perm, rng)
    return out


def mae_gap_null(
    codes: np.ndarray,
    abs_err: np.ndarray,
    groups: np.ndarray,
    rows: np.ndarray,
    n_groups: int,
    eligible: np.ndarray,
    n_perm: int,
    seed: int,
) -> StudentizedDraws:
    """The Welch statistic of the group MAEs and its bootstrap null (`studentized_test`)."""
    return studentized_test(
        codes, np.asarray(abs_err, dtype=float), groups, rows, eligible, n_perm, np.random.default_rng(seed)
    )
