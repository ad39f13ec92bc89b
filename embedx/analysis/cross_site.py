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

Uncertainty: one cluster bootstrap of subjects *within each site* (site sizes fixed) re-scores every cell on
the same drawn subjects, so differences are paired: ``internal_vs_external`` (headline: leave-one-site-out
internal minus external, averaged over held-out sites) and ``pairs`` (for test site j: the model trained on j
minus the model trained on i, on the very same subjects of j). Predictions are fixed; nothing is refit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedx._version import __version__
from embedx.analysis.labels import positive_class
from embedx.analysis.probe_core import ProbeConfig, out_of_fold_scores
from embedx.analysis.stats import auc_weighted, count_dropped, percentile_ci, stratified_subject_weights
from embedx.analysis.typed import JsonResult
from embedx.errors import EmbedxError
from embedx.progress import progress_bar

log = logging.getLogger(__name__)

MIN_PER_CLASS = 5  # a site needs this many subjects with a positive and with a negative image to be a cell


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
    with progress_bar(2 * K + 1, "cross-site probes", unit="fits") as advance:
        for s in sites:
            r = rows_of[s]
            cells[(s, s)] = (r, oof(r))
            model = fitted(r)
            for t in sites:
                if t != s:
                    cells[(s, t)] = (rows_of[t], model.decision_function(X[rows_of[t]]))
            advance()
        all_rows = np.arange(len(y))
        pooled_scores = oof(all_rows)
        advance()
        loso: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for s in sites:
            train = np.flatnonzero(site != s)
            internal = oof(train)
            model = fitted(train)
            loso[s] = (train, internal, model.decision_function(X[rows_of[s]]))
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
            train, internal, external = loso[s]
            values[f"loso_int:{s}"] = auc_of(train, internal, W)
            values[f"loso_ext:{s}"] = auc_of(rows_of[s], external, W)
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

    def ci(key: str) -> list[float | None]:
        if not reps:
            return [None, None]
        return [_num(v) for v in percentile_ci(reps[key])]

    def diff(a: str, b: str) -> dict:
        d = point[a] - point[b]
        out: dict = {"difference": _num(d), "ci": [None, None], "p_value": None}
        if reps:
            delta = reps[a] - reps[b]
            delta = delta[np.isfinite(delta)]
            out["ci"] = [_num(v) for v in percentile_ci(delta)]
            # Two-sided bootstrap p for "no difference": how often the resampled difference crosses zero.
            crossing = min(int((delta <= 0).sum()), int((delta >= 0).sum()))
            out["p_value"] = float(min(1.0, (1 + 2 * crossing) / (1 + len(delta))))
        return out

    matrix = [[_num(point[f"cell:{s}:{t}"]) for t in sites] for s in sites]
    matrix_ci = [[ci(f"cell:{s}:{t}") for t in sites] for s in sites]
    pairs = []
    for t in sites:
        for s in sites:
            if s == t:
                continue
            entry = {
                "test": t,
                "train": s,
                "internal_auc": _num(point[f"cell:{t}:{t}"]),
                "external_auc": _num(point[f"cell:{s}:{t}"]),
            }
            entry.update(diff(f"cell:{t}:{t}", f"cell:{s}:{t}"))
            pairs.append(entry)
    loso_out = []
    for s in sites:
        entry = {
            "held_out": s,
            "internal_auc": _num(point[f"loso_int:{s}"]),
            "internal_ci": ci(f"loso_int:{s}"),
            "external_auc": _num(point[f"loso_ext:{s}"]),
            "external_ci": ci(f"loso_ext:{s}"),
        }
        entry.update(diff(f"loso_int:{s}", f"loso_ext:{s}"))
        loso_out.append(entry)
    # Headline: mean over held-out sites of (internal - external), bootstrapped as one statistic.
    int_keys, ext_keys = [f"loso_int:{s}" for s in sites], [f"loso_ext:{s}" for s in sites]
    point["mean_int"] = float(np.mean([point[k] for k in int_keys]))
    point["mean_ext"] = float(np.mean([point[k] for k in ext_keys]))
    if reps:
        reps["mean_int"] = np.mean([reps[k] for k in int_keys], axis=0)
        reps["mean_ext"] = np.mean([reps[k] for k in ext_keys], axis=0)
    headline = {
        "design": "leave-one-site-out: internal grouped CV on the training sites vs the held-out site",
        "internal_auc": _num(point["mean_int"]),
        "internal_ci": ci("mean_int"),
        "external_auc": _num(point["mean_ext"]),
        "external_ci": ci("mean_ext"),
    }
    headline.update(diff("mean_int", "mean_ext"))
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
            "ci": ci("pooled"),
            "by_site": {
                s: {"auc": _num(point[f"pooled_site:{s}"]), "ci": ci(f"pooled_site:{s}")} for s in sites
            },
        },
        leave_one_site_out=loso_out,
        pairs=pairs,
        internal_vs_external=headline,
        folds=folds,
        n_bootstrap=n_bootstrap,
        seed=seed,
        bootstrap_dropped={k: count_dropped(v) for k, v in reps.items() if count_dropped(v)},
        notes=tuple(sorted(notes)),
    )


def gap_verdict(lo: float | None, hi: float | None) -> str:
    """The headline's reading of the internal - external CI, in both directions.

    A gap below zero is no sign of a site shortcut; it is named anyway, since "no gap" would contradict the
    printed CI. Internal CV trains on (k-1)/k of the training sites' rows and the external model on all of
    them, which leans the difference that way on small cohorts; held-out sites that are easier do too.
    """
    if lo is not None and lo > 0:
        return "internal > external: the probe's internal score does not transfer to unseen sites"
    if hi is not None and hi < 0:
        return (
            "external > internal: the held-out sites score higher than internal CV (no sign of a site "
            "shortcut; internal CV trains on fewer rows, and held-out sites may be easier)"
        )
    return "no internal-external gap distinguishable from zero"


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
