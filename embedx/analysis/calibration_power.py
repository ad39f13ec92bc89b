"""Power on planted labels for `embedx calibrate`, judged the way `embedx probe` judges a real attribute.

Why a module of its own: the power must mean "the chance that `embedx probe` calls this attribute encoded",
and a review measured that it did not (calibrate printed 0.62 where the probe's real hit rate was 0.475 at 8
positive subjects, and 0.54-0.67 for classes of 4 subjects that the probe skips outright). So:

* **Untestable cells.** `embedx probe` merges or drops a class seen in fewer subjects than its folds and
  skips an attribute left with fewer than 2 classes. A planted binary label whose positive (or negative)
  class has fewer subjects than folds can therefore never be found: its power is 0, by rule, with the reason.
* **Found = the probe's `encoded`.** A label first needs p < alpha / m on the probes' permutation statistic
  (Holm's strictest step over the store's m tests; shared null per positive count, so hundreds of labels are
  affordable). Each label that passes is then re-run through `cross_validated_probe` itself (SVM, stratified
  subject folds, subject-bootstrap CI, degeneracy rule) and judged by `judge_family`: found only if the probe
  would print `encoded` (CI clear of chance, not degenerate). Where re-running every passing label would
  cost too much (large stores), a sample of them is re-run and the found count is estimated from the share
  that passes; the interval then widens (product of the two Wilson bounds: conservative).
* **Planting limits.** The liability model caps its correlation at 0.999; at rare prevalence that caps the
  mean gap below a large asked d (about 2.7 sd at 1 %). Such a cell is flagged and the effect actually
  planted is what is printed.
* **Fold seeds.** All labels of a cell sharing one fold split and one permutation null made the Wilson
  interval cover 86-94 %. Labels are dealt over several seeds (the probe's `--seed`: its label-free folds, its
  null and its SVM folds), so the cell's power averages over splits instead of riding on one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import norm

from embedx.analysis.folds import subject_folds
from embedx.analysis.permutation import RidgeNull, null_statistics
from embedx.analysis.stats import SubjectIndex, permutation_pvalue, wilson_interval

__all__ = [
    "MAX_RHO",
    "auto_probe_checks",
    "effect_text",
    "planting_limit",
    "power_cells",
    "probe_encoded",
    "untestable_reason",
]

MAX_RHO = 0.999  # the liability's largest correlation with the direction (1 would make the label a threshold)
CHECK_BUDGET = 1_000_000  # rows x dims per re-run probe below which every passing label is re-run
MIN_CHECKS = 4  # passing labels re-run per cell at least, however costly


def planting_limit(prevalence: float) -> float:
    """The largest Cohen's d the liability model can plant at this prevalence (rho capped at MAX_RHO)."""
    t = norm.ppf(1 - prevalence)
    return float(MAX_RHO * norm.pdf(t) / (prevalence * (1 - prevalence)))


def _planted_binary(
    score: np.ndarray, prevalence: float, effect: float, n_pos: int, rng: np.random.Generator
) -> np.ndarray:
    """Subjects' labels: the top `n_pos` by liability = rho * score + noise, rho set for mean gap `effect`
    (capped at MAX_RHO: a larger asked effect is flagged by `planting_limit`, never silently reported)."""
    t = norm.ppf(1 - prevalence)
    rho = min(MAX_RHO, effect * prevalence * (1 - prevalence) / max(norm.pdf(t), 1e-12))
    liability = rho * score + np.sqrt(1 - rho**2) * rng.normal(size=len(score))
    label = np.zeros(len(score), dtype=int)
    label[np.argsort(-liability)[:n_pos]] = 1
    return label


def _cohens_d(score: np.ndarray, label: np.ndarray) -> float:
    """The planted label's realised effect; NaN (quietly) where a class has fewer than two subjects."""
    a, b = score[label == 1], score[label == 0]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan")


def _finite_mean(values: list[float]) -> float:
    """The mean of the finite values, NaN when there are none (without numpy's empty-slice warning)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else float("nan")


def untestable_reason(smaller_class_subjects: int, folds: int) -> str | None:
    """Why `embedx probe` cannot test a binary label whose smaller class has this many subjects, or None."""
    if smaller_class_subjects >= folds:
        return None
    return (
        f"cannot be found: `embedx probe` skips a class seen in fewer than {folds} subjects (one per fold), "
        f"and this one would have {smaller_class_subjects}"
    )


def auto_probe_checks(per_cell: int, rows: int, dims: int, smallest_class: int | None) -> int:
    """Passing labels per cell re-run through the real probe: all of them where one probe is cheap, fewer
    (at least MIN_CHECKS) where it costs seconds: large stores, small classes, whose CI the probe builds
    from REFIT_RESAMPLES refitted cross-validations (`probe_core.SMALL_CI_SUBJECTS`, `REFIT_MAX_ROWS`), and
    every other CI's widening, which cross-validates `width_permutations` labellings on at most
    `width_max_rows` rows (`cv_width`: about as many fits per labelling as one probe makes)."""
    from embedx.analysis.probe_config import ProbeConfig
    from embedx.analysis.probe_core import REFIT_MAX_ROWS, SMALL_CI_SUBJECTS
    from embedx.analysis.refit_bootstrap import REFIT_RESAMPLES

    small = smallest_class is not None and smallest_class < SMALL_CI_SUBJECTS and rows <= REFIT_MAX_ROWS
    defaults = ProbeConfig()
    widening = 0 if small else min(rows, defaults.width_max_rows) * defaults.width_permutations
    cost = max(1, rows * dims) * (REFIT_RESAMPLES if small else 1) + widening * dims
    return per_cell if cost <= CHECK_BUDGET else max(MIN_CHECKS, int(per_cell * CHECK_BUDGET / cost))


def probe_encoded(
    X: np.ndarray,
    label_rows: np.ndarray,
    subjects: np.ndarray,
    continuous: bool,
    p_value: float,
    family_size: int,
    alpha: float,
    folds: int,
    seed: int,
    n_bootstrap: int,
) -> bool:
    """Would `embedx probe` call this label encoded, given its permutation p-value?

    The probe (SVM, CI, degeneracy) runs without its own permutation test; its p is replaced by p * m and
    `judge_family` judges that family of one, i.e. Holm's strictest step over m tests with the probe's own
    CI and degeneracy criteria, whatever `judge_family` requires.
    """
    from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe
    from embedx.analysis.probe_result import judge_family

    config = ProbeConfig(folds=folds, n_permutations=0, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
    y = label_rows.astype(float) if continuous else label_rows.astype(int).astype(str)
    result = cross_validated_probe(
        X, y, subjects.astype(str), "continuous" if continuous else "binary", config=config
    )
    if result.skipped or result.untestable:
        return False
    judged = judge_family([result.replace(p_value=min(1.0, p_value * family_size))], alpha)[0]
    return bool(judged.encoded)


def _interval(found: int, n: int, passed: int, checked: int, confirmed: int) -> list[float]:
    """Wilson interval of found / n when every passing label was re-run; else the product of the Wilson
    bounds of passed / n and confirmed / checked (conservative: both bounds at 95 %)."""
    if checked >= passed:
        return [float(v) for v in wilson_interval(found, n)]
    low_p, high_p = wilson_interval(passed, n)
    low_c, high_c = wilson_interval(confirmed, checked)
    return [float(low_p * low_c), float(high_p * high_c)]


def power_cells(
    Xs: np.ndarray,
    sub: np.ndarray,
    index: SubjectIndex,
    cfg: Any,
    threshold: float,
    n_rows_all: int,
    n_subjects_all: int,
    rng: np.random.Generator,
    probe_check: Callable[..., bool] | None = None,
) -> list[dict[str, Any]]:
    """One row per prevalence x effect (binary) and per correlation (continuous): power as the probe's hit
    rate, with the planted effect, the untestable reason and how the count was judged (see module doc)."""
    S = int(sub.max()) + 1
    zs = index.per_subject(Xs) / index.sizes[:, None]
    zs = (zs - zs.mean(axis=0)) / np.where(zs.std(axis=0) > 0, zs.std(axis=0), 1.0)
    cells = [("binary", p, e) for p in cfg.prevalences for e in cfg.effects]
    cells += [("continuous", None, r) for r in cfg.correlations]
    per_cell = max(1, int(np.ceil(cfg.n_planted / max(1, len(cells))))) if cfg.n_planted else 0
    if not per_cell:
        return []
    seeds = [cfg.seed + g for g in range(max(1, min(cfg.fold_seeds, per_cell)))]
    nulls: dict[int, RidgeNull] = {}
    shared_null: dict[Any, np.ndarray] = {}
    rows_per_subject = index.sizes.astype(float)
    scale_down = len(Xs) < n_rows_all
    power = []
    for kind, prevalence, effect in cells:
        binary = kind == "binary"
        labels, realized = [], []
        n_pos = reason = None
        if binary:
            # positive rows the probes' class-balanced subsample would keep, out of these rows
            full_pos_rows = prevalence * n_rows_all
            kept = min(full_pos_rows, cfg.permutation_max_rows / 2) if scale_down else full_pos_rows
            n_pos = int(np.clip(round(S * kept / len(Xs)), 1, S - 1))
            full_pos = round(prevalence * n_subjects_all)  # the probe sees the whole store's subjects
            smallest = min(n_pos, S - n_pos, full_pos, n_subjects_all - full_pos)
            reason = untestable_reason(smallest, cfg.folds)
        for _ in range(per_cell):
            direction = rng.normal(size=zs.shape[1])
            score = zs @ (direction / np.linalg.norm(direction))
            score = (score - score.mean()) / (score.std() or 1.0)
            if binary:
                label = _planted_binary(score, prevalence, effect, n_pos, rng)
                realized.append(_cohens_d(score, label))
            else:
                liability = effect * score + np.sqrt(1 - effect**2) * rng.normal(size=S)
                label = np.empty(S)
                label[np.argsort(liability)] = norm.ppf((np.arange(S) + 0.5) / S)  # fixed values: shared null
                realized.append(float(np.corrcoef(score, label)[0, 1]))
            labels.append(label)
        k = 2 if binary else 0
        ps = np.ones(per_cell)
        encoded = np.zeros(per_cell, dtype=bool)
        checked = confirmed = 0
        if reason is None:
            checks = cfg.probe_checks or auto_probe_checks(
                per_cell, len(Xs), Xs.shape[1], min(n_pos, S - n_pos) if binary else None
            )
            for g, seed in enumerate(seeds):
                mine = list(range(g, per_cell, len(seeds)))
                if seed not in nulls:
                    nulls[seed] = RidgeNull(Xs, subject_folds(sub, cfg.folds, seed + 2))
                key = (seed, kind, n_pos if binary else "ranks")
                if key not in shared_null:
                    shared_null[key], _, _ = null_statistics(
                        nulls[seed],
                        labels[mine[0]][sub],
                        index,
                        k,
                        cfg.permutations,
                        int(rng.integers(2**31)),
                    )
                observed = nulls[seed].statistic(np.stack([labels[i][sub] for i in mine], axis=1), k)
                for i, o in zip(mine, observed, strict=True):
                    ps[i] = permutation_pvalue(o, shared_null[key])
            passing = np.flatnonzero(ps < threshold)
            for i in passing[:checks]:
                ok = (probe_check or probe_encoded)(
                    Xs,
                    labels[i][sub],
                    sub,
                    not binary,
                    float(ps[i]),
                    cfg.family_size,
                    cfg.alpha,
                    cfg.folds,
                    seeds[i % len(seeds)],
                    cfg.probe_bootstrap,
                )
                encoded[i] = ok
                checked += 1
                confirmed += int(ok)
        passed = int(np.sum(ps < threshold))
        exact = checked >= passed
        share = confirmed / checked if checked else 0.0
        found = confirmed if exact else round(passed * share)
        estimate = found / per_cell if exact else passed * share / per_cell
        limit = planting_limit(prevalence) if binary else None
        positive_rows = (
            float(np.mean([rows_per_subject[lab == 1].sum() for lab in labels])) if binary else None
        )
        power.append(
            {
                "kind": kind,
                "prevalence": prevalence,
                "effect": effect,
                "effect_measure": "Cohen's d on the direction"
                if binary
                else "correlation r with the direction",
                "effect_reached": bool(not binary or effect <= limit),
                "max_effect": limit,
                "realized_effect": _finite_mean(realized),
                "n_labels": per_cell,
                "found": found,
                "power": float(estimate),
                "ci": [0.0, 0.0] if reason else _interval(found, per_cell, passed, checked, confirmed),
                "passed_p": passed,
                "probe_checked": checked,
                "probe_confirmed": confirmed,
                "found_estimated": not exact,
                "power_single_test": float(np.mean(ps < cfg.alpha)) if reason is None else 0.0,
                "fold_seeds": len(seeds),
                "untestable": reason,
                "positive_rows": positive_rows,
                "positive_subjects": n_pos,
                "test_prevalence": None if positive_rows is None else positive_rows / len(Xs),
                "too_few_subjects": reason is not None,
            }
        )
    return power


def effect_text(row: dict[str, Any]) -> str:
    """The effect to print for a power row: the asked one when planted, else the one actually planted."""
    symbol = "d" if row["kind"] == "binary" else "r"
    if row.get("effect_reached", True):
        return f"{symbol} = {row['effect']:g}"
    return (
        f"{symbol} = {row['realized_effect']:.2g} (asked {row['effect']:g}, more than a planted label "
        "reaches at this prevalence)"
    )
