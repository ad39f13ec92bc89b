"""How much wider the cross-site headline's interval (and the ``pairs``') must be than resampling fixed
predictions says.

See `cross_site`'s module doc for why and for the figures; this module measures the factors (the pairs' with
`cross_site_pairs.permuted_pair_gaps`, on the same permuted cohorts, when `pair_model` is given).

The null here is "the latents do not depend on the site, given the target": each (site, subject) unit's site
is dealt at random to another unit *of the same class* (a subject with a positive image, or not), so every
site keeps its number of positive and negative subjects (its prevalence, and so the AUC's own precision),
while no site can be told from the latents beyond what the target already says. On each such cohort the
headline statistic (mean over held-out sites of leave-one-site-out internal grouped-CV AUC minus the same fold
models' mean AUC on the held-out site) is recomputed with the probe *refit*, at the C the real analysis used,
on freshly stratified folds, on rows standardised once (the probe's own scaler is per training set: on one
cohort the permuted statistics' spread was the same, 0.048 either way); and
its fixed-prediction bootstrap variance is measured on `WIDTH_BOOTSTRAP` within-site subject resamples, as
the real interval is. The spread of the permuted statistics is the whole variance of a null headline; the
mean bootstrap variance is the part a fixed-prediction interval sees. Their ratio, as a factor on the
interval's half-widths, at least 1 and times t(m - 1)/z for its own uncertainty (m permutations), is what
`cross_site_arrays` applies; each held-out site's difference gets its own (`site_factors`). The permuted
statistics' mean is recorded too (`null_mean`): the difference a cohort without any site effect shows at this
size (slightly below 0: the pooled out-of-fold AUC mixes the fold models' scales). Cohorts above `max_rows`
are measured on a subsample of whole subjects keeping every (site, class) share, which at 12,000 rows gave a
larger factor than all rows did (conservative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sklearn
from scipy import stats
from sklearn.base import clone

from embedx.analysis.cross_site_pairs import pair_keys, permuted_pair_gaps
from embedx.analysis.folds import stratified_splits
from embedx.analysis.stats import auc_weighted, stratified_subject_weights
from embedx.errors import EmbedxError
from embedx.parallel import map_in_threads

__all__ = ["SiteWidth", "site_permutation_width", "units_of", "whole_unit_subsample"]

WIDTH_BOOTSTRAP = 100  # fixed-prediction resamples per permuted cohort (as `cv_width`)
MIN_PERMUTATIONS = 10


@dataclass(frozen=True)
class SiteWidth:
    """The headline's widening factor and what it was measured on."""

    factor: float
    ratio: float  # sqrt(var of the permuted headlines / their mean bootstrap variance), before max(1) and t/z
    null_mean: float  # mean permuted headline: the difference without any site effect
    null_sd: float
    permutations: int  # permuted cohorts that gave a headline
    rows: int
    site_factors: dict[str, float] = field(default_factory=dict)  # the same, per held-out site's difference
    pair_factors: dict[tuple[str, str], float] = field(default_factory=dict)  # per (test, train) of ``pairs``

    def as_dict(self) -> dict[str, object]:
        return {
            "factor": round(self.factor, 3),
            "ratio": round(self.ratio, 3),
            "null_mean": round(self.null_mean, 4),
            "null_sd": round(self.null_sd, 4),
            "permutations": self.permutations,
            "rows": self.rows,
            "over": "site dealt at random between subjects of the same class; probe refit on every cohort",
        }


def permutations_for(wanted: int, n_bootstrap: int) -> int:
    """Site-permuted refits: `wanted`, fewer (down to MIN_PERMUTATIONS) for a quick interval of under 20 x
    that many resamples (as `cv_width`), whose t quantile pays for their noise."""
    return int(min(wanted, max(MIN_PERMUTATIONS, n_bootstrap // 20)))


def units_of(site: np.ndarray, groups: np.ndarray, y: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit of each row, each unit's site, each unit's class): a unit is one subject within one site."""
    site_code, group_code = pd.factorize(site)[0], pd.factorize(groups)[0]  # hashing, not sorting strings
    unit, _ = pd.factorize(site_code.astype(np.int64) * (int(group_code.max()) + 1) + group_code)
    first = np.zeros(int(unit.max()) + 1, dtype=np.int64)
    first[unit[::-1]] = np.arange(len(unit))[::-1]  # each unit's first row
    order = np.lexsort((groups[first], site[first]))  # units by (site, subject), whatever the row order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    unit, first = rank[unit], first[order]
    positive = np.bincount(unit, weights=y.astype(float)) > 0
    return unit, site[first], positive


def whole_unit_subsample(unit: np.ndarray, unit_site: np.ndarray, unit_class: np.ndarray, max_rows: int,
                         keep: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of whole units, about `max_rows`, each (site, class) stratum keeping its share and at least
    `keep` units where it has them."""
    if len(unit) <= max_rows:
        return np.arange(len(unit))
    share = max_rows / len(unit)
    chosen = []
    for s in np.unique(unit_site):
        for c in (False, True):
            members = np.flatnonzero((unit_site == s) & (unit_class == c))
            take = min(len(members), max(keep, round(share * len(members))))
            chosen.append(rng.choice(members, take, replace=False))
    return np.flatnonzero(np.isin(unit, np.concatenate(chosen)))


def site_permutation_width(
    X: np.ndarray,
    y: np.ndarray,
    site: np.ndarray,
    groups: np.ndarray,
    *,
    model: object,
    folds: int,
    seed: int,
    permutations: int = 20,
    max_rows: int = 2_000,
    min_per_class: int = 5,
    pair_model: object | None = None,
) -> SiteWidth | None:
    """The headline's widening factor from `permutations` class-stratified site permutations (module doc).

    `model` is the probe's estimator after scaling (`LinearProbe.model_after_scaling` at the C used): the
    rows are standardised once here. None when fewer than `MIN_PERMUTATIONS` permuted cohorts gave a value
    or their bootstrap variance is 0. With `pair_model` (the per-site probes' estimator after scaling), the
    ``pairs``' differences are refit on the same permuted cohorts too (`cross_site_pairs`).
    """
    y = np.asarray(y, dtype=bool)
    site, groups = np.asarray(site).astype(str), np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    unit, unit_site, unit_class = units_of(site, groups, y)
    rows = whole_unit_subsample(unit, unit_site, unit_class, max_rows, max(2 * folds, min_per_class), rng)
    Xs = np.asarray(X[rows], dtype=np.float64)
    sd = Xs.std(axis=0)
    Xs = (Xs - Xs.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    ys, gs = y[rows], groups[rows]
    # the subsample's own units, renumbered
    kept, unit_s = np.unique(unit[rows], return_inverse=True)
    unit_s = unit_s.reshape(-1)
    site_u, class_u = unit_site[kept], unit_class[kept]
    sites = np.unique(site_u)
    pairs = pair_keys([str(s) for s in sites]) if pair_model is not None else []
    draws = []
    for _ in range(permutations):
        dealt = site_u.copy()
        for c in (False, True):
            members = np.flatnonzero(class_u == c)
            dealt[members] = site_u[rng.permutation(members)]
        draws.append(dealt)
    seeds = rng.integers(0, 2**31 - 1, size=permutations)

    def one(i: int) -> np.ndarray:
        """Permuted cohort i: per held-out site and for the mean, (statistic, its bootstrap variance)."""
        failed = np.full((len(sites) + 1 + len(pairs), 2), np.nan)
        row_site = draws[i][unit_s]
        W = np.vstack([np.ones((1, len(ys))), stratified_subject_weights(
            row_site, gs, WIDTH_BOOTSTRAP, np.random.default_rng(seeds[i]))])
        gaps = []
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            for s in sites:
                train, test = np.flatnonzero(row_site != s), np.flatnonzero(row_site == s)
                try:
                    splits = stratified_splits(ys[train], gs[train], folds, int(seeds[i]))
                except (ValueError, EmbedxError):
                    return failed
                internal, external = np.zeros(len(train)), []
                for inner, outer in splits:
                    if len(np.unique(ys[train[inner]])) < 2:
                        return failed
                    fit = clone(model).fit(Xs[train[inner]], ys[train[inner]])
                    internal[outer] = fit.decision_function(Xs[train[outer]])
                    external.append(auc_weighted(fit.decision_function(Xs[test]), ys[test], W[:, test]))
                gaps.append(auc_weighted(internal, ys[train], W[:, train]) - np.mean(external, axis=0))
            gaps.append(np.mean(gaps, axis=0))
            if pairs:
                pair_gaps = permuted_pair_gaps(Xs, ys, gs, row_site, sites, W, pair_model, folds,
                                               int(seeds[i]))
                gaps += pair_gaps if pair_gaps is not None else [np.full(len(W), np.nan)] * len(pairs)
        out = failed.copy()
        for j, d in enumerate(gaps):
            boot = d[1:][np.isfinite(d[1:])]
            if np.isfinite(d[0]) and boot.size > 10:
                out[j] = d[0], np.var(boot, ddof=1)
        return out

    values = np.array(map_in_threads(one, range(permutations)), dtype=float)  # (m, sites + 1 + pairs, 2)

    def factor(column: np.ndarray) -> tuple[float, float, int] | None:
        ok = np.isfinite(column).all(axis=1)
        if ok.sum() < min(MIN_PERMUTATIONS, permutations) or ok.sum() < 3 or np.mean(column[ok, 1]) <= 0:
            return None
        ratio = float(np.sqrt(np.var(column[ok, 0], ddof=1) / np.mean(column[ok, 1])))
        # the ratio is itself estimated from ok.sum() cohorts: a t quantile in place of the normal one
        t_over_z = stats.t.ppf(0.975, ok.sum() - 1) / stats.norm.ppf(0.975)
        return float(max(1.0, ratio) * t_over_z), ratio, int(ok.sum())

    last = len(sites)  # the headline's column; the pairs' follow
    headline = factor(values[:, last])
    if headline is None:
        return None
    ok = np.isfinite(values[:, last]).all(axis=1)
    per_site = {str(s): f[0] for s, f in ((s, factor(values[:, j])) for j, s in enumerate(sites)) if f}
    found = ((key, factor(values[:, last + 1 + j])) for j, key in enumerate(pairs))
    pair_factors = {key: f[0] for key, f in found if f}
    return SiteWidth(
        factor=headline[0],
        ratio=headline[1],
        null_mean=float(np.mean(values[ok, last, 0])),
        null_sd=float(np.std(values[ok, last, 0], ddof=1)),
        permutations=headline[2],
        rows=len(rows),
        site_factors=per_site,
        pair_factors=pair_factors,
    )
