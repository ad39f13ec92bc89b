"""Seed 001's finding, tested: on group j's test subjects, does the model trained on j beat a model trained
on another group?

Why paired. The old `gaps` set a model's score on its own group's test subjects against the same model's
score on the other groups' subjects. Those are different subjects, so a group whose test images are harder
(fainter lesions, noisier scans) produced a gap with no training effect at all: in the review's simulation
(training group irrelevant, one group's lesions 0.6 sd fainter) 42 % of cohorts printed a gap >= +0.10.
Here both sides of a contrast are scored on the *same* test subjects of group j, so how hard j's images are
cancels, and what is left is what the training group did.

How the uncertainty is measured.
- Subjects are the unit: one set of subject-bootstrap resamples per (tier, test group), the cells' own
  (`shift_design.subject_weights`, same rows and seed), applied to both models; the contrast's draws are
  the difference of the two cells' draws, so the correlation of the paired scores is kept.
- Training varies too (a lucky seed is not a shift): with two or more replicates per model, the part of
  the replicates' spread that the subject bootstrap cannot see (`seed_variance`) is added to every draw as
  a t term with Welch-Satterthwaite degrees of freedom. With one replicate it is unknown and left out
  (`train_sd` is None): the interval then covers the test set only, and says so nowhere else, so run >= 2.
- Simulated (tests/analysis/test_shift_contrasts.py, 300 cohorts of 2 x 200 subjects, 3 replicates): with
  the training group irrelevant and one group's lesions fainter, 3.5 % of contrasts call a shift (the old
  gap >= 0.10: 52 % of cohorts); with seeds that differ as a whole, 5.2 % (an interval over subjects alone:
  31 %); a model scoring its own group's lesions 0.5 / 0.8 sd higher is found in 71 % / 92 % of contrasts.
- The p-value is the two-sided bootstrap p of "no difference" (how often the draws cross 0, as in
  `cross_site`); Holm's adjustment runs over each metric's family of headline contrasts (one per tier and
  test group: own model vs the other single-group model, or vs their mean when there are several).
- A verdict is read from the 95 % interval: "no evidence of a shift" whenever it covers 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedx.analysis.shift_design import (
    ALL,
    THRESHOLD,
    Design,
    replicate_draws,
    replicate_mean,
    subject_weights,
)
from embedx.analysis.stats import holm, percentile_ci

EXTRAS = ("dice", "small", "large")
OTHERS = "others"  # the mean of the other single-group models (when there are two or more)
OWN_BETTER = "own group better"
OWN_WORSE = "own group worse"
NO_EVIDENCE = "no evidence of a shift"
NO_INTERVAL = "no interval"


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of `wanted` (all present) sits in `rows`."""
    order = np.argsort(rows, kind="stable")
    return order[np.searchsorted(rows[order], wanted)]


def _condition_draws(
    design: Design,
    recs: Sequence[dict[str, Any]],
    common: np.ndarray,
    metric: str,
    weights: np.ndarray | None,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One training condition's replicates on the rows `common`: per-replicate values and bootstrap means."""
    scores, extras = [], []
    for rec in recs:
        at = _positions(np.asarray(rec["rows"], dtype=np.int64), common)
        scores.append(np.asarray(rec["score"], dtype=float)[at])
        extras.append({k: np.asarray(v)[at] for k, v in rec.items() if k in EXTRAS})
    return replicate_draws(metric, design.label[common], scores, weights, extras, threshold=threshold)


# point, bootstrap draws, training-variance terms (variance of the mean, degrees of freedom) or None
Side = tuple[float, np.ndarray | None, list[tuple[float, int]] | None]


def seed_variance(points: np.ndarray, boot: np.ndarray | None) -> tuple[float, int] | None:
    """Training's share of the variance of one model's replicate mean: (s^2 - interaction) / R.

    s^2, the spread of the replicates on this test set, holds two things: how much seeds differ as a whole
    (a run that converged better), which the subject bootstrap cannot see, and how much the models disagree
    subject by subject, which it already resamples. The second is estimated from the resamples themselves:
    the bootstrap variance of each replicate's deviation from the replicates' mean, summed, over R - 1. Only
    the excess is added, so neither kind is counted twice. Returned with its R - 1 degrees of freedom; None
    with fewer than two replicates.
    """
    keep = np.isfinite(points)
    r = int(keep.sum())
    if r < 2:
        return None
    s2 = float(np.var(points[keep], ddof=1))
    if boot is None:
        return s2 / r, r - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        deviation = boot[keep] - np.nanmean(boot[keep], axis=0)
        interaction = float(np.nansum(np.nanvar(deviation, axis=1, ddof=1))) / (r - 1)
    return max(0.0, s2 - interaction) / r, r - 1


def _side(parts: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> Side:
    """A side of a contrast (one model or the mean of several): point, bootstrap draws, training variance."""
    points = [float(np.nanmean(p)) if np.isfinite(p).any() else np.nan for p, _ in parts]
    boots = [b for _, b in parts]
    boot = None if any(b is None for b in boots) else np.mean([replicate_mean(b) for b in boots], axis=0)
    terms = [seed_variance(p, b) for p, b in parts]
    scaled = None if any(t is None for t in terms) else [(v / len(parts) ** 2, df) for v, df in terms]
    return float(np.mean(points)), boot, scaled


def _training_noise(terms: list[tuple[float, int]], rng: np.random.Generator, n: int) -> np.ndarray:
    """n draws of training's term: a t with Welch-Satterthwaite degrees of freedom, since each variance
    rests on R - 1 (often 2) degrees of freedom and a normal would make the interval too short."""
    total = sum(v for v, _ in terms)
    if total <= 0:
        return np.zeros(n)
    df = total**2 / sum(v**2 / d for v, d in terms if v > 0)
    return np.sqrt(total) * rng.standard_t(df, n)


def verdict(low: float | None, high: float | None) -> str:
    """The reading of a contrast's 95 % interval; both directions are named, so no reading contradicts it.

    Own group worse happens: the other group's model may have had more (or cleaner) training data.
    """
    if low is None or high is None:
        return NO_INTERVAL
    if low > 0:
        return OWN_BETTER
    if high < 0:
        return OWN_WORSE
    return NO_EVIDENCE


def _num(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _contrast(
    own: Side,
    other: Side,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Difference own - other with its interval, the subject-only interval, training sd and bootstrap p."""
    (own_point, own_boot, own_terms), (other_point, other_boot, other_terms) = own, other
    terms = None if own_terms is None or other_terms is None else own_terms + other_terms
    out: dict[str, Any] = {
        "own": _num(own_point),
        "other": _num(other_point),
        "difference": _num(own_point - other_point),
        "ci": None,
        "ci_subjects": None,
        "train_sd": None if terms is None else float(np.sqrt(sum(v for v, _ in terms))),
        "p_value": None,
    }
    if own_boot is None or other_boot is None or out["difference"] is None:
        return out
    delta = own_boot - other_boot
    noise = _training_noise(terms, rng, len(delta)) if terms else np.zeros(len(delta))
    keep = np.isfinite(delta)
    if keep.sum() < 20:  # most resamples undefined (a class nearly absent): no interval
        return out
    delta, noise = delta[keep], noise[keep]
    out["ci_subjects"] = list(percentile_ci(delta))
    combined = delta + noise
    out["ci"] = list(percentile_ci(combined))
    crossing = min(int((combined <= 0).sum()), int((combined >= 0).sum()))
    out["p_value"] = float(min(1.0, (1 + 2 * crossing) / (1 + len(combined))))
    return out


def paired_contrasts(
    design: Design,
    records: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = THRESHOLD,
) -> list[dict[str, Any]]:
    """Per tier, metric and test group j with its own model: own model minus each other model on j's subjects.

    Rows: `versus` each other single group, `others` (their mean; only when there are two or more), and
    `all` (the mixed model: does pooling help j?). `headline` marks the contrast that tests the seed's
    claim for (tier, j) and enters Holm's family of its metric.
    """
    by_condition: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        by_condition.setdefault((rec["tier"], rec["train"]), []).append(rec)
    subjects = design.table["subject_id"].astype(str).to_numpy()
    rng = np.random.default_rng([seed, 20011])  # the training-noise term's draws; fixed per seed
    out: list[dict[str, Any]] = []
    for tier in dict.fromkeys(t for t, _ in by_condition):
        trained = {g: sorted(by_condition[(tier, g)], key=lambda r: r["replicate"])
                   for g in design.train_groups if (tier, g) in by_condition}
        for test in design.groups:
            rivals = [g for g in design.groups if g != test and g in trained]
            if test not in trained or not (rivals or ALL in trained):
                continue
            # Rows every model of the tier was scored on (one set unless a resumed run changed the data).
            common = np.flatnonzero(design.in_group(test))
            for recs in trained.values():
                for rec in recs:
                    common = np.intersect1d(common, np.asarray(rec["rows"], dtype=np.int64))
            weights = subject_weights(subjects[common], n_boot, seed)
            for metric in metrics:
                draws = {g: _condition_draws(design, recs, common, metric, weights, threshold)
                         for g, recs in trained.items()}
                own = _side([draws[test]])
                versus: list[tuple[str, list[str]]] = [(g, [g]) for g in rivals]
                if len(rivals) > 1:
                    versus.append((OTHERS, rivals))
                if ALL in trained:
                    versus.append((ALL, [ALL]))
                for name, groups in versus:
                    row = {
                        "tier": tier, "metric": metric, "test": test, "train": test,
                        "versus": name, "versus_groups": groups,
                        "headline": name == OTHERS or (name != ALL and len(rivals) == 1),
                        "n_test_subjects": len(set(subjects[common])),
                        "n_test_pos": int(design.label[common].sum()),
                        "replicates": [len(trained[test]), *(len(trained[g]) for g in groups)],
                    }
                    row.update(_contrast(own, _side([draws[g] for g in groups]), rng))
                    row["verdict"] = verdict(*(row["ci"] or (None, None)))
                    out.append(row)
    for metric in metrics:
        family = [r for r in out if r["metric"] == metric and r["headline"]]
        adjusted = holm([np.nan if r["p_value"] is None else r["p_value"] for r in family])
        for r, p in zip(family, adjusted, strict=True):
            r["p_holm"] = _num(p)
    for r in out:
        r.setdefault("p_holm", None)
    return out


def describe(row: dict[str, Any]) -> str:
    """One line for the terminal and the report: both scores, the difference, its interval, p, reading."""
    versus = "the other groups (mean)" if row["versus"] == OTHERS else (
        "all mixed" if row["versus"] == ALL else row["versus"])
    text = (f"tested on {row['test']}: trained on {row['test']} {_f(row['own'])} vs on {versus} "
            f"{_f(row['other'])}: {_signed(row['difference'])}")
    if row["ci"] is not None:
        text += f" [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}], p {row['p_value']:.3g}"
        if row.get("p_holm") is not None and row["headline"]:
            text += f" (Holm {row['p_holm']:.3g})"
    return f"{text}: {row['verdict']}"


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


__all__ = ["NO_EVIDENCE", "OTHERS", "OWN_BETTER", "OWN_WORSE", "describe", "paired_contrasts", "verdict"]
