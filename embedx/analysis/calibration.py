"""`embedx calibrate`: how often the probes' test errs on this store's random labels, and how often it finds
a real signal.

No ground truth is needed: the store's own latents and subject structure are the test bed.

* **False-positive rate.** Random labels, drawn per subject from each real attribute's own values (so they
  have its kind, its classes and their prevalence, and no link to the images), go through the probes'
  permutation test, each with its own permutations. The share with p < alpha should be about alpha; the
  share that would pass Holm in this store's table, about alpha / m or less. Such labels are exchangeable
  across subjects, as the permutation test assumes: the rate checks the machinery on these latents and
  subjects, not bias from labels that follow how subjects were recruited (the sentence says so).
* **Power.** Labels are planted along random directions of the latent space: a subject's score on a random
  unit direction (standardised subject-mean latents) drives a liability, and the top `prevalence` of
  subjects by liability are positive, with the liability's correlation chosen so that the two classes' mean
  scores differ by `effect` standard deviations (Cohen's d; for Gaussian latents this is the Mahalanobis
  distance between the classes, whatever the direction). Continuous labels get a correlation `r` with
  the direction instead. A planted label counts as **found** when `embedx probe` would call it `encoded`:
  its p-value clears alpha / m, the threshold Holm applies to the strongest probe of a table of m =
  attributes x models tests (conservative: Holm's later steps are laxer), and the probe itself, re-run on
  the label, has its CI clear of chance and is not degenerate. A class with fewer subjects than folds is
  skipped by the probe, so such a cell is reported untestable with power 0. See `calibration_power`.

Everything runs on the rows the probes' permutation test would use: at most `permutation_max_rows` rows
(whole subjects, label-free folds, the same ridge statistic). Where the store is larger, a planted label
keeps the number of positive rows that the probes' class-balanced subsample would keep. Labels with the
same number of positive subjects share one permutation distribution (it depends on the labels only through
that number), which makes hundreds of planted labels affordable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from embedx.analysis.calibration_power import (  # the planting helpers stay importable from here
    _cohens_d,  # noqa: F401
    _planted_binary,  # noqa: F401
    effect_text,
    power_cells,
)
from embedx.analysis.folds import subject_codes, subject_folds, subject_subsample
from embedx.analysis.labels import label_strings, missing_mask
from embedx.analysis.permutation import RidgeNull, permutation_test
from embedx.analysis.stats import SubjectIndex, wilson_interval
from embedx.analysis.typed import JsonResult
from embedx.errors import EmbedxError

__all__ = ["CalibrationResult", "CalibrationSettings", "calibrate_arrays", "run_calibration"]


@dataclass(frozen=True)
class CalibrationSettings:
    n_null: int = 200
    n_planted: int = 200
    prevalences: tuple[float, ...] = (0.01, 0.05, 0.2, 0.5)
    effects: tuple[float, ...] = (0.2, 0.5, 0.8)
    correlations: tuple[float, ...] = (0.1, 0.3)
    null_permutations: int | None = None  # None: null_permutations_for(family_size, alpha)
    permutations: int | None = None  # planted labels; None: what the probes would run for the family
    family_size: int | None = None  # None: m of the store's probe table (run_calibration), else 1
    alpha: float = 0.05
    folds: int = 5
    permutation_max_rows: int = 10_000
    seed: int = 0
    fold_seeds: int = 5  # planted labels dealt over this many probe seeds: see calibration_power
    probe_checks: int | None = None  # passing labels re-run through the probe per cell; None: all if cheap
    probe_bootstrap: int = 2000  # the probe's CI resamples in those re-runs (`embedx probe --bootstrap`)

    def __post_init__(self) -> None:
        if any(not 0 < p < 1 for p in self.prevalences):
            raise EmbedxError(f"prevalences must lie strictly between 0 and 1, got {self.prevalences}")
        if any(e <= 0 for e in self.effects) or any(not 0 < r < 1 for r in self.correlations):
            raise EmbedxError("effects must be positive and correlations in (0, 1)")
        if (
            self.n_null < 0
            or self.n_planted < 0
            or (self.null_permutations or 19) < 19
            or (self.permutations or 19) < 19
            or self.fold_seeds < 1
            or (self.probe_checks is not None and self.probe_checks < 1)
            or self.probe_bootstrap < 1
        ):
            raise EmbedxError(
                "label counts cannot be negative; use at least 19 permutations, one fold seed, one probe "
                "check per cell and one bootstrap resample"
            )


@dataclass(frozen=True)
class CalibrationResult(JsonResult):
    """False-positive rate on matched null labels and power on planted labels, for one model's latents."""

    model: str
    n: int
    n_subjects: int
    rows_used: int
    subjects_used: int
    family_size: int
    alpha: float
    threshold: float
    null: list[dict[str, Any]]
    false_positive_rate: float | None
    false_positive_ci: list[float | None]
    false_positive_rate_holm: float | None
    mean_p: float | None
    n_null: int
    power: list[dict[str, Any]]
    text: tuple[str, ...]
    permutations: int
    null_permutations: int
    method: str = (
        "null labels: each real attribute's subject-level values re-drawn at random, own "
        "permutation test; planted labels: liability on a random latent direction, found = what "
        "`embedx probe` calls encoded: p < alpha / m (Holm's strictest step, the probes' ridge statistic on "
        "label-free folds) and the probe re-run on the label with its CI clear of chance and not degenerate "
        "(on a sample of the passing labels where `found_estimated`); a class in fewer subjects than folds "
        "is untestable (power 0); labels dealt over `fold_seeds` probe seeds, Wilson interval over labels"
    )
    seconds: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    tuple_fields = ("text", "notes")


def _subject_values(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """One value per subject (its first row), the pool that matched null labels are drawn from."""
    _, first = np.unique(codes, return_index=True)
    return values[first]


def _matched_specs(attributes: dict[str, tuple[str, np.ndarray]], groups: np.ndarray) -> list[dict[str, Any]]:
    """Per real attribute: kind, and what its null labels are drawn from.

    A label constant within subjects gives one value per subject (`pool`); a label that varies within
    subjects (view, age at each visit) gives each subject's own sequence of values (`sequences`), so its
    null labels vary within subjects too and exercise the same permutation scheme as the real one.
    """
    specs = []
    for name, (kind, values) in attributes.items():
        present = ~missing_mask(values)
        if present.sum() < 10:
            continue
        codes = subject_codes(groups[present])
        continuous = kind == "continuous"
        try:
            raw = np.asarray(values[present], dtype=float) if continuous else label_strings(values[present])
        except (TypeError, ValueError):
            continue
        if not continuous and len(set(raw.tolist())) < 2:
            continue
        order = np.argsort(codes, kind="stable")
        sizes = np.bincount(codes)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        first = raw[order][starts]
        varying = not np.array_equal(raw[order], np.repeat(first, sizes))
        spec: dict[str, Any] = {"attribute": name, "kind": kind, "varying": varying, "pool": first}
        if varying:
            spec.update(flat=raw[order], starts=starts, sizes=sizes)
        specs.append(spec)
    if not specs:  # a store without attributes: a generic mix
        rng = np.random.default_rng(0)
        specs = [
            {
                "attribute": "(generic) binary 10 %",
                "kind": "binary",
                "varying": False,
                "pool": (rng.random(1000) < 0.1).astype(str),
            },
            {
                "attribute": "(generic) 3 classes",
                "kind": "categorical",
                "varying": False,
                "pool": rng.integers(0, 3, 1000).astype(str),
            },
            {
                "attribute": "(generic) continuous",
                "kind": "continuous",
                "varying": False,
                "pool": rng.normal(size=1000),
            },
        ]
    return specs


def _null_label(spec: dict[str, Any], sub: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label with no link to the images: each subject gets a random donor subject's value, or, for a
    label varying within subjects, values drawn from a random donor subject's own sequence."""
    n_subjects = int(sub.max()) + 1
    if not spec["varying"]:
        return spec["pool"][rng.integers(0, len(spec["pool"]), n_subjects)][sub]
    donor = rng.integers(0, len(spec["sizes"]), n_subjects)[sub]  # per row: its subject's donor
    pick = spec["starts"][donor] + (rng.random(len(sub)) * spec["sizes"][donor]).astype(int)
    return spec["flat"][pick]


def calibrate_arrays(
    X: np.ndarray,
    groups: np.ndarray,
    attributes: dict[str, tuple[str, np.ndarray]],
    settings: CalibrationSettings | None = None,
    *,
    model: str = "model",
) -> CalibrationResult:
    """Calibrate on latents `X` (n, d) with subject ids `groups`; `attributes`: name -> (kind, values)."""
    from embedx.analysis.probes import default_permutations

    cfg = settings or CalibrationSettings()
    family = cfg.family_size or 1
    cfg = replace(cfg, family_size=family, permutations=cfg.permutations or default_permutations(family),
                  null_permutations=cfg.null_permutations or null_permutations_for(family, cfg.alpha))
    started = time.perf_counter()
    X = np.asarray(X, dtype=np.float64)
    ok = np.all(np.isfinite(X), axis=1)
    X, groups = X[ok], np.asarray(groups).astype(str)[ok]
    attributes = {k: (kind, np.asarray(v, dtype=object)[ok]) for k, (kind, v) in attributes.items()}
    all_codes = subject_codes(groups)
    n_subjects_all = int(all_codes.max()) + 1 if len(all_codes) else 0
    if n_subjects_all < 4 * cfg.folds:
        raise EmbedxError(
            f"calibration needs at least {4 * cfg.folds} subjects, the store has {n_subjects_all}"
        )
    rng = np.random.default_rng(cfg.seed)
    rows = subject_subsample(np.arange(len(X)), all_codes, cfg.permutation_max_rows, rng)
    Xs, gs = X[rows], all_codes[rows]
    sub = subject_codes(gs)
    S = int(sub.max()) + 1
    index = SubjectIndex(sub)
    null = RidgeNull(Xs, subject_folds(sub, cfg.folds, cfg.seed + 2))
    threshold = cfg.alpha / max(1, cfg.family_size)
    notes: list[str] = []
    if len(rows) < len(X):
        notes.append(
            f"calibrated on a random {len(rows)}-row subsample ({S} subjects), as the probes' "
            "permutation test is"
        )

    # ---- false-positive rate: matched null labels, each with its own permutation test
    holm_measurable = 1.0 / (cfg.null_permutations + 1) < threshold  # else no null label could pass Holm
    specs = _matched_specs(attributes, groups)
    null_rows: list[dict[str, Any]] = []
    all_p: list[float] = []
    per_spec = [cfg.n_null // len(specs) + (i < cfg.n_null % len(specs)) for i in range(len(specs))]
    for spec, count in zip(specs, per_spec, strict=True):
        ps = []
        for _ in range(count):
            drawn = _null_label(spec, sub, rng)
            if spec["kind"] == "continuous":
                y, k = np.asarray(drawn, float), 0
            else:
                classes, y_codes = np.unique(drawn.astype(str), return_inverse=True)
                if len(classes) < 2:
                    continue
                y, k = y_codes.reshape(-1), len(classes)
            outcome = permutation_test(null, y, index, k, cfg.null_permutations, int(rng.integers(2**31)))
            if np.isfinite(outcome.p_value):
                ps.append(outcome.p_value)
        ps_arr = np.asarray(ps)
        all_p += ps
        hits = int(np.sum(ps_arr < cfg.alpha))
        null_rows.append(
            {
                "attribute": spec["attribute"],
                "kind": spec["kind"],
                "varies_within_subject": bool(spec["varying"]),
                "n_labels": len(ps),
                "false_positive_rate": float(hits / len(ps)) if ps else None,
                "ci": list(wilson_interval(hits, len(ps))),
                "mean_p": float(ps_arr.mean()) if ps else None,
                "passes_holm": int(np.sum(ps_arr < threshold)) if holm_measurable else None,
            }
        )
    p_all = np.asarray(all_p)
    fp_hits = int(np.sum(p_all < cfg.alpha))

    # ---- power: planted labels judged as `embedx probe` would (calibration_power)
    power = power_cells(Xs, sub, index, cfg, threshold, len(X), n_subjects_all, rng)
    text = _sentences(null_rows, fp_hits, len(p_all), power, cfg, threshold)
    return CalibrationResult(
        model=model,
        n=len(X),
        n_subjects=n_subjects_all,
        rows_used=len(rows),
        subjects_used=S,
        family_size=cfg.family_size,
        alpha=cfg.alpha,
        threshold=threshold,
        null=null_rows,
        false_positive_rate=float(fp_hits / len(p_all)) if len(p_all) else None,
        false_positive_ci=list(wilson_interval(fp_hits, len(p_all))),
        false_positive_rate_holm=(
            float(np.mean(p_all < threshold)) if len(p_all) and holm_measurable else None
        ),
        mean_p=float(p_all.mean()) if len(p_all) else None,
        n_null=len(p_all),
        power=power,
        text=tuple(text),
        permutations=cfg.permutations,
        null_permutations=cfg.null_permutations,
        seconds=round(time.perf_counter() - started, 1),
        notes=tuple(notes),
    )


def _sentences(
    null_rows: list[dict],
    fp_hits: int,
    n_null: int,
    power: list[dict],
    cfg: CalibrationSettings,
    threshold: float,
) -> list[str]:
    lines = []
    if n_null:
        if all(r["passes_holm"] is not None for r in null_rows):
            holm_hits = sum(r["passes_holm"] for r in null_rows)
            holm = (
                f"{holm_hits}/{n_null} would pass the Holm threshold of this store's table "
                f"(alpha / {cfg.family_size} = {threshold:.2g})"
            )
        else:
            holm = (
                f"no p from {cfg.null_permutations} permutations (the smallest is "
                f"1/{cfg.null_permutations + 1} = {1 / (cfg.null_permutations + 1):.2g}) can fall below the "
                f"Holm threshold of this store's table (alpha / {cfg.family_size} = {threshold:.2g}), so "
                "that rate is not measured (raise --null-permutations)"
            )
        lines.append(
            f"False-positive rate: {fp_hits}/{n_null} labels with no link to the images had "
            f"p < {cfg.alpha:g} ({fp_hits / n_null:.1%}; expected {cfg.alpha:.0%}); {holm}. These labels "
            "are drawn at random per subject, as the permutation test assumes, so this checks the test on "
            "this store's latents and subjects; it cannot show a bias from labels that follow how subjects "
            "were recruited (a site that sent only its sickest patients)."
        )
    for row in power:
        if row["kind"] == "binary":
            what = f"an attribute at prevalence {row['prevalence']:.0%} with effect {effect_text(row)}"
        else:
            what = f"a continuous attribute with correlation {effect_text(row)}"
        if row.get("untestable"):
            lines.append(f"In this cohort, {what} {row['untestable']} (power 0).")
            continue
        how = f"{row['found']}/{row['n_labels']} planted labels"
        if row.get("found_estimated"):
            how = (
                f"about {how}: {row['passed_p']} passed p, {row['probe_confirmed']} of the "
                f"{row['probe_checked']} re-run through the probe were encoded"
            )
        lines.append(
            f"In this cohort, {what} is found with probability {row['power']:.2f} "
            f"[{row['ci'][0]:.2f}, {row['ci'][1]:.2f}] ({how})."
        )
    return lines


def run_calibration(
    store_path: Any,
    models: Sequence[str] | None = None,
    settings: CalibrationSettings | None = None,
    *,
    write: bool = True,
) -> list[CalibrationResult]:
    """Calibrate every model (or those named) of a store; `/analysis/calibration/<model>` unless not `write`.

    Unset in `settings`, the family size m is what the store's probe table corrected for (attributes x
    models before any `embedx probe` run) and the planted labels' permutations what the probes would run
    for that family.
    """
    from embedx.analysis.probes import resolve_names
    from embedx.progress import progress_bar
    from embedx.store.h5store import Store

    results = []
    with Store.open(store_path) as store:
        names = resolve_names(models, store.models(), "model", store_path)
        if not names:
            raise EmbedxError(f"{store_path}: the store holds no latents yet (run `embedx encode` first)")
        schema = store.schema()
        table = store.attributes()
        base = settings or CalibrationSettings()
        if base.family_size is None:
            base = replace(base, family_size=_table_family_size(store, len(store.models()) * len(schema)))
        attributes = {n: (s.kind, table[n].to_numpy()) for n, s in schema.items()}
        subjects = np.asarray(store.subject_ids).astype(str)
        with progress_bar(len(names), "calibrate", unit="model") as advance:
            for name in names:
                results.append(calibrate_arrays(store.latents(name), subjects, attributes, base, model=name))
                advance(1)
    if write:
        with Store.open(store_path, mode="a") as store:
            for r in results:
                store.write_analysis("calibration", r.model, r.to_dict())
    return results


def null_permutations_for(family_size: int, alpha: float = 0.05) -> int:
    """Permutations per null label: 199, or up to 399 where that lets a p reach Holm's strictest threshold
    alpha / m with room (smallest p 1 / (P + 1) = alpha / 2m; m <= 10). With 199 a 10-test table printed its
    Holm-level false-positive rate as "not measured". Beyond m = 10 it is not bought: the null labels' cost
    grows with P (199 -> 1,799 took 49 -> 238 s at m = 45, 3,000 rows x 128-d), and 200 null labels expect
    200 alpha / m < 1 Holm-level hit there, too few to measure a rate; the raw rate at alpha is the check."""
    needed = int(np.ceil(2 * family_size / alpha)) - 1
    return needed if 199 < needed <= 399 else 199


def _table_family_size(store: Any, every_probe: int) -> int:
    """The m that Holm used in the probe table `embedx probe` last wrote to this store: skipped and
    untestable probes are not tests there, so attributes x models (the fallback before any probe run)
    overstated it (a review: alpha / 56 where the table said 52 tests)."""
    stored = [r for r in store.read_analysis("probes") if r.get("family_size")]
    return max(1, int(stored[-1]["family_size"]) if stored else every_probe)
