"""How much wider a probe's interval must be than resampling fixed out-of-fold predictions says.

Why. Each subject is tested by one fold model and trains the other four, so two subjects in different folds
help to predict each other: when a model partly memorises its training rows, a pair with the same label is
right together and a pair with different labels wrong together. That covariance is part of the
cross-validated score's variance, and resampling subjects over *fixed* predictions cannot see it (it treats
each subject's correctness as independent). It matters most near chance, where every prediction sits near
the decision boundary: in null simulations (binary, 32-d, 1-3 images per subject, 100 cohorts each) the
score's spread was 1.2-1.4 x the interval's at 300-2,000 subjects, and 9-18 % of 95 % intervals excluded
chance.

How. The missing share is measured where the truth is known. `config.width_permutations` (20) labellings,
permuted between subjects (`SubjectPermuter`), carry no information by construction; each is cross-validated
with the probe at the C its tuning chose, on freshly stratified folds, as the real label was. The spread of
their scores is the whole variance of a null score; the mean of their fixed-prediction bootstrap variances is
the part the interval sees. Their ratio, `factor` = sqrt(var(scores) / mean(bootstrap variance)), at least 1
and times t(n - 1)/z for its own uncertainty, widens the probe's own interval about its score. Above
`config.width_max_rows` (1,000) rows it is measured on a subsample of whole subjects that keeps each class's
share (the ratio did not change with size from 300 to 2,000 subjects, while the variances themselves do).

Figures (same cohorts as above; `bench/probe_ci.py` runs such scenarios): with 20 permutations on at most
1,000 rows, null intervals excluded chance in 1-5 % of 100 cohorts at 300-2,000 subjects (spread / interval
0.86-0.92); under a modest effect (balanced accuracy 0.54 at 600 and 2,000 subjects) they covered the fold
models' true accuracy in 95-97 % (84-90 % before), and the verdict found 33 % and 52 % of those cohorts (the
permutation p alone 63 % and 75 %). At 200 subjects x 8-d (the tests' cohorts): balanced accuracy 15 of 100
null intervals excluding chance before, 7 after; a continuous label's correlation 17 before, 7 after. Schemes
that resample the cohort itself and rerun the cross-validation (the subject bootstrap, half samples) measured
x1.6 where x1.3 was needed, and were not adopted. Cost: 100 small fits per probe, about 0.3 s at 240 rows x
6-d and 1.1-1.4 s at 1,000 rows x 512-d on 2 cores, whatever the cohort's size.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import sklearn
from scipy import stats
from sklearn.base import clone

from embedx.analysis.folds import fold_splits, stratified_folds
from embedx.analysis.linear_probe import balanced_accuracy
from embedx.analysis.stats import (
    SubjectIndex,
    SubjectPermuter,
    bootstrap_balanced_accuracy,
    bootstrap_correlation,
    bootstrap_mae,
)
from embedx.parallel import map_in_threads

if TYPE_CHECKING:
    from embedx.analysis.probe_config import ProbeConfig

__all__ = ["NullWidth", "null_width", "widened"]

WIDTH_BOOTSTRAP = 100  # fixed-prediction resamples per permuted labelling: its variance within ~15 %,
# and the mean of 20 such variances within ~3 %
METRICS = ("score", "gap", "correlation")
MIN_PERMUTATIONS = 10


@dataclass(frozen=True)
class NullWidth:
    """Per metric ("score"; continuous also "gap" and "correlation"), the factor by which the interval's
    half-widths grow; and what it was measured on."""

    factors: dict[str, float]
    permutations: int
    rows: int

    def as_dict(self) -> dict[str, object]:
        return {"factors": {k: round(v, 3) for k, v in self.factors.items()},
                "permutations": self.permutations, "rows": self.rows}


def _subsample(codes: np.ndarray, subjects: np.ndarray, continuous: bool, max_rows: int, folds: int,
               rng: np.random.Generator) -> np.ndarray:
    """Rows of whole subjects, at most ~`max_rows`, each class (a subject's first label) keeping its share
    and at least 2 x folds subjects where it has them."""
    if len(codes) <= max_rows:
        return np.arange(len(codes))
    names, first, inverse = np.unique(subjects, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    strata = np.zeros(len(names), dtype=int) if continuous else np.asarray(codes)[first].astype(int)
    share = max_rows / len(codes)
    chosen = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        take = min(len(members), max(2 * folds, round(share * len(members))))
        chosen.append(rng.choice(members, take, replace=False))
    return np.flatnonzero(np.isin(inverse, np.concatenate(chosen)))


_CACHE: OrderedDict[str, NullWidth | None] = OrderedDict()
_CACHE_SIZE = 64


def _fingerprint(X: np.ndarray, codes: np.ndarray, subjects: np.ndarray, c: float, config: ProbeConfig,
                 continuous: bool) -> str:
    """What the null factor depends on, as a stable digest: the rows (up to 1,000 of them, evenly spaced),
    the subjects, the label's distribution (not its order: every labelling with the same values has the
    same null), C and the knobs. Not the probe's seed: the factor is a property of the data, so a label
    re-probed under another seed (the calibration deals its planted labels over five) reuses it, and the
    digest seeds the factor's own draws, so that it does not depend on which probe asked first."""
    step = max(1, len(X) // 1000)
    rows = np.asarray(X[::step], dtype=np.float64)
    values = np.asarray(codes, dtype=np.float64)
    _, first, inverse = np.unique(subjects, return_index=True, return_inverse=True)
    if np.array_equal(values, values[first][inverse.reshape(-1)]):  # one value per subject: the permutations
        values = values[first]  # shuffle subjects, so only the subjects' values count, not their image counts
    digest = hashlib.blake2b(digest_size=16)
    digest.update(inverse.reshape(-1).astype(np.int64).tobytes())  # which rows share a subject
    digest.update(np.sort(values).tobytes())
    digest.update(np.ascontiguousarray(rows).tobytes())
    knobs = (X.shape, float(c), continuous, config.folds, config.kernel, config.width_permutations,
             config.width_max_rows, _permutations(config))
    digest.update(repr(knobs).encode())
    return digest.hexdigest()


def _permutations(config: ProbeConfig) -> int:
    """Labellings drawn: `width_permutations`, fewer (down to MIN_PERMUTATIONS) for a quick interval of
    under 20 x that many resamples, whose t quantile pays for their noise."""
    return int(min(config.width_permutations, max(MIN_PERMUTATIONS, config.n_bootstrap // 20)))


def null_width(
    X: np.ndarray,
    codes: np.ndarray,
    subjects: np.ndarray,
    c: float,
    config: ProbeConfig,
    continuous: bool,
) -> NullWidth | None:
    """`_measured_width`, remembered for the same rows, subjects, label distribution and C (see
    `_fingerprint`)."""
    if config.width_permutations <= 0:
        return None
    key = _fingerprint(X, codes, subjects, c, config, continuous)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    width = _measured_width(X, codes, subjects, c, config, continuous, seed=int(key[:12], 16))
    _CACHE[key] = width
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return width


def _measured_width(
    X: np.ndarray,
    codes: np.ndarray,
    subjects: np.ndarray,
    c: float,
    config: ProbeConfig,
    continuous: bool,
    seed: int,
) -> NullWidth | None:
    """The widening factors from `_permutations(config)` permuted labellings drawn from `seed` (see the
    module doc); None when too few labellings gave a score. Switched off (0 permutations) is `null_width`'s
    to answer."""
    n_perm = _permutations(config)
    rng = np.random.default_rng(seed)
    rows = _subsample(codes, subjects, continuous, config.width_max_rows, config.folds, rng)
    Xs = np.asarray(X[rows], dtype=np.float64)
    Xs = (Xs - Xs.mean(axis=0)) / np.where(Xs.std(axis=0) > 0, Xs.std(axis=0), 1.0)  # once, not per fold
    ys, gs = np.asarray(codes)[rows], np.asarray(subjects)[rows]
    index = SubjectIndex(gs)
    labellings = SubjectPermuter(ys, index).draw(rng, n_perm)
    seeds = rng.integers(0, 2**31 - 1, size=n_perm)
    task = "regression" if continuous else "classification"
    train_rows = len(rows) * (config.folds - 1) // config.folds
    model = replace(config, c_grid=(float(c),)).estimator(task).model_after_scaling(float(c), train_rows,
                                                                                    Xs.shape[1])

    def one(i: int) -> np.ndarray:
        y = labellings[:, i]
        try:
            fold = stratified_folds(y, gs, config.folds, int(seeds[i]), continuous)
        except ValueError:
            return np.full(2 * len(METRICS), np.nan)
        pred, baseline = np.zeros(len(y)), np.zeros(len(y))
        # the inputs are checked once here, not 5 x 20 times by scikit-learn (a third of a small fit's time)
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            for train, test in fold_splits(fold):
                if not continuous and len(np.unique(y[train])) < 2:
                    return np.full(2 * len(METRICS), np.nan)
                pred[test] = clone(model).fit(Xs[train], y[train]).predict(Xs[test])
                baseline[test] = np.median(y[train]) if continuous else 0
        return _scores_and_variances(y, pred, baseline, gs, index, continuous, int(seeds[i]))

    values = np.array(map_in_threads(one, range(n_perm)), dtype=float)
    factors = {}
    for m, name in enumerate(METRICS[:3 if continuous else 1]):
        scores, variances = values[:, 2 * m], values[:, 2 * m + 1]
        ok = np.isfinite(scores) & np.isfinite(variances)
        if ok.sum() < max(10, n_perm // 2) or np.mean(variances[ok]) <= 0:
            continue
        # the ratio is itself estimated from ok.sum() labellings: a t quantile in place of the normal one
        # carries that uncertainty into the width (x1.07 at 20), as a t interval does for an estimated sd
        t_over_z = stats.t.ppf(0.975, ok.sum() - 1) / stats.norm.ppf(0.975)
        ratio = np.sqrt(np.var(scores[ok], ddof=1) / np.mean(variances[ok]))
        factors[name] = float(max(1.0, ratio) * t_over_z)
    return NullWidth(factors, n_perm, len(rows)) if factors else None


def _scores_and_variances(y: np.ndarray, pred: np.ndarray, baseline: np.ndarray, subjects: np.ndarray,
                          index: SubjectIndex, continuous: bool, seed: int) -> np.ndarray:
    """(score, its fixed-prediction bootstrap variance) for each metric, flattened; NaN where undefined."""
    def var(replicates: np.ndarray) -> float:
        finite = replicates[np.isfinite(replicates)]
        return float(np.var(finite, ddof=1)) if finite.size > 10 else float("nan")

    if not continuous:
        ba = bootstrap_balanced_accuracy(y, pred.astype(int), subjects, WIDTH_BOOTSTRAP, seed, index=index)
        return np.array([balanced_accuracy(y, pred.astype(int)), var(ba)] + [np.nan] * 4)
    mae = bootstrap_mae(y, pred, subjects, WIDTH_BOOTSTRAP, seed, index=index)
    gap = mae - bootstrap_mae(y, baseline, subjects, WIDTH_BOOTSTRAP, seed, index=index)
    constant = np.ptp(pred) <= 1e-12
    r = float("nan") if constant else float(np.corrcoef(y, pred)[0, 1])
    r_var = float("nan") if constant else var(bootstrap_correlation(y, pred, subjects, WIDTH_BOOTSTRAP, seed,
                                                                    index=index))
    return np.array([
        np.mean(np.abs(y - pred)), var(mae),
        np.mean(np.abs(y - pred)) - np.mean(np.abs(y - baseline)), var(gap),
        r, r_var,
    ])


def widened(estimate: float, interval: tuple[float, float], factor: float,
            clip: Callable[[float, float], tuple[float, float]] | None = None) -> tuple[float, float]:
    """`interval`'s distances from `estimate` times `factor` (each side apart: the interval may be skewed)."""
    low, high = interval
    if not (np.isfinite(low) and np.isfinite(high)) or factor == 1.0:
        return interval
    # a bound on the estimate's wrong side (an interval that misses it) is not pushed further out
    low, high = estimate - factor * max(0.0, estimate - low), estimate + factor * max(0.0, high - estimate)
    return clip(low, high) if clip else (float(low), float(high))
