"""Do the cross-site matrix's and the pooled row's 95 % intervals cover the AUC they estimate?

    .venv/bin/python bench/cross_site_cells.py                         # 60 cohorts, finding 0.5-1.0 sd
    .venv/bin/python bench/cross_site_cells.py --signal 0 0            # no finding at all (AUC 0.5)
    .venv/bin/python bench/cross_site_cells.py --cohorts 100 --workers 2 --seed 500

Cohorts as `bench/cross_site_null.py`'s null ones (3-4 exchangeable sites of 40-120 subjects, 1-3 images
each, 8-32-d latents, one prevalence of 10-50 %), the finding shifting latent 0 by `--signal` sd. Every site
has the same distribution, so the AUC a linear score w.x + b reaches on fresh images of any site is known in
closed form: Phi(w_0 s / (|w| sqrt(2 x 1.25))) (x = z + 0.5 noise, z ~ N(s f e_0, I)). The truth a cell's
interval is judged against:

* diagonal (grouped CV inside site i): the mean true AUC of the fold models that gave the out-of-fold scores;
* off the diagonal (the model fitted on all of site i, scored on site j): that model's true AUC;
* pooled row (grouped CV on every site, scored within site j): the pooled fold models' mean true AUC;
* ``pairs`` (test site j's own grouped CV minus site i's full model, on j's subjects): the difference of those
  two truths (not 0: a model trained on more subjects is truly better, even where sites are exchangeable).

The fold and full models are refit here exactly as `cross_site_arrays` fits them (same splits, same C), and
their out-of-fold AUC is checked against the matrix's point value. Printed: the share of intervals that miss
their truth (5 % is the promise), apart for each kind of cell and for test sites with under 15 subjects in
their rarer class, and the median interval width.

Measured (session 22, 2 shared cores, 400 resamples, 20 refits, C 0.1), missed intervals before -> after
`cross_site_cells` (the CV cells' refit widening and the off-diagonal cells' small-sample factor):

| cells | no finding (`--signal 0 0 --seed 300`, 80 cohorts) | finding 0.5-1 sd (seeds 0-119) |
|---|---|---|
| diagonal | 12.4 % -> 4.7 % of 274 | 14.9 % -> 4.7 % of 424 |
| off-diagonal | 9.5 % -> 7.5 % of 684 | 6.4 % -> 4.7 % of 1,106 |
| pooled by site | 11.3 % -> 6.2 % of 274 | 7.1 % -> 4.0 % of 424 |
| pooled | 22.5 % -> 5.0 % of 80 | 10.8 % -> 3.3 % of 120 |
| internal (leave-one-site-out) | 19.3 % -> 8.0 % of 274 | 12.0 % -> 3.9 % of 284 (seeds 0-79) |
| pairs (after only) | 5.3 % of 684 | 6.1 % of 1,106 (9.2 % of 196 at a rarer class under 15) |

The refits for the CV cells took the analysis from 3.1 to 4.0 s per cohort (median, about 560 rows).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import stats

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedx.analysis.cross_site import cross_site_arrays
from embedx.analysis.folds import stratified_splits, subject_codes
from embedx.analysis.probe_core import ProbeConfig
from embedx.analysis.stats import auc_weighted
from embedx.errors import EmbedxError

IMAGE_VARIANCE = 1.0 + 0.5**2  # z ~ N(., I) plus image noise of 0.5 sd


def simulate(seed: int, signal: tuple[float, float], subjects: tuple[int, int]) -> tuple:
    """(X, y, site, subject, signal): exchangeable sites, one prevalence, the finding along latent 0."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 5))
    sizes = rng.integers(subjects[0], subjects[1] + 1, k)
    dim = int(rng.integers(8, 33))
    shift = float(rng.uniform(*signal))
    prevalence = float(rng.uniform(0.1, 0.5))
    site_of = np.repeat(np.arange(k), sizes)
    n_subjects = int(sizes.sum())
    finding = rng.random(n_subjects) < prevalence
    Z = rng.standard_normal((n_subjects, dim))
    Z[:, 0] += shift * finding
    rows = np.repeat(np.arange(n_subjects), rng.integers(1, 4, n_subjects))
    X = Z[rows] + 0.5 * rng.standard_normal((len(rows), dim))
    sites = np.array([f"s{j}" for j in site_of[rows]])
    return X, finding[rows], sites, np.array([f"p{r}" for r in rows]), shift


def true_auc(probe: object, dim: int, shift: float) -> float:
    """The closed-form AUC of the probe's (affine) decision score on fresh images."""
    origin = probe.decision_function(np.zeros((1, dim)))
    w = probe.decision_function(np.eye(dim)) - origin
    norm = float(np.linalg.norm(w))
    return 0.5 if norm == 0 else float(stats.norm.cdf(w[0] * shift / (norm * np.sqrt(2 * IMAGE_VARIANCE))))


def fold_truth(X: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeConfig, shift: float
               ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], list[object]]:
    """Out-of-fold scores and fold models, as `probe_core.out_of_fold_scores` fits them."""
    codes = subject_codes(groups)
    splits = stratified_splits(y, codes, cfg.folds, cfg.seed)
    scores, models = np.zeros(len(y)), []
    for train, test in splits:
        probe = cfg.estimator("classification").fit(X, y[train], codes[train], rows_of_X=train)
        scores[test] = probe.decision_function(X[test])
        models.append(probe)
    return scores, splits, models


def one(args: tuple) -> dict:
    seed, signal, subjects, n_bootstrap, folds, permutations = args
    X, y, site, groups, shift = simulate(seed, signal, subjects)
    start = time.perf_counter()
    try:
        result = cross_site_arrays(X, y, site, groups, folds=folds, n_bootstrap=n_bootstrap, seed=seed,
                                   tune=False, width_permutations=permutations)
    except EmbedxError as err:
        return {"seed": seed, "skipped": str(err)}
    seconds = time.perf_counter() - start
    cfg = ProbeConfig(folds=folds, seed=seed, c_grid=(0.1,))
    sites, dim = result.sites, X.shape[1]
    cells = []
    own_truth, full_truth = {}, {}
    for i, s in enumerate(sites):
        rows = np.flatnonzero(site == s)
        scores, _, models = fold_truth(X[rows], y[rows], groups[rows], cfg, shift)
        point = float(auc_weighted(scores, y[rows], np.ones((1, len(rows))))[0])
        assert abs(point - result.matrix[i][i]) < 1e-9, (seed, s, point, result.matrix[i][i])
        own_truth[s] = float(np.mean([true_auc(m, dim, shift) for m in models]))
        cells.append(("diagonal", own_truth[s], result.matrix_ci[i][i], s))
        full = cfg.estimator("classification").fit(X, y[rows], subject_codes(groups[rows]), rows_of_X=rows)
        full_truth[s] = true_auc(full, dim, shift)
        cells += [("off-diagonal", full_truth[s], result.matrix_ci[i][j], t) for j, t in enumerate(sites)
                  if j != i]
    # a pair: the test site's own grouped CV minus the other site's full model, on the test site's subjects
    cells += [("pair", own_truth[p["test"]] - full_truth[p["train"]], p["ci"], p["test"])
              for p in result.pairs]
    for entry in result.leave_one_site_out:  # internal: grouped CV on every other site
        train = np.flatnonzero(np.isin(site, sites) & (site != entry["held_out"]))
        _, _, models = fold_truth(X[train], y[train], groups[train], cfg, shift)
        cells.append(("internal (LOSO)", float(np.mean([true_auc(m, dim, shift) for m in models])),
                      entry["internal_ci"], None))
    keep = np.isin(site, sites)
    _, _, pooled_models = fold_truth(X[keep], y[keep], groups[keep], cfg, shift)
    pooled_truth = float(np.mean([true_auc(m, dim, shift) for m in pooled_models]))
    cells += [("pooled by site", pooled_truth, result.pooled["by_site"][s]["ci"], s) for s in sites]
    cells.append(("pooled", pooled_truth, result.pooled["ci"], None))
    few = {s: min(result.positive_subjects[s], result.subjects[s] - result.positive_subjects[s])
           for s in sites}
    return {"seed": seed, "seconds": seconds, "cells": [
        {"kind": kind, "truth": truth, "ci": ci, "rarer_class": few.get(test) if test else None,
         "miss": bool(ci[0] is not None and not ci[0] <= truth <= ci[1])} for kind, truth, ci, test in cells]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohorts", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="8 cohorts, to check that it runs")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--signal", type=float, nargs=2, default=(0.5, 1.0), metavar=("LOW", "HIGH"),
                        help="the finding's shift of latent 0, in sd, drawn between these")
    parser.add_argument("--subjects", type=int, nargs=2, default=(40, 120), metavar=("LOW", "HIGH"))
    parser.add_argument("--bootstrap", type=int, default=400)
    parser.add_argument("--permutations", type=int, default=20, help="refits that measure the widenings")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.cohorts = 8
    tasks = [(args.seed + c, tuple(args.signal), tuple(args.subjects), args.bootstrap, args.folds,
              args.permutations) for c in range(args.cohorts)]
    start = time.perf_counter()
    if args.workers > 1:
        os.environ["EMBEDX_PROBE_THREADS"] = "1"
        with ProcessPoolExecutor(args.workers) as pool:
            records = list(pool.map(one, tasks))
    else:
        records = [one(t) for t in tasks]
    wall = time.perf_counter() - start
    records = [r for r in records if "skipped" not in r]
    print(f"{len(records)} cohorts, seeds {args.seed}-{args.seed + args.cohorts - 1}, finding "
          f"{args.signal[0]:g}-{args.signal[1]:g} sd, {args.bootstrap} resamples, {args.permutations} refits")
    print(f"{'cell':<16}{'intervals':>10}{'miss':>8}{'share':>8}{'median width':>14}"
          f"{'miss, rarer class < 15':>24}{'miss, >= 15':>13}")
    for kind in ("diagonal", "off-diagonal", "pooled by site", "pooled", "internal (LOSO)", "pair"):
        cells = [c for r in records for c in r["cells"] if c["kind"] == kind and c["ci"][0] is not None]
        misses = sum(c["miss"] for c in cells)
        width = np.median([c["ci"][1] - c["ci"][0] for c in cells])
        small = [c["miss"] for c in cells if c["rarer_class"] is not None and c["rarer_class"] < 15]
        large = [c["miss"] for c in cells if c["rarer_class"] is not None and c["rarer_class"] >= 15]
        print(f"{kind:<16}{len(cells):>10}{misses:>8}{misses / len(cells):>8.1%}{width:>14.3f}"
              f"{_share(small):>24}{_share(large):>13}")
    seconds = [r["seconds"] for r in records]
    print(f"seconds per cohort: median {np.median(seconds):.2f} (wall {wall:.0f} s, "
          f"{args.workers} worker(s))")


def _share(misses: list[bool]) -> str:
    return f"{np.mean(misses):.1%} of {len(misses)}" if misses else "-"


if __name__ == "__main__":
    main()
