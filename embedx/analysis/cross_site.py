"""Train on one site, test on another (Zech 2018; seed 001's train-on-manufacturer / test-on-manufacturer).

A finding probe that scores well inside its own hospitals can owe part of that score to *recognising the
hospital*: when prevalence differs by site and the latents encode the site, ranking images by site already
ranks them by disease (Zech: AUC 0.861 from hospital alone). Outside those hospitals that shortcut is worth
nothing. Three views of it, all from the probe of every analysis (`probe_core.LinearProbe`), AUC throughout:

* ``matrix[i][j]``: trained on site i, scored on site j. The diagonal is internal: out-of-fold scores of a
  subject-grouped CV inside site i. Off the diagonal the model fitted on all of site i scores site j.
* ``pooled``: grouped CV on all sites together; its AUC over the whole cohort (which *includes* the
  between-site ranking) and within each site (which does not).
* ``leave_one_site_out`` (Zech's design): for each site j, the probe trained on every other site, scored
  internally (grouped CV across those sites, the number a paper would report) and externally on site j.
  ``external_auc`` is the mean AUC on site j of the *same fold models* that gave the internal scores;
  ``external_auc_full_model`` (descriptive) that of one model fitted on all the training sites.

Uncertainty: one cluster bootstrap of subjects *within each site* (site sizes fixed) re-scores every cell on
the same drawn subjects, so differences are paired: ``internal_vs_external`` (headline: leave-one-site-out
internal minus external, averaged over held-out sites) and ``pairs`` (for test site j: the model trained on j
minus the model trained on i, on the very same subjects of j). Predictions are fixed; nothing is refit (the
differences' intervals are then widened, below).

Why the headline is built and widened as it is. In null cohorts (sites exchangeable: one prevalence, no site
in the latents; 3-4 sites of 40-120 subjects, 1-3 images each, 8-32-d; `bench/cross_site_null.py`) the
fixed-prediction interval of the headline claimed a gap in 16-17 % of cohorts (32 of 199 and 67 of 400;
10 % of 60 at 400-700 subjects per site), where 5 % was promised. Two causes:

* Bias. Internal CV trains on (k-1)/k of the training sites' rows and the external model on all of them, so
  on small cohorts external scored higher by itself (mean difference -0.011; most false claims read
  "external > internal"). The external AUC is now that of the fold models themselves, each trained on the
  rows the internal score's models were: the null mean fell to -0.003, within the noise of 600 cohorts (what
  is left is the pooled out-of-fold AUC mixing five models' scales). The full model's AUC stays descriptive.
* Variance. Resampling fixed predictions cannot see that another sample of subjects trains other probes
  (`cv_width` found the same for probe intervals). The differences' intervals (the headline's and each held-
  out site's) are widened by a factor measured on 20 refits (10 for a quick interval of under 400 resamples,
  as `cv_width`): the sites of the subjects are dealt at random within class, so every site keeps its
  positive and negative subjects but no site differs from another, and the whole leave-one-site-out design is
  refit on each (`cross_site_null.site_permutation_width`, at the C the fold probes chose, on at most 2,000
  rows of whole subjects). The ratio of the refitted headlines' variance to their mean fixed-prediction
  bootstrap variance, at least 1 and times t(m-1)/z, multiplies the interval's half-widths about the
  difference; the p value reads the replicates widened alike. The factor is recorded with the permuted
  headlines' mean and spread (``internal_vs_external.widening``; ``widening_factor`` per held-out site).
  Checked: on one cohort the permuted statistic through this very pipeline and through the refits had the
  same spread (0.048), and across designs the refits' spread matched the spread of the difference over 40-100
  fresh cohorts of that design (0.039 vs 0.041, 0.063 vs 0.057, 0.027 vs 0.024).

Figures (`bench/cross_site_null.py`: 5 folds, 400 resamples, tune off, 2 shared cores): null claims 34 of
599 cohorts (5.7 %; 16.5 % before the widening), 1 of 60 at 400-700 subjects per site; factor median 1.34
(1.07-2.1); with C tuned, 6 of 100. A Zech-style site shortcut (prevalence 10 / 60 %, site offsets of 1 or
2 sd) is found in 31 % and 56 % of cohorts. Cost: 20 x k x folds small fits (about x1.7 the analysis with C
tuned, e.g. 15.6 -> 21.2 s at 8,000 rows x 512-d).

The ``pairs`` are widened alike, each by its own factor from the same permuted cohorts (`cross_site_pairs`).
Against 0, null pairs had p < 0.05 in 7.4 % (15.0 % before), mostly "other > own" at small test sites; but a
pair compares two fitted models, and a model trained on more subjects truly scores higher: against the two
models' true AUCs (`bench/cross_site_cells.py`) the pairs' intervals missed in 5.3 % (no finding) and 6.1 %.
The matrix's diagonal and the pooled row are grouped-CV AUCs, whose fixed-prediction intervals missed their
fold models' true AUC in 11-23 % of cells: they are widened by factors measured on labellings permuted
within each site (`cross_site_cells`: 3-6 %); the leave-one-site-out internal AUCs by the pooled factor
(19.3 -> 8.0 % without a finding, 12.0 -> 3.9 % with one). A fixed model's AUC on another site (off the
diagonal, and the held-out sites' external AUCs) is widened by the small-sample factor t(r-1)/z of the test
site's rarer class (`cross_site_cells.small_sample_factor`: 9.5 % -> 7.5 % and 6.4 % -> 4.7 % missed).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedx._version import __version__
from embedx.analysis.cross_site_cells import cell_widths, small_sample_factor
from embedx.analysis.cross_site_loso import folds_inside_and_out, gap_verdict
from embedx.analysis.cross_site_null import permutations_for, site_permutation_width
from embedx.analysis.cross_site_pairs import pair_entries
from embedx.analysis.cv_width import widened
from embedx.analysis.labels import positive_class
from embedx.analysis.probe_core import ProbeConfig, out_of_fold_scores
from embedx.analysis.stats import auc_weighted, count_dropped, percentile_ci, stratified_subject_weights
from embedx.analysis.typed import JsonResult
from embedx.errors import EmbedxError
from embedx.progress import progress_bar

log = logging.getLogger(__name__)

MIN_PER_CLASS = 5  # a site needs this many subjects with a positive and with a negative image to be a cell
WIDTH_PERMUTATIONS = 20  # site-permuted refits that measure the headline's widening (`cross_site_null`)


@dataclass(frozen=True)
class CrossSiteResult(JsonResult):
    """The train-on-site-i / test-on-site-j matrix, pooled and leave-one-site-out AUCs, paired differences."""

    sites: list[str]
    skipped_sites: dict[str, str]
    n: dict[str, int]  # images per site
    positives: dict[str, int]  # positive images per site
    prevalence: dict[str, float]  # subjects with a positive image / subjects, per site
    matrix: list[list[float | None]]
    matrix_ci: list[list[list[float | None]]]
    pooled: dict[str, Any]
    leave_one_site_out: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    internal_vs_external: dict[str, Any]
    folds: int
    n_bootstrap: int
    seed: int
    metric: str = "auc"
    matrix_axes: str = "rows: trained on; columns: tested on; diagonal: grouped CV within the site"
    bootstrap: str = "subjects resampled within each site; all cells re-scored on the same draws (paired)"
    bootstrap_dropped: dict[str, int] = field(default_factory=dict)
    cell_widening: dict[str, Any] | None = None  # the CV cells' factors (`cross_site_cells`)
    notes: tuple[str, ...] = ()
    subjects: dict[str, int] = field(default_factory=dict)
    positive_subjects: dict[str, int] = field(default_factory=dict)
    control: str = "cross_site"
    model: str | None = None
    target: str | None = None
    site: str | None = None
    positive: str | None = None
    n_missing: int = 0
    rows_encoded: int | None = None  # the model's encoded rows when this ran
    embedx_version: str = __version__


def cross_site_arrays(
    X: np.ndarray,
    y: np.ndarray,
    site: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int = 5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    tune: bool = True,
    min_per_class: int = MIN_PER_CLASS,
    width_permutations: int = WIDTH_PERMUTATIONS,
) -> CrossSiteResult:
    """The whole analysis on arrays: X (n, d), y (n,) bool target, site (n,) str, groups (n,) subjects."""
    cfg = ProbeConfig(folds=folds, seed=seed, **({} if tune else {"c_grid": (0.1,)}))
    notes: set[str] = set()

    def oof(rows: np.ndarray) -> np.ndarray:
        scores, _, fold_notes = out_of_fold_scores(X[rows], y[rows], groups[rows], cfg)
        notes.update(fold_notes)
        return scores

    def fitted(rows: np.ndarray):
        probe = cfg.estimator("classification").fit(X[rows], y[rows], groups[rows])
        notes.update(probe.notes_)
        return probe

    y = np.asarray(y, dtype=bool)
    site = np.asarray(site).astype(str)
    groups = np.asarray(groups).astype(str)
    skipped: dict[str, str] = {}
    sites: list[str] = []
    rarer: dict[str, int] = {}  # subjects of the rarer class per site: the AUC's small-sample precision
    for s in sorted(np.unique(site)):
        rows = site == s
        pos_subj = len(np.unique(groups[rows & y]))
        neg_subj = len(np.unique(groups[rows & ~y]))
        if min(pos_subj, neg_subj) < min_per_class:  # subjects, the unit every interval here resamples
            skipped[s] = (
                f"too few subjects to score: {pos_subj} with a positive image, {neg_subj} with a "
                f"negative one; need {min_per_class} of each"
            )
            continue
        sites.append(str(s))
        rarer[str(s)] = min(pos_subj, neg_subj)
    if len(sites) < 2:
        raise EmbedxError(
            "cross-site needs at least two sites with enough positives and negatives; "
            + ("; ".join(f"{k}: {v}" for k, v in skipped.items()) or "only one site present")
        )
    keep = np.isin(site, sites)
    X, y, site, groups = X[keep], y[keep], site[keep], groups[keep]
    rows_of = {s: np.flatnonzero(site == s) for s in sites}
    K = len(sites)
    # Each cell: (rows it is scored on, decision scores for those rows).
    cells: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    site_c: list[float] = []  # each site's own model's C: the pairs' refits use their median
    with progress_bar(2 * K + 1, "cross-site probes", unit="fits") as advance:
        for s in sites:
            r = rows_of[s]
            cells[(s, s)] = (r, oof(r))
            model = fitted(r)
            site_c.append(float(model.C_))
            for t in sites:
                if t != s:
                    cells[(s, t)] = (rows_of[t], model.decision_function(X[rows_of[t]]))
            advance()
        all_rows = np.arange(len(y))
        pooled_scores = oof(all_rows)
        advance()
        loso: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        chosen_c: list[float] = []
        for s in sites:
            train = np.flatnonzero(site != s)
            internal, external, fold_c = folds_inside_and_out(X, y, groups, train, rows_of[s], cfg, notes)
            chosen_c += fold_c
            model = fitted(train)
            loso[s] = (train, internal, external, model.decision_function(X[rows_of[s]]))
            advance()

    def auc_of(rows: np.ndarray, scores: np.ndarray, W: np.ndarray) -> np.ndarray:
        return auc_weighted(scores, y[rows], W[:, rows])

    ones = np.ones((1, len(y)))
    rng = np.random.default_rng(seed)
    boot: dict[str, list[np.ndarray]] = {}
    point: dict[str, float] = {}

    def collect(W: np.ndarray, store: dict, is_point: bool) -> None:
        values: dict[str, np.ndarray] = {}
        for (s, t), (rows, scores) in cells.items():
            values[f"cell:{s}:{t}"] = auc_of(rows, scores, W)
        values["pooled"] = auc_of(all_rows, pooled_scores, W)
        for s in sites:
            values[f"pooled_site:{s}"] = auc_of(rows_of[s], pooled_scores[rows_of[s]], W)
            train, internal, external, full = loso[s]
            values[f"loso_int:{s}"] = auc_of(train, internal, W)
            # the fold models that scored the internal rows, each on the whole held-out site: averaged AUC
            values[f"loso_ext:{s}"] = np.mean([auc_of(rows_of[s], e, W) for e in external], axis=0)
            values[f"loso_full:{s}"] = auc_of(rows_of[s], full, W)
        for key, value in values.items():
            if is_point:
                store[key] = float(value[0])
            else:
                store.setdefault(key, []).append(value)

    collect(ones, point, True)
    chunk = 100
    done = 0
    while done < n_bootstrap:
        step = min(chunk, n_bootstrap - done)
        collect(stratified_subject_weights(site, groups, step, rng), boot, False)
        done += step
    reps = {k: np.concatenate(v) for k, v in boot.items()} if boot else {}

    def ci(key: str, factor: float | None = None) -> list[float | None]:
        """The percentile interval, widened about the point by `factor` where one is given."""
        if not reps:
            return [None, None]
        lo, hi = percentile_ci(reps[key])
        if factor and factor != 1.0 and np.isfinite(point[key]):
            lo, hi = widened(point[key], (lo, hi), factor, _unit_interval)
        return [_num(lo), _num(hi)]

    def diff(a: str, b: str, factor: float = 1.0) -> dict:
        d = point[a] - point[b]
        out: dict = {"difference": _num(d), "ci": [None, None], "p_value": None}
        if reps:
            delta = reps[a] - reps[b]
            delta = delta[np.isfinite(delta)]
            if np.isfinite(d) and factor != 1.0:  # the replicates' spread about the estimate, times factor
                lo, hi = percentile_ci(delta)
                out["ci"] = [_num(v) for v in widened(d, (lo, hi), factor)]
                delta = d + factor * (delta - d)
            else:
                out["ci"] = [_num(v) for v in percentile_ci(delta)]
            # Two-sided bootstrap p for "no difference": how often the resampled difference crosses zero.
            crossing = min(int((delta <= 0).sum()), int((delta >= 0).sum()))
            out["p_value"] = float(min(1.0, (1 + 2 * crossing) / (1 + len(delta))))
        return out

    matrix = [[_num(point[f"cell:{s}:{t}"]) for t in sites] for s in sites]
    width, cells_width = None, None
    if reps and width_permutations > 0:
        # C: the fold probes' median choice (one value, 0.1, without tuning)
        c = float(np.median(chosen_c)) if chosen_c else 0.1
        probe = cfg.estimator("classification")
        site_n = {s: len(r) * (folds - 1) // folds for s, r in rows_of.items()}
        cells_width = cell_widths(
            X, y, site, groups, folds=folds, seed=seed,
            permutations=permutations_for(width_permutations, n_bootstrap),
            site_models={s: probe.model_after_scaling(site_c[i], site_n[s], X.shape[1])
                         for i, s in enumerate(sites)},
            pooled_model=probe.model_after_scaling(c, len(y) * (folds - 1) // folds, X.shape[1]),
        )
        train_rows = int(np.median([len(loso[s][0]) for s in sites])) * (folds - 1) // folds
        width = site_permutation_width(
            X, y, site, groups,
            model=cfg.estimator("classification").model_after_scaling(c, train_rows, X.shape[1]),
            folds=folds, seed=seed, permutations=permutations_for(width_permutations, n_bootstrap),
            min_per_class=min_per_class, pair_model=cfg.estimator("classification").model_after_scaling(
                float(np.median(site_c)), int(np.median([len(r) for r in rows_of.values()])), X.shape[1]),
        )
        if width is not None:
            notes.add(
                "the internal-external differences' and the pairs' intervals are widened for the probes' "
                f"training variability, which fixed predictions miss: x{width.factor:.2f} for the headline, "
                f"measured on {width.permutations} refits with the sites dealt at random within class (see "
                "internal_vs_external.widening; each pair's widening_factor)"
            )
        else:
            notes.add("the headline's and the pairs' intervals are not widened: too few site-permuted refits "
                      "gave a value (fixed-prediction bootstrap only, too narrow)")
    pairs = pair_entries(sites, point, diff, width, _num)

    # grouped-CV cells by their measured factors (`cross_site_cells`); a fixed model's AUC on another site by
    # the small-sample factor of that site's rarer class
    diagonal = cells_width.diagonal if cells_width else {}
    matrix_ci = [[ci(f"cell:{s}:{t}", diagonal.get(s) if s == t else small_sample_factor(rarer[t]))
                  for t in sites] for s in sites]
    # the internal scores are grouped CV on all sites but one: the pooled CV's factor stands in for theirs
    pooled_factor = cells_width.pooled if cells_width else None
    if cells_width:
        notes.add("the matrix's diagonal and the pooled row are grouped CV, whose intervals are widened for "
                  "what resampling fixed out-of-fold scores misses (cell_widening; measured on "
                  f"{cells_width.permutations} labellings permuted within each site)")
    loso_out = []
    for s in sites:
        entry = {
            "held_out": s,
            "internal_auc": _num(point[f"loso_int:{s}"]),
            "internal_ci": ci(f"loso_int:{s}", pooled_factor),
            "external_auc": _num(point[f"loso_ext:{s}"]),
            "external_ci": ci(f"loso_ext:{s}", small_sample_factor(rarer[s])),
            "external_auc_full_model": _num(point[f"loso_full:{s}"]),
            "external_full_model_ci": ci(f"loso_full:{s}", small_sample_factor(rarer[s])),
        }
        factor = width.site_factors.get(s, width.factor) if width else 1.0  # too few: the headline's
        entry.update(diff(f"loso_int:{s}", f"loso_ext:{s}", factor))
        entry["widening_factor"] = round(factor, 3) if width else None
        loso_out.append(entry)
    # Headline: mean over held-out sites of (internal - external), bootstrapped as one statistic.
    int_keys, ext_keys = [f"loso_int:{s}" for s in sites], [f"loso_ext:{s}" for s in sites]
    full_keys = [f"loso_full:{s}" for s in sites]
    for name, keys in (("mean_int", int_keys), ("mean_ext", ext_keys), ("mean_full", full_keys)):
        point[name] = float(np.mean([point[k] for k in keys]))
        if reps:
            reps[name] = np.mean([reps[k] for k in keys], axis=0)
    headline = {
        "design": "leave-one-site-out: internal grouped CV on the training sites vs the held-out site, "
                  "scored by the same fold models",
        "internal_auc": _num(point["mean_int"]),
        "internal_ci": ci("mean_int", pooled_factor),
        "external_auc": _num(point["mean_ext"]),
        "external_ci": ci("mean_ext"),
        "external_auc_full_model": _num(point["mean_full"]),
        "external_full_model_ci": ci("mean_full"),
    }
    headline.update(diff("mean_int", "mean_ext", width.factor if width else 1.0))
    headline["widening"] = width.as_dict() if width else None
    headline["verdict"] = gap_verdict(*headline["ci"])
    subject_counts = {s: len(np.unique(groups[rows_of[s]])) for s in sites}
    positive_subjects = {s: len(np.unique(groups[rows_of[s]][y[rows_of[s]]])) for s in sites}
    return CrossSiteResult(
        sites=sites,
        skipped_sites=skipped,
        n={s: len(rows_of[s]) for s in sites},
        positives={s: int(y[rows_of[s]].sum()) for s in sites},
        prevalence={s: positive_subjects[s] / subject_counts[s] for s in sites},
        subjects=subject_counts,
        positive_subjects=positive_subjects,
        matrix=matrix,
        matrix_ci=matrix_ci,
        pooled={
            "auc": _num(point["pooled"]),
            "ci": ci("pooled", cells_width.pooled if cells_width else None),
            "by_site": {
                s: {"auc": _num(point[f"pooled_site:{s}"]),
                    "ci": ci(f"pooled_site:{s}", cells_width.pooled_site.get(s) if cells_width else None)}
                for s in sites
            },
        },
        cell_widening=cells_width.as_dict() if cells_width else None,
        leave_one_site_out=loso_out,
        pairs=pairs,
        internal_vs_external=headline,
        folds=folds,
        n_bootstrap=n_bootstrap,
        seed=seed,
        bootstrap_dropped={k: count_dropped(v) for k, v in reps.items() if count_dropped(v)},
        notes=tuple(sorted(notes)),
    )


def _unit_interval(low: float, high: float) -> tuple[float, float]:
    return max(0.0, float(low)), min(1.0, float(high))


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def cross_site(
    store_path: str | Path,
    target: str,
    site: str,
    model: str | None = None,
    *,
    positive: str | None = None,
    folds: int = 5,
    n_bootstrap: int = 1000,
    seed: int = 0,
    write: bool = True,
) -> CrossSiteResult:
    """Cross-site matrix for ``target`` over the values of ``site`` (or manufacturer) from a store's latents.

    Written to `/analysis/controls/cross_site__<model>__<target>__<site>` when ``write``.
    """
    from embedx.analysis.clusters import resolve_model
    from embedx.store.h5store import Store

    with Store.open(store_path, "r") as store:
        model = resolve_model(store.models(), model, store_path)
        attributes = store.attributes()
        for name in (target, site):
            if name not in attributes.columns:
                raise EmbedxError(
                    f"{store_path}: no attribute {name!r}; the store has {', '.join(attributes.columns)}"
                )
        z = store.latents(model)
        mask = store.encoded_mask(model)
        subjects = np.asarray(store.subject_ids).astype(str)
    label, missing, positive_text = positive_class(attributes[target].to_numpy(), target, positive)
    usable = mask & ~missing & attributes[site].notna().to_numpy()
    rows = np.flatnonzero(usable)
    result = cross_site_arrays(
        z[rows],
        label[rows],
        attributes[site].to_numpy()[rows],
        subjects[rows],
        folds=folds,
        n_bootstrap=n_bootstrap,
        seed=seed,
    ).replace(
        rows_encoded=int(mask.sum()),
        model=model, target=target, site=site, positive=positive_text, n_missing=int((~usable & mask).sum())
    )
    if write:
        with Store.open(store_path, "a") as store:
            store.write_analysis("controls", f"cross_site__{model}__{target}__{site}", result.to_dict())
    return result
