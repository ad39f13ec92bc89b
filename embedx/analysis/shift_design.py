"""What seed 001's shift study means, whatever model runs it: groups, tiers, the held-out subjects, the
metrics of each (trained on, tested on) cell with their subject-bootstrap intervals, and the (confounded,
superseded) own-vs-other-groups gaps; the paired test of the seed's finding is `shift_contrasts`.

`embedx experiment shift` runs it in 2-D (seed 000's CNN on images) and in 3-D (MONAI's ResNet / U-Net on
volumes); both plan the design here and hand back per-replicate scores, so the two cannot disagree on
what a cell, an interval or a gap is.

- Test subjects are held out once, stratified on group x label x tier, so every model of a tier is scored
  on the same volumes and no subject is ever on both sides.
- A tier is the negatives plus the positives of one difficulty (the seed mixed easy positives into its
  harder sets); one difficulty per tier isolates its effect. Without a difficulty column there is one tier.
- A cell's figure is the mean over replicates (the seed's tables) with the sd over replicates, and a 95 %
  interval from resampling the cell's test *subjects* (the same resample for every replicate, then
  averaged): the sd says how much training varies, the interval how much the test set does.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from embedx.analysis.labels import positive_class
from embedx.analysis.stats import SubjectIndex, auc_weighted, percentile_ci
from embedx.data.manifest import Manifest
from embedx.data.splits import train_val_test_split
from embedx.errors import EmbedxError

log = logging.getLogger(__name__)

ALL = "all"  # the mixed training group / the whole test set
TIER_ORDER = ("easy", "medium", "hard")
MIN_PER_CLASS = 5  # positives and negatives a group needs: to get a model, and (subjects) to carry a verdict
THRESHOLD = 0.5  # P(positive) at which a volume is called positive (the seed's)


@dataclass
class Design:
    """The rows in play (positions in `table`), their label, tier, group and side of the split."""

    table: pd.DataFrame  # manifest rows with both `by` and `target` known, re-indexed 0..n-1
    rows: np.ndarray  # each table row's row in the manifest
    label: np.ndarray  # bool: positive
    tier_names: list[str]
    tier_of: np.ndarray  # "" for negatives (they belong to every tier)
    group: np.ndarray  # str per row
    groups: list[str]
    is_test: np.ndarray  # bool
    positive_value: str
    difficulty: str | None
    train_on: list[str] | None = None  # the training groups to fit (None: each group and all mixed)

    @property
    def train_groups(self) -> list[str]:
        """Every group a model is tested on (and, by default, trained on), then the mixed one."""
        return [*self.groups, ALL]

    @property
    def training_groups(self) -> list[str]:
        return [g for g in self.train_groups if self.train_on is None or g in self.train_on]

    def in_tier(self, tier: str) -> np.ndarray:
        return (self.tier_of == "") | (self.tier_of == tier)

    def in_group(self, name: str) -> np.ndarray:
        return np.ones(len(self.group), dtype=bool) if name == ALL else self.group == name


def tiers_of(
    table: pd.DataFrame, positive: np.ndarray, column: str | None, wanted: Sequence[str] | None
) -> tuple[list[str], np.ndarray]:
    """The tier names and each row's tier ("" for negatives, which belong to every tier)."""
    if column is None:
        return [ALL], np.where(positive, ALL, "")
    if column not in table.columns:
        raise EmbedxError(f"difficulty column {column!r} is not in the manifest")
    values = table[column].fillna("").astype(str).str.strip().to_numpy()
    values = np.where(positive, values, "")
    unlabelled = positive & (values == "")
    if unlabelled.any():
        raise EmbedxError(
            f"{int(unlabelled.sum())} positive row(s) have no {column!r} (first: row "
            f"{int(np.flatnonzero(unlabelled)[0])}); give every positive a difficulty"
        )
    present = sorted(set(values[positive]), key=lambda t: (TIER_ORDER.index(t) if t in TIER_ORDER else 9, t))
    if wanted:
        unknown = [t for t in wanted if t not in present]
        if unknown:
            raise EmbedxError(
                f"--tiers {', '.join(unknown)} not found in {column!r} (values: {', '.join(present)})"
            )
        present = list(wanted)
    return present, values


def plan_design(
    man: Manifest,
    by: str,
    target: str,
    *,
    difficulty: str | None,
    tiers: Sequence[str] | None,
    positive: str | None,
    test_fraction: float,
    seed: int,
    train_on: Sequence[str] | None = None,
) -> Design:
    """Check the request against the manifest and hold out the test subjects."""
    if not 0.05 <= test_fraction <= 0.8:
        raise EmbedxError(f"--test-fraction must lie in [0.05, 0.8], got {test_fraction}")
    for column, flag in ((by, "--by"), (target, "--target")):
        if column not in man.table.columns:
            raise EmbedxError(
                f"{flag} {column!r} is not a column of {man.source} (attributes: {', '.join(man.attributes)})"
            )
    usable = man.table[by].notna() & man.table[target].notna()
    if (~usable).any():
        log.info("%d row(s) with no %s or %s left out", int((~usable).sum()), by, target)
    rows = np.flatnonzero(usable.to_numpy())
    table = man.table.iloc[rows].reset_index(drop=True)
    label, _, positive_value = positive_class(table[target].to_numpy(), target, positive)
    if difficulty == "auto":
        difficulty = f"{target}_difficulty" if f"{target}_difficulty" in table.columns else None
    tier_names, tier_of = tiers_of(table, label, difficulty, tiers)
    group = table[by].astype(str).to_numpy()
    groups = sorted(set(group))
    if len(groups) < 2:
        raise EmbedxError(f"--by {by!r} has a single value ({groups[0]}); a shift needs at least two groups")
    strata = pd.DataFrame({"g": group, "y": label.astype(int), "t": tier_of})
    split = train_val_test_split(
        pd.concat([strata, table[["subject_id"]]], axis=1),
        fractions=(1.0 - test_fraction, 0.0, test_fraction),
        stratify=["g", "y", "t"],
        seed=seed,
    )
    is_test = np.zeros(len(table), dtype=bool)
    is_test[split.test] = True
    if train_on is not None:
        unknown = [g for g in train_on if g not in (*groups, ALL)]
        if unknown or not train_on:
            raise EmbedxError(
                f"--train-on {','.join(train_on)}: the groups of {by!r} are {', '.join(groups)} "
                f"(and {ALL!r} for all mixed)"
            )
    return Design(
        table=table,
        rows=rows,
        label=label,
        tier_names=tier_names,
        tier_of=tier_of,
        group=group,
        groups=groups,
        is_test=is_test,
        positive_value=positive_value,
        difficulty=difficulty,
        train_on=None if train_on is None else list(dict.fromkeys(train_on)),
    )


def training_counts(
    design: Design, readable: np.ndarray, tier: str, train_group: str
) -> tuple[np.ndarray, str | None]:
    """The training rows of one condition, and why it gets no model (None when it does).

    Subjects are counted, not images: five scans of two patients are two patients' worth of positives."""
    train = readable & design.in_tier(tier) & ~design.is_test & design.in_group(train_group)
    subject = design.table["subject_id"].astype(str).to_numpy()
    n_pos, n_neg = (len(set(subject[train & (design.label == k)])) for k in (True, False))
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        return train, (
            f"{n_pos} positive / {n_neg} negative subjects in training "
            f"(at least {MIN_PER_CLASS} of each needed)"
        )
    return train, None


# ---------------------------------------------------------------- metrics of a cell


@dataclass(frozen=True)
class Ratio:
    """A metric as sum(w * numerator) / sum(w * denominator) over rows: weights are subject multiplicities,
    so the point estimate (w = 1) and every bootstrap resample come from one formula."""

    numerator: Callable[[dict[str, np.ndarray]], np.ndarray]
    denominator: Callable[[dict[str, np.ndarray]], np.ndarray]


def _called(cols: dict[str, np.ndarray]) -> np.ndarray:
    return cols["score"] >= cols["threshold"]


RATIOS: dict[str, Ratio] = {
    "accuracy": Ratio(lambda c: _called(c) == c["y"], lambda c: np.ones_like(c["score"])),
    "sensitivity": Ratio(lambda c: _called(c) & c["y"], lambda c: c["y"]),
    "specificity": Ratio(lambda c: ~_called(c) & ~c["y"], lambda c: ~c["y"]),
    "dice": Ratio(lambda c: np.nan_to_num(c["dice"]) * c["y"], lambda c: c["y"] & ~np.isnan(c["dice"])),
    "dice_small": Ratio(
        lambda c: np.nan_to_num(c["dice"]) * c["small"], lambda c: c["small"] & ~np.isnan(c["dice"])
    ),
    "dice_large": Ratio(
        lambda c: np.nan_to_num(c["dice"]) * c["large"], lambda c: c["large"] & ~np.isnan(c["dice"])
    ),
}


def _weighted(metric: str, cols: dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The metric under each row of `weights` (B, n); NaN where it is undefined (no positive, ...)."""
    if metric == "auroc":
        return auc_weighted(cols["score"], cols["y"], weights)
    ratio = RATIOS[metric]
    num = weights @ ratio.numerator(cols).astype(float)
    den = weights @ ratio.denominator(cols).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def subject_weights(subjects: np.ndarray, n_boot: int, seed: int) -> np.ndarray | None:
    """Per-row multiplicities of `n_boot` subject-bootstrap resamples (B, n), or None without resamples.

    One function for the cells and the paired contrasts: the same rows and seed give the same resamples, so a
    contrast between two models is the difference of the very draws behind their cells' intervals.
    """
    n = len(subjects)
    if not n or not n_boot:
        return None
    index = SubjectIndex(subjects)
    return index.weights(n_boot, np.random.default_rng(seed))[:, index.codes]


def replicate_draws(
    metric: str,
    y: np.ndarray,
    scores: Sequence[np.ndarray],
    weights: np.ndarray | None,
    extra: Sequence[dict[str, np.ndarray]] | None = None,
    *,
    threshold: float = THRESHOLD,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Each replicate's metric on the rows (R,), and under each resample (R, B), or None without resamples.

    NaN marks an undefined value (no positive in the rows or in a resample). The draws are kept per
    replicate so that a paired contrast can tell training's spread from the test set's.
    """
    n = len(y)
    point, boot = [], []
    for r, score in enumerate(scores):
        cols = {
            "y": y.astype(bool),
            "score": np.asarray(score, dtype=float),
            "threshold": np.float64(threshold),
            **((extra or [{}] * len(scores))[r]),
        }
        if not n:
            point.append(np.nan)
            continue
        point.append(float(_weighted(metric, cols, np.ones((1, n)))[0]))
        if weights is not None:
            boot.append(_weighted(metric, cols, weights))
    return np.asarray(point, dtype=float), np.vstack(boot) if boot else None


def replicate_mean(boot: np.ndarray) -> np.ndarray:
    """The replicates' mean under each resample (B,); a resample undefined for every replicate stays NaN."""
    with warnings.catch_warnings():  # a resample with no positive left: NaN, dropped by the CI
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(boot, axis=0)


def cell_metrics(
    metrics: Sequence[str],
    y: np.ndarray,
    scores: Sequence[np.ndarray],
    subjects: np.ndarray,
    extra: Sequence[dict[str, np.ndarray]] | None = None,
    *,
    threshold: float = THRESHOLD,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean and sd over replicates, and the subject-bootstrap 95 % interval of that mean, per metric.

    `scores[r]` are replicate r's scores for the cell's rows; `extra[r]` adds per-row columns (dice, small,
    large) that the Dice metrics read. The interval is the test set's uncertainty, the sd training's; a
    difference between two cells of one test group is read from `shift_contrasts`, not from two of these.
    """
    out: dict[str, Any] = {}
    weights = subject_weights(subjects, n_boot, seed)
    for metric in metrics:
        point, boot = replicate_draws(metric, y, scores, weights, extra, threshold=threshold)
        got = [float(v) for v in point if not np.isnan(v)]
        out[f"{metric}_mean"] = float(np.mean(got)) if got else None
        out[f"{metric}_sd"] = float(np.std(got, ddof=1)) if len(got) > 1 else None  # undefined for one model
        ci = percentile_ci(replicate_mean(boot)) if boot is not None and got else (float("nan"), float("nan"))
        out[f"{metric}_ci"] = None if np.isnan(ci[0]) else [ci[0], ci[1]]
    return out


def gaps(summary: Sequence[dict[str, Any]], groups: Sequence[str], metric: str) -> list[dict[str, Any]]:
    """Per tier and single-group model: `metric` on its own group's test subjects minus the mean on the
    others'; for the mixed model, its spread across test groups. Kept for shift.json readers, not a test.

    This gap does NOT measure the seed's finding. Its two sides are scored on different test subjects, so it
    mixes "a model fits its own group" with "one group's test images are harder for every model": with the
    training group irrelevant and one group's lesions fainter, 42 % of simulated cohorts gave some model a
    gap >= +0.10. It has no interval either. `shift_contrasts.paired_contrasts` is the test: own model vs
    another group's model on the same test subjects, with a subject-bootstrap interval and p.
    """
    lookup = {(r["tier"], r["train"], r["test"]): r.get(f"{metric}_mean") for r in summary}
    out = []
    for tier in dict.fromkeys(r["tier"] for r in summary):
        for g in groups:
            own = lookup.get((tier, g, g))
            others = [v for v in (lookup.get((tier, g, o)) for o in groups if o != g) if v is not None]
            if own is None or not others:
                continue
            out.append(
                {
                    "tier": tier,
                    "train": g,
                    "metric": metric,
                    "own": own,
                    "others": float(np.mean(others)),
                    "gap": own - float(np.mean(others)),
                }
            )
        mixed = [v for v in (lookup.get((tier, ALL, g)) for g in groups) if v is not None]
        if mixed:
            out.append(
                {
                    "tier": tier,
                    "train": ALL,
                    "metric": metric,
                    "min": float(min(mixed)),
                    "max": float(max(mixed)),
                    "gap": float(max(mixed) - min(mixed)),
                }
            )
    return out


def summarise(
    design: Design,
    records: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = THRESHOLD,
) -> list[dict[str, Any]]:
    """One row per (tier, trained on, tested on): counts, and each metric's mean, sd and interval.

    A record is one trained model's scores on its tier's test rows: `{"tier", "train", "replicate",
    "rows": table positions, "score": array, ...per-row extras}`.
    """
    subjects = design.table["subject_id"].astype(str).to_numpy()
    by_condition: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        by_condition.setdefault((rec["tier"], rec["train"]), []).append(rec)
    out = []
    for (tier, train), recs in by_condition.items():
        recs = sorted(recs, key=lambda r: r["replicate"])
        rows = np.asarray(recs[0]["rows"], dtype=np.int64)
        for test in design.train_groups:
            keep = design.in_group(test)[rows]
            cell_rows = rows[keep]
            extras = [
                {k: np.asarray(v)[keep] for k, v in r.items() if k in ("dice", "small", "large")}
                for r in recs
            ]
            row: dict[str, Any] = {
                "tier": tier,
                "train": train,
                "test": test,
                "n_test": int(keep.sum()),
                "n_test_pos": int(design.label[cell_rows].sum()),
                "n_test_subjects": len(set(subjects[cell_rows])),
                "replicates": len(recs),
            }
            row.update(
                cell_metrics(
                    metrics,
                    design.label[cell_rows],
                    [np.asarray(r["score"])[keep] for r in recs],
                    subjects[cell_rows],
                    extras,
                    threshold=threshold,
                    n_boot=n_boot,
                    seed=seed,
                )
            )
            out.append(row)
    return out


def per_replicate(
    design: Design, records: Sequence[dict[str, Any]], metrics: Sequence[str], *, threshold: float = THRESHOLD
) -> list[dict[str, Any]]:
    """Each model's metrics on each test group (the rows behind a cell's mean and sd)."""
    out = []
    for rec in records:
        rows = np.asarray(rec["rows"], dtype=np.int64)
        for test in design.train_groups:
            keep = design.in_group(test)[rows]
            extra = {k: np.asarray(v)[keep] for k, v in rec.items() if k in ("dice", "small", "large")}
            values = cell_metrics(
                metrics,
                design.label[rows[keep]],
                [np.asarray(rec["score"])[keep]],
                np.arange(int(keep.sum())),
                [extra],
                threshold=threshold,
                n_boot=0,
            )
            out.append(
                {
                    "tier": rec["tier"],
                    "train": rec["train"],
                    "test": test,
                    "replicate": rec["replicate"],
                    "n_test": int(keep.sum()),
                    "n_test_pos": int(design.label[rows[keep]].sum()),
                    **{m: values[f"{m}_mean"] for m in metrics},
                }
            )
    return out


def tested_subjects(design: Design, records: Sequence[dict[str, Any]]) -> int:
    """Subjects some model was scored on (not held-out rows of tiers not run, nor unreadable ones)."""
    rows = sorted({int(r) for rec in records for r in rec["rows"]})
    return int(design.table["subject_id"].iloc[rows].nunique()) if rows else 0


def nothing_trained(skipped: Sequence[dict[str, Any]], n_failed: int, n_rows: int) -> EmbedxError:
    """The error for a run in which no condition got a model: an empty matrix is not a result."""
    reasons = "; ".join(f"{s['tier']} / {s['train']}: {s['reason']}" for s in skipped[:4])
    unreadable = f" {n_failed} of {n_rows} file(s) could not be read (listed in the log)." if n_failed else ""
    return EmbedxError(f"no model could be trained ({reasons}).{unreadable}")
