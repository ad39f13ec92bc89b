"""The cross-site analysis's leave-one-site-out fits and the reading of its headline (`cross_site`)."""

from __future__ import annotations

import numpy as np

from embedx.analysis.folds import stratified_splits, subject_codes
from embedx.analysis.probe_core import ProbeConfig
from embedx.parallel import map_in_threads

__all__ = ["folds_inside_and_out", "gap_verdict"]


def folds_inside_and_out(
    X: np.ndarray, y: np.ndarray, groups: np.ndarray, train: np.ndarray, test: np.ndarray, cfg: ProbeConfig,
    notes: set[str],
) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """Grouped CV on the `train` rows (the folds of `out_of_fold_scores`): (out-of-fold scores, each fold
    model's scores of the `test` rows, each fold model's C). The external score thus comes from the very
    models that give the internal one, trained on the same (k-1)/k of the training sites' rows."""
    codes = subject_codes(groups[train])
    splits = stratified_splits(y[train], codes, cfg.folds, cfg.seed)

    def fit_fold(split: tuple[np.ndarray, np.ndarray]):
        inner, outer = split
        probe = cfg.estimator("classification").fit(X, y[train][inner], codes[inner], rows_of_X=train[inner])
        return probe, probe.decision_function(X[train[outer]]), probe.decision_function(X[test])

    internal = np.zeros(len(train))
    external, chosen = [], []
    for (_, outer), (probe, inside, outside) in zip(splits, map_in_threads(fit_fold, splits), strict=True):
        notes.update(probe.notes_)
        internal[outer] = inside
        external.append(outside)
        chosen.append(float(probe.C_))
    return internal, external, chosen


def gap_verdict(lo: float | None, hi: float | None) -> str:
    """The headline's reading of the internal - external CI, in both directions.

    A gap below zero is no sign of a site shortcut; it is named anyway, since "no gap" would contradict the
    printed CI. Held-out sites that are easier lean the difference that way. (Internal CV trained on fewer
    rows than the external model did until the external score came from the same fold models; results
    stored before that carry the lean too.)
    """
    if lo is not None and lo > 0:
        return "internal > external: the probe's internal score does not transfer to unseen sites"
    if hi is not None and hi < 0:
        return (
            "external > internal: the held-out sites score higher than internal CV (no sign of a site "
            "shortcut; held-out sites may be easier)"
        )
    return "no internal-external gap distinguishable from zero"
