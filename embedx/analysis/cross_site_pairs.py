"""The cross-site ``pairs`` (for test site j: its own model minus the model trained on site i, on the same
subjects of j) and the refits that widen their intervals.

A pair's difference varies with the training of both models (another sample of j's or of i's subjects trains
other probes), which resampling fixed predictions cannot see: with fixed-prediction intervals 15.0 % of the
pairs of null cohorts (exchangeable sites) had p < 0.05 (`cross_site`'s module doc). The pairs are therefore
refit on the headline's site-permuted cohorts (`cross_site_null`: each subject's site dealt at random within
class, every model refit: grouped CV inside the test site, one model on all of the training site), and each
pair's interval and p are widened by the ratio of the permuted differences' spread to their mean fixed-
prediction bootstrap spread (at least 1, times t(m-1)/z), as the headline's are. Left: 7.4 % of null pairs
(6.5 % on other seeds) still have p < 0.05, most at test sites of under 70 subjects and reading "other > own"
(a small site's own grouped CV scores low; the permuted differences' mean shows that lean, but 20 of them
measure it too noisily per pair to subtract: subtracting it left 7.4 %).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import clone

from embedx.analysis.folds import stratified_splits
from embedx.analysis.stats import auc_weighted
from embedx.errors import EmbedxError

__all__ = ["oof_auc", "pair_entries", "pair_keys", "permuted_pair_gaps"]


def pair_keys(sites: list[str]) -> list[tuple[str, str]]:
    """(test, train) for every ordered pair of distinct sites, test-major: the order of ``pairs``."""
    return [(t, s) for t in sites for s in sites if s != t]


def oof_auc(Xs: np.ndarray, y: np.ndarray, groups: np.ndarray, rows: np.ndarray, model: object, folds: int,
             seed: int, W: np.ndarray, score_on: list[np.ndarray]) -> list[np.ndarray] | None:
    """Grouped CV of `model` on `rows`: the out-of-fold AUC (for every row of `W`) on each subset of rows
    in `score_on` (indices into `rows`). None where the folds cannot be made or a fold lacks a class."""
    try:
        splits = stratified_splits(y[rows], groups[rows], folds, seed)
    except (ValueError, EmbedxError):
        return None
    scores = np.zeros(len(rows))
    for inner, outer in splits:
        if len(np.unique(y[rows[inner]])) < 2:
            return None
        scores[outer] = clone(model).fit(Xs[rows[inner]], y[rows[inner]]).decision_function(Xs[rows[outer]])
    return [auc_weighted(scores[part], y[rows[part]], W[:, rows[part]]) for part in score_on]


def permuted_pair_gaps(
    Xs: np.ndarray, ys: np.ndarray, gs: np.ndarray, row_site: np.ndarray, sites: list[str] | np.ndarray,
    W: np.ndarray, model: object, folds: int, seed: int,
) -> list[np.ndarray] | None:
    """On one (permuted) cohort of standardised rows: each pair's difference (`pair_keys` order) for every
    row of the weights `W` (row 0 the point, the rest resamples), with every model refit as the analysis
    fits it: grouped CV inside the test site, one model on all of the training site. None where a site
    cannot be cross-validated or a fold lacks a class."""
    own: dict[str, np.ndarray] = {}
    full: dict[str, object] = {}
    for s in sites:
        rows = np.flatnonzero(row_site == s)
        scored = oof_auc(Xs, ys, gs, rows, model, folds, seed, W, [np.arange(len(rows))])
        if scored is None:
            return None
        own[s] = scored[0]
        full[s] = clone(model).fit(Xs[rows], ys[rows])
    gaps = []
    for t, s in pair_keys(list(sites)):
        rows = np.flatnonzero(row_site == t)
        gaps.append(own[t] - auc_weighted(full[s].decision_function(Xs[rows]), ys[rows], W[:, rows]))
    return gaps


def pair_entries(
    sites: list[str], point: dict[str, float], diff: Callable[..., dict], width: object | None,
    num: Callable[[float], float | None],
) -> list[dict]:
    """The ``pairs`` list: for each test site, its own model's AUC vs each other site's model's, on the same
    subjects; the difference's interval and p widened by the pair's factor where `width` measured one (the
    headline's where too few of the pair's refits gave a value; none without `width`)."""
    out = []
    factors = getattr(width, "pair_factors", {}) or {}
    for t, s in pair_keys(sites):
        entry: dict = {
            "test": t,
            "train": s,
            "internal_auc": num(point[f"cell:{t}:{t}"]),
            "external_auc": num(point[f"cell:{s}:{t}"]),
        }
        factor = factors.get((t, s), getattr(width, "factor", None))  # too few refits: the headline's
        entry.update(diff(f"cell:{t}:{t}", f"cell:{s}:{t}", factor if factor else 1.0))
        entry["widening_factor"] = round(factor, 3) if factor else None
        out.append(entry)
    return out
