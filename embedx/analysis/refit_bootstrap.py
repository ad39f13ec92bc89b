"""A probe's interval for pilot cohorts: resample subjects and run the whole cross-validation again.

Why not the usual interval. Resampling subjects over fixed out-of-fold predictions treats the five fold
models as given and captures only which subjects happened to be tested. With few subjects, most of a
cross-validated score's spread comes from the models themselves (another 30 subjects train another
probe), and from the folds sharing their training rows. Such 95 % intervals covered the truth 79-86 % of
the time on cohorts of 7-40 subjects in the rarest class (94 % at 300 subjects).

What this does instead. Each replicate draws subjects with replacement (within each class, so that every
class keeps its size; a continuous attribute draws from all), and runs the same cross-validation on the
drawn cohort: the copies of a subject stay in that subject's fold, so no subject is both trained and tested
on, and each fold is refitted at the C its tuning chose on the real data. The spread of the replicates
estimates the spread of the cross-validated score, model variability included. The interval is centred on
the cohort's own score: `score + (quantiles of replicate - mean replicate)`, because a resampled cohort,
holding about 63 % distinct subjects, trains slightly weaker probes; their mean says nothing about the
cohort and is removed.

Figures (bench/probe_ci.py; 95 % intervals, binary attribute, 1-4 images per subject, 32-d latents; the
truth is the fold models' balanced accuracy on 20,000 new subjects): coverage 95.0 % at 40 subjects (12 in
the rarer class; 80 cohorts), where the fixed-prediction interval gave 87 %; in the prototype, 95.5 % with
no effect at 40 subjects (83 % before) and 92.5 % at 150 subjects with 7 in the rarer class (79 % before).
Centring on the replicates' quantiles rather than reflecting them (the "basic" bootstrap) matters there:
reflected, that case covered 80 %.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import clone

from embedx.analysis.linear_probe import balanced_accuracy
from embedx.analysis.stats import CI_LEVEL
from embedx.parallel import map_in_threads

if TYPE_CHECKING:
    from embedx.analysis.probe_config import ProbeConfig

REFIT_RESAMPLES = 100  # each costs one cross-validation at fixed C (5 small fits); 100 covered as 200 did


def subject_strata(codes: np.ndarray, subjects: np.ndarray,
                   continuous: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows of each subject as an object array, each subject's stratum: its most frequent class, or 0)."""
    _, inverse = np.unique(subjects, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(inverse.max() + 1))
    rows_of = np.empty(len(starts), dtype=object)
    rows_of[:] = np.split(order, starts[1:])
    if continuous:
        return rows_of, np.zeros(len(starts), dtype=int)
    k = int(np.max(codes)) + 1
    counts = np.zeros((len(starts), k))
    np.add.at(counts, (inverse, np.asarray(codes, dtype=int)), 1)
    return rows_of, counts.argmax(axis=1)


def refit_replicates(
    X: np.ndarray,
    codes: np.ndarray,
    subjects: np.ndarray,
    fold: np.ndarray,
    c_per_fold: dict[int, float],
    config: ProbeConfig,
    continuous: bool,
    n_resamples: int = REFIT_RESAMPLES,
    fold_X: Callable[[int], np.ndarray] | None = None,
    versus_chance: bool = False,
) -> np.ndarray:
    """Balanced accuracy (or MAE) of the whole cross-validation on each subject resample; NaN where a
    resample left a fold's training rows with one class (counted as dropped).

    `versus_chance` (continuous only) returns shape (n, 3): each replicate's MAE, its chance MAE (the
    training folds' median, as the probe's baseline) on the same drawn cohort, so that the pair can be
    differenced (whether the probe beats chance is a paired question on the same subjects), and the
    correlation of its predictions with the label (NaN if either is constant).
    """
    task = "regression" if continuous else "classification"
    rows_of, strata = subject_strata(codes, subjects, continuous)
    by_stratum = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = np.random.default_rng(config.seed + 7919)
    draws = [np.concatenate([rng.choice(members, len(members)) for members in by_stratum])
             for _ in range(n_resamples)]  # drawn up front: the same replicates whatever the threads do
    folds = np.unique(fold)
    matrices = {int(f): (X if fold_X is None else np.asarray(fold_X(int(f)))) for f in folds}
    probes = {int(f): replace(config, c_grid=(c_per_fold[int(f)],)).estimator(task) for f in folds}

    def score(drawn: np.ndarray) -> float | tuple[float, float, float]:
        rows = np.concatenate(rows_of[drawn])
        copies = np.repeat(np.arange(len(drawn)), [len(rows_of[s]) for s in drawn])
        y, f_rows = codes[rows], fold[rows]
        pred = np.zeros(len(rows))
        baseline = np.zeros(len(rows))
        for f in folds:
            train, test = np.flatnonzero(f_rows != f), np.flatnonzero(f_rows == f)
            if test.size == 0:
                continue
            if not continuous and len(np.unique(y[train])) < 2:
                return float("nan")
            matrix = matrices[int(f)]
            probe = clone(probes[int(f)]).fit(matrix, y[train], copies[train], rows_of_X=rows[train])
            pred[test] = probe.predict(matrix[rows[test]])
            if continuous:
                baseline[test] = np.median(y[train])
        if not continuous:
            return balanced_accuracy(y, pred)
        mae = float(np.mean(np.abs(y - pred)))
        if not versus_chance:
            return mae
        constant = np.ptp(pred) <= 1e-12 or np.ptp(y) <= 1e-12
        r = float("nan") if constant else float(np.corrcoef(y, pred)[0, 1])
        return (mae, float(np.mean(np.abs(y - baseline))), r)

    return np.array(map_in_threads(score, draws), dtype=float)


def centred_interval(score: float, replicates: np.ndarray, continuous: bool,
                     level: float = CI_LEVEL, clip: bool = True) -> tuple[float, float]:
    """`score` plus the replicates' central quantiles around their own mean (see the module doc), kept
    inside the metric's range ([0, 1] for balanced accuracy, >= 0 for MAE) unless `clip` is off (a
    difference such as MAE minus chance MAE, which may have either sign).

    The interval always holds `score`: replicates piled at the metric's edge (a pilot probe right on nearly
    every resample, its mean below its 2.5 % quantile) would otherwise put both quantiles on one side of it,
    and a perfect score got [1.00006, 1.0]."""
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    low, high = score + np.quantile(values - values.mean(), [alpha, 1 - alpha])
    low, high = min(float(low), score), max(float(high), score)
    if not clip:
        return (low, high)
    top = np.inf if continuous else 1.0
    return (float(np.clip(low, 0.0, top)), float(np.clip(high, 0.0, top)))
