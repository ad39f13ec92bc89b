"""Enrichment tests for attributes that are constant within each subject, using every image of a subject.

Why. A selection (a cluster, a lasso) is a set of images; a subject's images may fall partly inside it
(views, visits). Testing one drawn image per subject keeps the subject as the unit, but a subject with 8
images then contributes one coin flip where it holds 8 observations of how the selection treats it: in a
review's simulation (300 subjects x 8 images, a value on 10 % of subjects, each of their images selected
with probability 0.3 against 0.2) the drawn-image test found the value 23 % of the time, a test on every
subject's share of selected images 90 %.

What. Each subject's share of its images inside the selection is its observation (subjects stay the unit,
so a patient with 30 images counts once). When every subject is wholly in or out (share 0 or 1, as when a
cluster holds all of a patient's images), the comparison is exactly the 2 x 2 table of subjects, and gets
the same Fisher / chi-square test, odds ratio and Woolf interval as before, now on every subject rather than
a draw. When some subjects are split, each value's subjects are compared with the rest by Mann-Whitney on
the shares, and the attribute as a whole by Kruskal-Wallis; the odds ratio and Cramér's V are then those
of the share-weighted subject counts (a subject with 3 of its 4 images inside counts 0.75 inside, 0.25
outside), the odds ratio without an interval; with whole subjects these are exactly the subject 2 x 2
table's.
Attributes that vary within a subject (a view, an age at each visit) keep the one-drawn-image test.

The Mann-Whitney p is a permutation p. Most shares are 0 (a cluster holds a twelfth of the images), so a
value's rank sum is skewed, and the normal approximation, right at p = 0.05, was 2x too small at 1e-3 and
3x at 1e-4 over 35,000 null tests. Those are the p-values that decide Benjamini-Hochberg over hundreds of
cluster x value tests: 17 % of null cohorts listed an enriched value, where 5 % is the promise. Values whose
approximate p is below 0.05 therefore get a Monte-Carlo permutation p (exact permutations of the subjects'
values; sequential, stopping after 50 exceedances as Besag & Clifford 1991, else (k + 1) / (B + 1) after B
draws, B up to 20,000); so does the attribute's Kruskal-Wallis p, whose chi-square tail was 2.3x too
thin at 1e-3 over 14,196 null tests. The permutations cost draws x subjects, so above `EXACT_MAX_SUBJECTS`
subjects an attribute whose subjects are split falls back to the one-drawn-image test, whose p is exact and
whose power is ample at that size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from embedx.analysis.columns import CodedColumn
from embedx.analysis.labels import value_text

EXACT_MAX_SUBJECTS = 2_000  # permutation p above this many subjects would cost seconds per test
PERMUTATION_BUDGET = 4e7  # subject ranks drawn per refined test (draws x subjects): ~0.3 s at most
MAX_DRAWS = 20_000  # p down to 5e-5: the top of Benjamini-Hochberg over ~1,000 cluster x value tests
REFINE_BELOW = 0.05  # approximate p above this is accurate (0.9x nominal) and cannot pass BH anyway
STOP_AFTER = 50  # exceedances before a sequential Monte-Carlo p stops (Besag & Clifford 1991)


def _sequential_p(statistic: Callable[[np.random.Generator, int], np.ndarray], observed: float, n: int,
                  seed: list[int], budget: float) -> tuple[float, int]:
    """Monte-Carlo p of `statistic(rng, draws) >= observed`, and the draws made.

    Sequential (Besag & Clifford 1991): stops once STOP_AFTER draws reach the observed value, giving
    STOP_AFTER / draws, else (k + 1) / (draws + 1); both are valid p-values. Seeded by the test itself, so a
    table is the same every time it is drawn. A draw costs `n` (one permutation of the subjects).
    """
    rng = np.random.default_rng(seed)
    max_draws = int(np.clip(budget // n, 2_000, MAX_DRAWS))
    chunk = int(np.clip(1e6 // n, 200, 2_000))
    tolerance = 1e-9 * (1 + abs(observed))
    exceed = draws = 0
    while draws < max_draws:
        b = min(chunk, max_draws - draws)
        exceed += int(np.sum(statistic(rng, b) >= observed - tolerance))
        draws += b
        if exceed >= STOP_AFTER:
            return exceed / draws, draws
    return (exceed + 1) / (draws + 1), draws


def permutation_p(ranks: np.ndarray, n_group: int, deviation: float,
                  budget: float = PERMUTATION_BUDGET) -> tuple[float, int]:
    """Two-sided permutation p of a group's rank sum, |sum - n_group * mean rank| >= deviation, over random
    subsets of `n_group` subjects (drawn without replacement); and the draws made (`_sequential_p`)."""
    n = ranks.size
    m = int(min(n_group, n - n_group))  # the smaller side: its deviation equals the other's
    if m <= 0:
        return 1.0, 0
    centre = m * float(ranks.mean())

    def deviations(rng: np.random.Generator, b: int) -> np.ndarray:
        chosen = np.argpartition(rng.random((b, n)), m - 1, axis=1)[:, :m]
        return np.abs(ranks[chosen].sum(axis=1) - centre)

    return _sequential_p(deviations, deviation, n, [n, int(n_group), round(deviation * 2)], budget)


def kruskal_permutation_p(ranks: np.ndarray, sizes: np.ndarray, observed: float,
                          budget: float = PERMUTATION_BUDGET) -> tuple[float, int]:
    """Permutation p of Kruskal-Wallis over groups of these `sizes` (subjects), as sum(R_g^2 / n_g) >=
    `observed` (H is increasing in it for fixed n and ties), and the draws made (`_sequential_p`)."""
    n = ranks.size
    starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)

    def statistics(rng: np.random.Generator, b: int) -> np.ndarray:
        permuted = rng.permuted(np.broadcast_to(ranks, (b, n)), axis=1)
        sums = np.add.reduceat(permuted, starts, axis=1)
        return (sums**2 / sizes).sum(axis=1)

    return _sequential_p(statistics, observed, n, [n, len(sizes), round(observed)], budget)


def subject_values(codes: np.ndarray, subject: np.ndarray, n_subjects: int) -> np.ndarray | None:
    """Each subject's value code (-1: none present), or None when some subject holds two values."""
    present = np.flatnonzero(codes >= 0)
    value = np.full(n_subjects, -1, dtype=np.int64)
    value[subject[present]] = codes[present]  # any one of the subject's values (O(rows), no ufunc.at)
    if np.any(codes[present] != value[subject[present]]):
        return None
    return value


class SubjectShareTests:
    """The subject-share tests of one cohort's subject-constant categorical columns (see the module doc)."""

    def __init__(self, subject: np.ndarray, n_subjects: int) -> None:
        self.subject = np.asarray(subject, dtype=np.int64)
        self.n_subjects = n_subjects
        self.images = np.bincount(self.subject, minlength=n_subjects).astype(float)

    def shares(self, chosen: np.ndarray) -> Shares:
        """Each subject's share of its images among the chosen rows."""
        counts = np.bincount(self.subject[chosen], minlength=self.n_subjects)
        return Shares(counts / np.maximum(self.images, 1))

    def rows(self, name: str, kind: str, values: np.ndarray, uniques: np.ndarray, share: Shares,
             categorical_rows: Callable[..., list[dict]]) -> dict[str, dict] | None:
        """value -> the test fields of that value (p, statistic, odds ratio and interval, attribute p);
        None where subjects are split and too many to permute (the caller then draws one image each)."""
        present = values >= 0
        everyone = bool(present.all())
        r, v = (share.values, values) if everyone else (share.values[present], values[present])
        if r.size == 0:
            return {}
        if share.whole if everyone else np.all((r == 0) | (r == 1)):
            subjects = CodedColumn.from_codes(np.asarray(v, dtype=np.int64), uniques)
            found = categorical_rows(name, kind, subjects, np.flatnonzero(r == 1))
            return {row["value"]: row for row in found}
        if r.size > EXACT_MAX_SUBJECTS:
            return None
        ranks, tie_term = share.ranks() if everyone else _ranks(r)
        return _share_rows(r, v, uniques, ranks, tie_term)


class Shares:
    """One selection's per-subject shares, with their ranks computed once for every column that covers
    every subject (sorting 300k shares per column made a lasso at a million rows take a second)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.whole = bool(np.all((values == 0) | (values == 1)))
        self._ranks: tuple[np.ndarray, float] | None = None

    def ranks(self) -> tuple[np.ndarray, float]:
        if self._ranks is None:
            self._ranks = _ranks(self.values)
        return self._ranks


def _ranks(r: np.ndarray) -> tuple[np.ndarray, float]:
    """Average ranks (1-based) and the tie term sum(t^3 - t) of the shares."""
    _, inverse, ties = np.unique(r, return_inverse=True, return_counts=True)
    ends = np.cumsum(ties)
    average = (ends - (ties - 1) / 2.0)[inverse.reshape(-1)]
    return average, float(np.sum(ties.astype(float) ** 3 - ties))


def _share_rows(r: np.ndarray, v: np.ndarray, uniques: np.ndarray, ranks: np.ndarray,
                tie_term: float) -> dict[str, dict]:
    """Mann-Whitney per value (its subjects' shares vs the rest's) and Kruskal-Wallis per attribute."""
    k = len(uniques)
    n = r.size
    n1 = np.bincount(v, minlength=k).astype(float)
    rank_sum = np.bincount(v, weights=ranks, minlength=k)
    n2 = n - n1
    u1 = rank_sum - n1 * (n1 + 1) / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else np.zeros(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.maximum(np.abs(u1 - n1 * n2 / 2) - 0.5, 0) / np.sqrt(variance)
        p = np.where((n1 > 0) & (n2 > 0) & (variance > 0), 2 * stats.norm.sf(z), 1.0)
        used = n1 > 0
        h = (12 / (n * (n + 1)) * np.sum(rank_sum[used] ** 2 / n1[used]) - 3 * (n + 1))
        h /= 1 - tie_term / (n**3 - n) if n > 1 and tie_term < n**3 - n else np.nan
        attribute_p = float(stats.chi2.sf(h, used.sum() - 1)) if used.sum() >= 2 and np.isfinite(h) else 1.0
        if attribute_p < REFINE_BELOW:  # chi-square's tail is too thin here as well (2.3x at 1e-3)
            observed = float(np.sum(rank_sum[used] ** 2 / n1[used]))
            attribute_p = kruskal_permutation_p(ranks, n1[used], observed)[0]
        a = np.bincount(v, weights=r, minlength=k)  # share-weighted subjects of each value in the selection
        b, c = a.sum() - a, n1 - a
        d = n2 - b
        odds = (a * d) / (b * c)
        cramers_v = _share_cramers_v(a[used], c[used])
    draws = np.zeros(k, dtype=int)
    for i in np.flatnonzero((p < REFINE_BELOW) & (n1 > 0) & (n2 > 0)):
        p[i], draws[i] = permutation_p(ranks, int(n1[i]), abs(float(rank_sum[i] - n1[i] * (n + 1) / 2)))
    if k == 1:
        p[:] = np.nan
    return {
        value_text(value): {
            "test": "mannwhitney (subject shares)"
            + (f", permutation p ({draws[i]:,} draws)" if draws[i] else ""),
            "statistic": float(u1[i]),
            "p_value": float(p[i]),
            "odds_ratio": float(odds[i]),
            "or_ci_low": np.nan,
            "or_ci_high": np.nan,
            "attribute_p": attribute_p,
            "cramers_v": cramers_v,
        }
        for i, value in enumerate(uniques)
    }


def _share_cramers_v(inside: np.ndarray, outside: np.ndarray) -> float:
    """Cramér's V of the value x (inside, outside) table of share-weighted subject counts; NaN when one
    column or all but one value is empty (nothing to associate)."""
    table = np.stack([inside, outside], axis=1)
    total = table.sum()
    if table.shape[0] < 2 or total <= 0 or (table.sum(axis=0) <= 0).any():
        return float("nan")
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / total
    return float(np.sqrt(((table - expected) ** 2 / expected).sum() / total))
