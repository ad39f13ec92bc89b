"""How much wider the cross-validated cells of the cross-site analysis must be than resampling fixed
out-of-fold scores says: the matrix's diagonal (grouped CV inside a site) and the pooled row (grouped CV on
every site, scored overall and within each site).

Why. A grouped-CV AUC is scored by fold models that were trained on the other folds' subjects, so two
subjects in different folds help to predict each other (`cv_width`'s module doc). A subject bootstrap over
fixed out-of-fold scores cannot see that covariance: on the cohorts of `bench/cross_site_cells.py` (3-4
exchangeable sites of 40-120 subjects) the diagonal cells' 95 % intervals missed their fold models' true AUC
(known in closed form) in 12.4 % of 274 cells without a finding and 14.9 % of 424 with one (0.5-1 sd); the
pooled row's in 11-23 %. Widened as below: diagonal 4.7 % and 4.7 %, pooled by site 6.2 % and 4.0 %,
pooled 5.0 % and 3.3 %. A fixed model scoring another site (off the diagonal) needs no refit, only the
small-sample factor below: 9.5 % -> 7.5 % of 684 cells without a finding, 6.4 % -> 4.7 % of 1,106 with one.

How (as `cv_width`, with AUC and with sites). `permutations` labellings are drawn with the target permuted
between the subjects *of each site* (each site keeps its positive and negative subjects, so the AUC's own
precision and the pooled row's between-site structure are kept, while no image says anything about its
label); on each the cells are cross-validated again with the probe refit at the C the analysis used, on
freshly stratified folds, and their fixed-prediction bootstrap variance is measured on `WIDTH_BOOTSTRAP`
within-site subject resamples, as the real intervals are. A cell's factor is sqrt(var of its permuted AUCs /
their mean bootstrap variance), at least 1 and times t(m - 1)/z for its own uncertainty (m labellings); it
widens the cell's interval about its AUC. Measured at chance, where the covariance is largest (`cv_width`
found the same factor kept intervals at 95-97 % coverage under a modest effect). Above `max_rows` the rows
are a subsample of whole subjects keeping every (site, class) share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sklearn
from scipy import stats

from embedx.analysis.cross_site_null import units_of, whole_unit_subsample
from embedx.analysis.cross_site_pairs import oof_auc
from embedx.analysis.stats import SubjectIndex, SubjectPermuter, stratified_subject_weights
from embedx.parallel import map_in_threads

__all__ = ["CellWidth", "cell_widths", "small_sample_factor"]

WIDTH_BOOTSTRAP = 100  # fixed-prediction resamples per permuted labelling (as `cv_width`)
MIN_PERMUTATIONS = 10


@dataclass(frozen=True)
class CellWidth:
    """Factors on the half-widths of the cross-validated cells' intervals; missing where too few
    labellings gave a value."""

    diagonal: dict[str, float] = field(default_factory=dict)  # per site: grouped CV inside it
    pooled_site: dict[str, float] = field(default_factory=dict)  # per site: the pooled CV scored within it
    pooled: float | None = None  # the pooled CV over every site
    permutations: int = 0
    rows: int = 0

    def as_dict(self) -> dict[str, object]:
        def rounded(values: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 3) for k, v in values.items()}

        return {
            "diagonal": rounded(self.diagonal),
            "pooled_by_site": rounded(self.pooled_site),
            "pooled": None if self.pooled is None else round(self.pooled, 3),
            "permutations": self.permutations,
            "rows": self.rows,
            "over": "target permuted between the subjects of each site; every cross-validation refit",
        }


def small_sample_factor(rarer_subjects: int) -> float:
    """t(r - 1) / z for an AUC whose rarer class has r subjects: a fixed model's AUC on a held-out site.

    Why. The percentile interval of a subject bootstrap is too narrow when one class is small (the
    resamples' spread underestimates the AUC's, and the AUC's distribution is lumpy): simulated fixed
    scorers at 40-120 subjects per site with 4-36 in the rarer class missed their true AUC in up to 8 % (no
    effect) and 10 % (AUC 0.72) of intervals; widened by t(r - 1)/z, 3.3-6.2 % (400 cohorts each). The
    factor is 1.31 at 6 subjects, 1.07 at 30 and tends to 1.
    """
    if rarer_subjects < 2:
        return 1.0
    return float(stats.t.ppf(0.975, rarer_subjects - 1) / stats.norm.ppf(0.975))


def cell_widths(
    X: np.ndarray,
    y: np.ndarray,
    site: np.ndarray,
    groups: np.ndarray,
    *,
    site_models: dict[str, object],
    pooled_model: object,
    folds: int,
    seed: int,
    permutations: int = 20,
    max_rows: int = 2_000,
) -> CellWidth:
    """The cells' widening factors (module doc). `site_models[s]` is site s's probe estimator after scaling
    (`LinearProbe.model_after_scaling` at the C its model chose) and `pooled_model` the pooled CV's: the rows
    are standardised once here."""
    y = np.asarray(y, dtype=bool)
    site, groups = np.asarray(site).astype(str), np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    unit, unit_site, unit_class = units_of(site, groups, y)
    rows = whole_unit_subsample(unit, unit_site, unit_class, max_rows, 2 * folds, rng)
    Xs = np.asarray(X[rows], dtype=np.float64)
    sd = Xs.std(axis=0)
    Xs = (Xs - Xs.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    ys, gs, ss = y[rows], groups[rows], site[rows]
    units = unit[rows]  # one subject within one site: the permuted unit
    sites = sorted(site_models)
    site_rows = [np.flatnonzero(ss == s) for s in sites]
    labellings = np.empty((len(ys), permutations), dtype=bool)
    for r in site_rows:
        labellings[r] = SubjectPermuter(ys[r], SubjectIndex(units[r])).draw(rng, permutations)
    seeds = rng.integers(0, 2**31 - 1, size=permutations)
    everything = np.arange(len(ys))

    def one(i: int) -> np.ndarray:
        """Labelling i: (AUC, bootstrap variance) per site's diagonal, per site of the pooled CV, pooled."""
        out = np.full((2 * len(sites) + 1, 2), np.nan)
        yi = labellings[:, i]
        W = np.vstack([np.ones((1, len(yi))), stratified_subject_weights(
            ss, gs, WIDTH_BOOTSTRAP, np.random.default_rng(seeds[i]))])
        values: list[np.ndarray | None] = []
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            for s, r in zip(sites, site_rows, strict=True):
                own = oof_auc(Xs, yi, gs, r, site_models[s], folds, int(seeds[i]), W, [np.arange(len(r))])
                values.append(None if own is None else own[0])
            pooled = oof_auc(Xs, yi, gs, everything, pooled_model, folds, int(seeds[i]), W,
                              [*site_rows, everything])
        values += pooled if pooled is not None else [None] * (len(sites) + 1)
        for j, v in enumerate(values):
            if v is None:
                continue
            boot = v[1:][np.isfinite(v[1:])]
            if np.isfinite(v[0]) and boot.size > 10:
                out[j] = v[0], np.var(boot, ddof=1)
        return out

    values = np.array(map_in_threads(one, range(permutations)), dtype=float)  # (m, 2 sites + 1, 2)

    def factor(column: np.ndarray) -> float | None:
        ok = np.isfinite(column).all(axis=1)
        if ok.sum() < min(MIN_PERMUTATIONS, permutations) or ok.sum() < 3 or np.mean(column[ok, 1]) <= 0:
            return None
        ratio = float(np.sqrt(np.var(column[ok, 0], ddof=1) / np.mean(column[ok, 1])))
        return float(max(1.0, ratio) * stats.t.ppf(0.975, ok.sum() - 1) / stats.norm.ppf(0.975))

    found = [factor(values[:, j]) for j in range(values.shape[1])]
    k = len(sites)
    return CellWidth(
        diagonal={s: f for s, f in zip(sites, found[:k], strict=True) if f is not None},
        pooled_site={s: f for s, f in zip(sites, found[k:2 * k], strict=True) if f is not None},
        pooled=found[-1],
        permutations=int(np.isfinite(values[:, -1]).all(axis=1).sum()),
        rows=len(rows),
    )
