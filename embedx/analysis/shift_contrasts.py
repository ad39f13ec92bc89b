"""Seed 001's finding, tested: on group j's test subjects, does the model trained on j beat a model trained
on another group?

Why paired. The old `gaps` set a model's score on its own group's test subjects against the same model's
score on the other groups' subjects. Those are different subjects, so a group whose test images are harder
(fainter lesions, noisier scans) produced a gap with no training effect at all: in the review's simulation
(training group irrelevant, one group's lesions 0.6 sd fainter) 42 % of cohorts printed a gap >= +0.10.
Here both sides of a contrast are scored on the *same* test subjects of group j, so how hard j's images are
cancels, and what is left is what the training group did.

Who is tested. A verdict needs MIN_PER_CLASS positive and negative *subjects* in the test group (the
minimum a group needs to get a model: a test set is no less a sample). A site with one positive subject
got "own group better" from that one subject: a sensitivity difference of 1.0 [1.0, 1.0], p 0.007 (the
interval had width 0 in 2 of 3 such contrasts). Such a group keeps its scores, but its verdict is SKIPPED
and `skipped` gives its counts.

How the uncertainty is measured.
- Subjects are the unit: one set of subject-bootstrap resamples per (tier, test group), the cells' own
  (`shift_design.subject_weights`, same rows and seed), applied to both models; the contrast's variance
  over subjects is that of the difference of the two cells' draws, so the correlation of the paired
  scores is kept. It never falls below `subject_floor` (Agresti-Min's half a disagreeing subject each
  way): resamples of a few subjects on whom both models agree all give the same difference, and an
  interval of width 0 claims a certainty that 20 subjects cannot give. It enters as a t on n - 1 degrees
  of freedom (n: the smallest class the metric averages over), as a variance from 8 subjects is itself
  uncertain.
- Training varies too (a lucky seed is not a shift): with two or more replicates per model, the part of
  the replicates' spread that the subject bootstrap cannot see (`seed_variance`) enters as a t on
  Welch-Satterthwaite degrees of freedom, added draw by draw to the subject part's t (`_noise`). With one
  replicate it is unknown and left out (`train_sd` is None): the interval then covers the test set only,
  and says so nowhere else, so run >= 2.
- A difference of two metrics in [0, 1] lies in [-1, 1], and so does its interval: with 2 replicates a t
  on 1 degree of freedom used to print an AUROC difference of +0.036 as [-2.64, +2.59].
- Simulated (tests/analysis/test_shift_contrasts.py, 300 cohorts of 2 x 200 subjects, 3 replicates): with
  the training group irrelevant and one group's lesions fainter, 1.2 % of contrasts call a shift (the old
  gap >= 0.10: 52 % of cohorts); with seeds that differ as a whole, 2.5 % (an interval over subjects alone:
  25 %); a model scoring its own group's lesions 0.5 / 0.8 sd higher is found in 63 % / 88 % of contrasts
  (the former interval: 72 % / 92 %, bought with the false calls below and the intervals of width 0).
  With 2 replicates: 1.7 %, 2.8 % and 56 % (the 0.8 sd effect). On 2 x 100 subjects (~30 tested per
  group), 2 replicates, lucky seeds and fainter lesions in one group, the former interval called 9 % of
  AUROC contrasts a shift; this one 3 % (tests/analysis/test_shift_contrasts_small.py: small groups).
- The p-value is read off the same draws (how often the error reaches the difference), so p < 0.05
  when, up to the draws' resolution, the interval leaves out 0; Holm's adjustment runs over each metric's
  family of headline contrasts (one per tier and test group: own model vs the other single-group model,
  or vs their mean when there are several).
- A verdict is read from the 95 % interval: "no evidence of a shift" whenever it covers 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedx.analysis.shift_design import (
    ALL,
    MIN_PER_CLASS,
    THRESHOLD,
    Design,
    replicate_draws,
    replicate_mean,
    subject_weights,
)
from embedx.analysis.stats import CI_LEVEL, holm

EXTRAS = ("dice", "small", "large")
OTHERS = "others"  # the mean of the other single-group models (when there are two or more)
OWN_BETTER = "own group better"
OWN_WORSE = "own group worse"
NO_EVIDENCE = "no evidence of a shift"
NO_INTERVAL = "no interval"
SKIPPED = "not tested: too few test subjects"
BOUND = 1.0  # every metric here lies in [0, 1], so a difference of two lies in [-BOUND, BOUND]
NOISE_DRAWS = 20_000  # draws of an interval's error: its 95 % point to about +-1 %


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


def subject_floor(difference: float, classes: Sequence[tuple[int, float]]) -> float:
    """The least subject-level variance a paired difference on these subjects can honestly have.

    A subject bootstrap sees only the disagreements it was given: two models right on every one of 20
    negatives give a specificity difference of 0 in every resample, an interval [0, 0], though one model
    may miss 10 % of the next negatives. Agresti and Min's correction of a paired difference adds half a
    subject on which the first model does better by the least a subject can show, and half the other way
    round. This is the variance of the mean of a class's n per-subject differences so augmented, taken at
    the least spread the observed mean d allows (every subject at d): [2 n d^2 + r^2 (n + 2)] / (n + 2)^3.
    `classes` gives (n, r) per class the metric averages over (AUROC: positives and negatives, its DeLong
    split). r is 1 for a rate or a Dice (a subject's call flips); for AUROC it is one pair, 1 / n of the
    other class, as a subject's term there is its share of pairs ranked right. At r = 1 the AUROC floor,
    about 8 / n^2, outweighed the bootstrap of two well-correlated models up to ~50 subjects per class
    (the module's 0.8 sd effect was found in 42 % of contrasts instead of 86 %); at one pair it binds only
    where the resamples barely vary.
    """
    d, total = float(difference), 0.0
    for n, r in classes:
        m = n + 2.0
        total += (2.0 * n * d * d + r * r * m) / m**3
    return total


def _noise(
    subject: tuple[float, float], training: Sequence[tuple[float, int]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draws of the estimate's error: the subject part alone, and with training's added.

    Each part is a scaled t, the subject part on n - 1 degrees of freedom, training's on Welch-Satterthwaite
    degrees of freedom over the replicates' terms (each on R - 1), and they are added draw by draw rather
    than merged into one t: Satterthwaite's df for the total, estimated from the same few replicates as the
    variance, came out large exactly when the variance came out small, and called a shift in up to 9 % of
    null contrasts with 2 replicates (this sum: under 4 %).
    """
    variance, df = subject
    part = np.sqrt(variance) * rng.standard_t(df, NOISE_DRAWS)
    total = sum(v for v, _ in training)
    if total <= 0:
        return part, part
    df_training = total**2 / sum(v**2 / d for v, d in training if v > 0)
    return part, part + np.sqrt(total) * rng.standard_t(df_training, NOISE_DRAWS)


def _interval(difference: float, noise: np.ndarray) -> list[float]:
    """difference +- the 95th percentile of |noise|, clipped to [-1, 1]. The clip costs no coverage (no true
    difference lies outside) and keeps a t on one degree of freedom from printing a difference of two
    AUCs as [-2.64, +2.59]; as the noise never vanishes (`subject_floor`), the interval has width."""
    half = float(np.quantile(np.abs(noise), CI_LEVEL))
    return [float(max(-BOUND, difference - half)), float(min(BOUND, difference + half))]


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
    own: Side, other: Side, classes: Sequence[tuple[int, float]], rng: np.random.Generator
) -> dict[str, Any]:
    """Difference own - other with its interval, the subject-only interval, training sd and p.

    `classes` are the subject counts of the classes the metric averages over (`_classes`). The subject
    variance is the paired bootstrap's, never below `subject_floor`; training's terms are `seed_variance`'s.
    The p-value is read off the same draws, so p < 0.05 when (up to their resolution) the interval leaves
    out 0.
    """
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
    difference = out["difference"]
    if own_boot is None or other_boot is None or difference is None or not classes:
        return out
    delta = own_boot - other_boot
    delta = delta[np.isfinite(delta)]
    if len(delta) < 20:  # most resamples undefined (a class nearly absent): no interval
        return out
    subject = (max(float(np.var(delta, ddof=1)), subject_floor(difference, classes)),
               float(max(1, min(n for n, _ in classes) - 1)))
    subject_only, noise = _noise(subject, terms or [], rng)
    out["ci_subjects"] = _interval(difference, subject_only)
    out["ci"] = _interval(difference, noise)
    out["p_value"] = float((1 + np.sum(np.abs(noise) >= abs(difference))) / (1 + len(noise)))
    return out


def _classes(metric: str, n_pos: int, n_neg: int, n_subjects: int) -> list[tuple[int, float]]:
    """(subjects, least per-subject disagreement) of each class the metric averages over (`subject_floor`;
    the smallest class also sets the subject part's degrees of freedom)."""
    if metric == "auroc":
        return [(n_pos, 1.0 / max(1, n_neg)), (n_neg, 1.0 / max(1, n_pos))]
    if metric == "specificity":
        return [(n_neg, 1.0)]
    if metric == "accuracy":
        return [(n_subjects, 1.0)]
    return [(n_pos, 1.0)]  # sensitivity and the Dice metrics average over positives


def too_few(test: str, n_pos: int, n_neg: int, minimum: int = MIN_PER_CLASS) -> str | None:
    """Why test group `test` can carry no verdict (None when it can).

    Counted in subjects, the unit the interval resamples: one positive patient's five images are one
    positive. A group with one positive subject gave "own group better" on the rank of that one subject;
    the minimum is the one a group needs to get a model, as a test group is no less a sample.
    """
    if min(n_pos, n_neg) >= minimum:
        return None
    return (f"test group {test}: {n_pos} positive / {n_neg} negative subject(s) "
            f"(at least {minimum} of each needed for a verdict)")


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
    claim for (tier, j) and enters Holm's family of its metric. A test group with fewer than
    MIN_PER_CLASS positive or negative subjects keeps its rows (scores, difference) but gets no interval,
    p or verdict: its verdict is SKIPPED and `skipped` says why, with the group's counts.
    """
    by_condition: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        by_condition.setdefault((rec["tier"], rec["train"]), []).append(rec)
    subjects = design.table["subject_id"].astype(str).to_numpy()
    rng = np.random.default_rng([seed, 20011])  # the intervals' error draws; fixed per seed
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
            n_pos, n_neg = (len(set(subjects[common[design.label[common] == k]])) for k in (True, False))
            n_subjects = len(set(subjects[common]))
            reason = too_few(test, n_pos, n_neg)
            weights = None if reason else subject_weights(subjects[common], n_boot, seed)
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
                        "n_test_subjects": n_subjects,
                        "n_test_pos": int(design.label[common].sum()),  # rows, as in the cells
                        "n_test_pos_subjects": n_pos,
                        "n_test_neg_subjects": n_neg,
                        "replicates": [len(trained[test]), *(len(trained[g]) for g in groups)],
                    }
                    classes = _classes(metric, n_pos, n_neg, n_subjects)
                    row.update(_contrast(own, _side([draws[g] for g in groups]), classes, rng))
                    row["verdict"] = SKIPPED if reason else verdict(*(row["ci"] or (None, None)))
                    row["skipped"] = reason
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
    if row.get("skipped"):
        return f"{text}: {row['verdict']} ({row['skipped']})"
    if row["ci"] is not None:
        text += f" [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}], p {row['p_value']:.3g}"
        if row.get("p_holm") is not None and row["headline"]:
            text += f" (Holm {row['p_holm']:.3g})"
    return f"{text}: {row['verdict']}"


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


__all__ = [
    "NO_EVIDENCE",
    "NO_INTERVAL",
    "OTHERS",
    "OWN_BETTER",
    "OWN_WORSE",
    "SKIPPED",
    "describe",
    "paired_contrasts",
    "subject_floor",
    "too_few",
    "verdict",
]
