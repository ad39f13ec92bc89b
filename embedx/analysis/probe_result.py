"""`ProbeResult`: one probe's verdict, typed, frozen, and readable as the design card's JSON.

Every producer of a probe (per-attribute probes, strata, ComBat, background patches, calibration) returns
this type, and every reader (report, dashboard, CLI, a user's CI script) gets the same fields. It is a
read-only `Mapping` over its JSON form too, so code that reads stored results (plain dicts from the store)
and fresh ones is the same code: `result["score"]` works for both.

A family of probes is judged together by `judge_family`: Holm's correction over exactly the results given
(the table that is shown), `encoded` only when the adjusted p < alpha, the 95 % CI is clear of chance and the
probe is not degenerate (it predicts more than one class, or more than a constant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from embedx.analysis.stats import holm
from embedx.analysis.typed import JsonResult

__all__ = [
    "INTERVAL_WITHOUT_TEST",
    "VERDICT_ENCODED",
    "VERDICT_NOT_FOUND",
    "ProbeResult",
    "clear_of_chance",
    "judge_family",
    "verdict_text",
]

VERDICT_ENCODED = "encoded"
VERDICT_NOT_FOUND = "not distinguishable from chance"
# Said when the interval alone would call the attribute encoded and the test does not. The verdict needs
# both; with no signal a 95 % interval still excludes chance in about 1 case in 20 (before `cv_width` widened
# it, 9-18 %), and the bare "not distinguishable from chance" beside [0.51, 0.61] read as a contradiction.
INTERVAL_WITHOUT_TEST = (
    " (the interval alone excludes chance, but the permutation test, which the verdict also needs, is not "
    "passed)"
)
# The other half: the test is passed but the interval still reaches chance (a small effect, or a wide
# interval of few subjects). Without it "not distinguishable from chance" beside Holm p 0.03 read as wrong.
TEST_WITHOUT_INTERVAL = (
    " (the permutation test is passed, but the interval, which the verdict also needs, still reaches chance: "
    "a small effect or too few subjects to size it)"
)


def verdict_text(
    encoded: bool, skipped: str | None = None, degenerate: bool = False, untestable: str | None = None
) -> str:
    """The human verdict shown beside every probe."""
    if skipped:
        return f"skipped: {skipped}"
    if untestable:
        return f"untestable: {untestable}"
    if encoded:
        return VERDICT_ENCODED
    if degenerate:
        return f"{VERDICT_NOT_FOUND} (the probe predicts a single value)"
    return VERDICT_NOT_FOUND


@dataclass(frozen=True)
class ProbeResult(JsonResult):
    """One model x attribute probe (see docs/probes-and-fairness.md for every field)."""

    model: str
    attribute: str
    kind: str
    metric: str  # "balanced_accuracy" | "mae"
    score: float | None = None
    ci: tuple[float | None, float | None] = (None, None)
    chance: float | None = None
    # continuous: 95 % CI of MAE minus chance MAE on the same subject resamples (< 0: better than chance)
    ci_vs_chance: tuple[float | None, float | None] | None = None
    # continuous: Pearson r of the out-of-fold predictions with the label and its 95 % CI (the verdict's)
    correlation: float | None = None
    correlation_ci: tuple[float | None, float | None] | None = None
    p_value: float | None = None
    encoded: bool = False
    n: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    verdict: str = VERDICT_NOT_FOUND
    p_holm: float | None = None
    family_size: int = 1
    alpha: float = 0.05
    skipped: str | None = None
    untestable: str | None = None  # a test that cannot reject (the labels can hardly be permuted), and why
    degenerate: bool = False
    role: str | None = None
    stratum: str | None = None
    n_total: int = 0
    rows_encoded: int | None = None  # the model's encoded rows when this ran (a later encode makes it stale)
    n_missing: int = 0
    n_not_encoded: int = 0
    n_subjects: int = 0
    folds: int = 0
    kernel: str = "linear"
    estimator: str = ""
    C: float | None = None
    C_per_fold: tuple[float, ...] = ()
    auc: float | None = None
    auc_chance: float | None = None
    # categorical (> 2 classes): each class's one-vs-rest AUC of the out-of-fold scores, highest first
    class_auc: dict[str, float] | None = None
    r2: float | None = None
    chance_r2: float | None = None
    chance_method: str = ""
    predicted_classes: dict[str, int] = field(default_factory=dict)
    merged_classes: tuple[str, ...] = ()
    n_dropped_small_classes: int = 0
    bootstrap: dict[str, Any] = field(default_factory=dict)
    permutation: dict[str, Any] = field(default_factory=dict)
    train_rows_per_fold: tuple[int, ...] = ()
    train_subsampled: bool = False
    notes: tuple[str, ...] = ()
    normalized_encoding: float | None = None
    normalized_by: str | None = None
    harmonised: dict[str, Any] | None = None
    seconds: float | None = None

    omit_if_none: ClassVar[tuple[str, ...]] = (
        "stratum",
        "class_auc",
        "ci_vs_chance",
        "correlation",
        "correlation_ci",
        "normalized_encoding",
        "normalized_by",
        "harmonised",
    )
    tuple_fields: ClassVar[tuple[str, ...]] = (
        "ci",
        "ci_vs_chance",
        "correlation_ci",
        "C_per_fold",
        "merged_classes",
        "train_rows_per_fold",
        "notes",
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeResult:
        """A result from its JSON form (a stored analysis); unknown keys ignored, absent ones defaulted."""
        if isinstance(data, ProbeResult):
            return data
        values = dict(data)
        for required in ("model", "attribute", "kind"):
            values.setdefault(required, "")
        values.setdefault("metric", "balanced_accuracy")
        if values.get("ci") is None:
            values["ci"] = (None, None)
        return super().from_dict(values)


def _interval(result: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """A finite interval stored under `key`, or None (results stored before the field existed)."""
    ci = result.get(key)
    if not ci or ci[0] is None or ci[1] is None or not np.all(np.isfinite(np.asarray(ci, dtype=float))):
        return None
    return float(ci[0]), float(ci[1])


def clear_of_chance(result: Mapping[str, Any]) -> bool:
    """The 95 % CI lies strictly on the informative side of chance (a constant predictor sits *on* it).

    A continuous attribute is judged on the CI of its out-of-fold correlation (lower bound > 0), the
    permutation test's own statistic, not on the MAE's CI against the median baseline's point value. An
    MAE gain is second order in the effect, and that interval ignored that both errors move together from
    one resample to the next: on a 400-subject cohort it failed all 28 planted r = 0.3 labels whose
    permutation p passed (the paired MAE-gap interval still failed 16 of 21). The MAE gap stays in
    `ci_vs_chance`.
    """
    ci, chance = result.get("ci") or (None, None), result.get("chance")
    if chance is None:
        return False
    if result.get("metric") == "mae":
        r_ci = _interval(result, "correlation_ci")
        if r_ci is not None:
            return r_ci[0] > 0
        if result.get("correlation_ci") is None and result.get("correlation") is not None:
            return False  # a correlation without an interval (no resamples): no verdict either way
        high = ci[1]
        return high is not None and np.isfinite(high) and high < chance
    low = ci[0]
    return low is not None and np.isfinite(low) and low > chance


def _below_chance(result: ProbeResult) -> bool:
    """The whole 95 % CI on the wrong side of chance (e.g. fold-wise constant predictions)."""
    low, high = result.ci or (None, None)
    if result.chance is None or low is None or high is None:
        return False
    r_ci = _interval(result, "correlation_ci") if result.metric == "mae" else None
    if r_ci is not None:
        return r_ci[1] < 0
    return bool(low > result.chance) if result.metric == "mae" else bool(high < result.chance)


def _unreachable(pvals: list[float], i: int, permutations: Any, alpha: float) -> float | None:
    """The smallest Holm-adjusted p that test `i` could reach with its permutations, when that still fails
    alpha; None when the test could pass (or ran no permutations)."""
    if not isinstance(permutations, int) or permutations <= 0:
        return None
    best = list(pvals)
    best[i] = 1.0 / (permutations + 1)
    reachable = float(holm(best)[i])
    return reachable if reachable >= alpha else None


def judge_family(
    results: Sequence[ProbeResult | Mapping[str, Any]], alpha: float = 0.05
) -> list[ProbeResult]:
    """Holm over exactly these results (skipped and untestable ones are not tests); returns them re-judged.

    `encoded` = Holm-adjusted p < alpha AND the CI clear of chance AND not degenerate. `family_size` is the
    number of tests Holm counted, so a reader sees what the p-values were corrected for. A result without a
    CI (no bootstrap resamples) gets no verdict rather than "not distinguishable from chance".
    """
    typed = [ProbeResult.from_dict(r) for r in results]
    pvals = [np.nan if (r.skipped or r.untestable or r.p_value is None) else float(r.p_value) for r in typed]
    adjusted = holm(pvals)
    m = int(np.sum(~np.isnan(adjusted)))
    out = []
    for r, p_adj in zip(typed, adjusted, strict=True):
        if r.skipped or r.untestable:
            verdict = verdict_text(False, r.skipped, untestable=r.untestable)
            out.append(r.replace(encoded=False, p_holm=None, family_size=m, alpha=alpha, verdict=verdict))
            continue
        p_holm = None if np.isnan(p_adj) else float(p_adj)
        encoded = bool(p_holm is not None and p_holm < alpha and clear_of_chance(r) and not r.degenerate)
        verdict = verdict_text(encoded, None, r.degenerate)
        ci = r.ci or (None, None)
        permutations = (r.permutation or {}).get("permutations")
        if r.score is not None and any(v is None or not np.isfinite(v) for v in ci):
            verdict = "no verdict: no confidence interval (bootstrap resamples = 0)"
        elif r.score is not None and r.p_value is None:
            verdict = "no verdict: no permutation test was run (permutations = 0)"
        elif not encoded and (reachable := _unreachable(pvals, len(out), permutations, alpha)) is not None:
            # "not distinguishable from chance" would be read as a finding where it is only a lack of
            # resolution: this probe could not pass Holm even with the smallest p its permutations allow
            verdict = (
                f"no verdict: {permutations} permutations cannot reach Holm's threshold over {m} tests "
                f"(smallest adjusted p {reachable:.3f}); rerun with at least "
                f"{int(np.ceil(2 * m / alpha))} permutations"
            )
        elif not encoded and _below_chance(r):
            verdict += " (below chance: the probe does worse than guessing, which is no evidence of encoding)"
        elif verdict == VERDICT_NOT_FOUND and p_holm is not None and clear_of_chance(r):
            verdict += INTERVAL_WITHOUT_TEST
        elif verdict == VERDICT_NOT_FOUND and p_holm is not None and p_holm < alpha:
            verdict += TEST_WITHOUT_INTERVAL
        out.append(r.replace(p_holm=p_holm, family_size=m, alpha=alpha, encoded=encoded, verdict=verdict))
    return out


def smallest_holm_p(family_size: int, permutations: int) -> float:
    """The smallest Holm-adjusted p a family can reach: m / (P + 1)."""
    return family_size / (permutations + 1)
