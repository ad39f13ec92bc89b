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
Where subjects have different numbers of images, the values are permuted within image-count strata and
the rank sums' moments are those of that stratified permutation (`embedx.analysis.share_strata` says why:
unstratified, a value held by subjects with many images was called enriched in 80 % of null cohorts).

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
from embedx.analysis.share_strata import CountStrata, common_count_shares, count_strata, draw_seed

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


def permutation_p(ranks: np.ndarray, members: np.ndarray, deviation: float, strata: np.ndarray | None = None,
                  budget: float = PERMUTATION_BUDGET) -> tuple[float, int]:
    """Two-sided permutation p of the rank sum of `members` (a mask over subjects), |sum - its expectation|
    >= deviation, with the members' places permuted within `strata` (each subject's stratum; None: one);
    and the draws made (`_sequential_p`). A stratum the group fills or misses adds a constant."""
    index = np.zeros(ranks.size, dtype=np.int64) if strata is None else np.asarray(strata)
    pools: list[tuple[np.ndarray, int, float]] = []  # a stratum's ranks, the side drawn, its sign
    for s in np.unique(index):
        pool = ranks[index == s]
        m = int(members[index == s].sum())
        if 0 < m < pool.size:  # draw the smaller side: its deviation is the other's, negated
            pools.append((pool, m, 1.0) if m <= pool.size - m else (pool, pool.size - m, -1.0))
    if not pools:
        return 1.0, 0
    size = sum(pool.size for pool, _, _ in pools)

    def deviations(rng: np.random.Generator, b: int) -> np.ndarray:
        total = np.zeros(b)
        for pool, m, sign in pools:
            chosen = np.argpartition(rng.random((b, pool.size)), m - 1, axis=1)[:, :m]
            total += sign * (pool[chosen].sum(axis=1) - m * pool.mean())
        return np.abs(total)

    seed = [ranks.size, int(members.sum()), round(deviation * 2), len(pools)]
    return _sequential_p(deviations, deviation, size, seed, budget)


class RankMoments:
    """Moments of each value's rank sum when values are permuted within strata (sampling without
    replacement in each stratum), and the Kruskal-Wallis form built on them: with one stratum, its
    statistic is Kruskal-Wallis's H with the tie correction; with several, the stratified (van Elteren-type)
    generalisation, d' Sigma^+ d over the values' deviations d from their expected rank sums."""

    def __init__(self, ranks: np.ndarray, codes: np.ndarray, k: int, strata: np.ndarray) -> None:
        self.ranks, self.codes, self.k, self.strata = ranks, codes, k, strata
        n_strata = int(strata.max()) + 1 if strata.size else 1
        self.counts = np.bincount(codes * n_strata + strata, minlength=k * n_strata).reshape(k, n_strata)
        size = self.counts.sum(axis=0).astype(float)
        mean = np.bincount(strata, weights=ranks, minlength=n_strata) / np.maximum(size, 1)
        spread = np.bincount(strata, weights=(ranks - mean[strata]) ** 2, minlength=n_strata)
        self.size, self.mean = size, mean
        self.scale = np.where(size > 1, spread / np.maximum(size - 1, 1), 0.0)  # sigma_s^2 N_s / (N_s - 1)
        self.expected = self.counts @ mean
        self.variance = (self.counts * (size - self.counts) / np.maximum(size, 1) * self.scale).sum(axis=1)

    def kruskal(self, sums: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, int]:
        """The statistic of each row of `sums` (rank sums of the `used` values) and its degrees of freedom."""
        counts = self.counts[used].astype(float)
        cov = np.zeros((counts.shape[0],) * 2)
        for s in range(counts.shape[1]):
            if self.size[s] > 1:
                c = counts[:, s]
                cov += self.scale[s] * (np.diag(c) - np.outer(c, c) / self.size[s])
        precision = np.linalg.pinv(cov, rcond=1e-10, hermitian=True)
        d = np.atleast_2d(sums) - self.expected[used]
        return np.einsum("bi,ij,bj->b", d, precision, d), int(np.linalg.matrix_rank(cov, hermitian=True))


def kruskal_permutation_p(moments: RankMoments, used: np.ndarray, observed: float,
                          budget: float = PERMUTATION_BUDGET) -> tuple[float, int]:
    """Permutation p of the (stratified) Kruskal-Wallis statistic >= `observed`, the values permuted within
    strata, and the draws made (`_sequential_p`)."""
    ranks, codes, strata = moments.ranks, moments.codes, moments.strata
    place = np.cumsum(used) - 1  # value code -> its column among the used values
    fixed = np.zeros(int(used.sum()))
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # ranks, block starts, their columns
    for s in range(moments.counts.shape[1]):
        inside = strata == s
        present = np.flatnonzero(moments.counts[:, s] > 0)
        if present.size == 0:
            continue
        if present.size == 1:  # one value: its sum never moves
            fixed[place[present[0]]] += ranks[inside].sum()
            continue
        order = np.argsort(codes[inside], kind="stable")
        starts = np.r_[0, np.cumsum(moments.counts[present, s])[:-1]].astype(np.int64)
        parts.append((ranks[inside][order], starts, place[present]))
    n = ranks.size

    def statistics(rng: np.random.Generator, b: int) -> np.ndarray:
        sums = np.tile(fixed, (b, 1))
        for pool, starts, columns in parts:
            permuted = rng.permuted(np.broadcast_to(pool, (b, pool.size)), axis=1)
            sums[:, columns] += np.add.reduceat(permuted, starts, axis=1)
        return moments.kruskal(sums, used)[0]

    return _sequential_p(statistics, observed, n, [n, int(used.sum()), round(observed * 100)], budget)


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
        self._strata: dict[str, CountStrata] = {}

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
        images = self.images if everyone else self.images[present]
        if name not in self._strata:  # a column's strata do not depend on the selection
            self._strata[name] = count_strata(images, v)
        strata = self._strata[name]
        if strata.subsampled:
            selected = np.rint(r * images)
            ranks = _ranks(common_count_shares(selected, images, strata, draw_seed(name, selected)))[0]
        else:
            ranks = share.ranks()[0] if everyone else _ranks(r)[0]
        return _share_rows(r, v, uniques, ranks, strata)


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
                strata: CountStrata) -> dict[str, dict]:
    """Rank sum per value (its subjects against the rest, within image-count strata) and Kruskal-Wallis per
    attribute; `ranks` are those of the shares the strata compare, `r` the subjects' own shares (for the
    odds ratio and Cramér's V, which describe the selection rather than test it)."""
    k = len(uniques)
    n = r.size
    moments = RankMoments(ranks, v, k, strata.index)
    n1 = moments.counts.sum(axis=1).astype(float)
    rank_sum = np.bincount(v, weights=ranks, minlength=k)
    n2 = n - n1
    u1 = rank_sum - n1 * (n1 + 1) / 2
    deviation = np.abs(rank_sum - moments.expected)
    used = n1 > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.maximum(deviation - 0.5, 0) / np.sqrt(moments.variance)
        p = np.where((n1 > 0) & (n2 > 0) & (moments.variance > 0), 2 * stats.norm.sf(z), 1.0)
        h, df = moments.kruskal(rank_sum[used], used)
        attribute_p = float(stats.chi2.sf(h[0], df)) if df >= 1 else 1.0
        if attribute_p < REFINE_BELOW:  # chi-square's tail is too thin here as well (2.3x at 1e-3)
            attribute_p = kruskal_permutation_p(moments, used, float(h[0]))[0]
        a = np.bincount(v, weights=r, minlength=k)  # share-weighted subjects of each value in the selection
        b, c = a.sum() - a, n1 - a
        d = n2 - b
        odds = (a * d) / (b * c)
        cramers_v = _share_cramers_v(a[used], c[used])
    draws = np.zeros(k, dtype=int)
    for i in np.flatnonzero((p < REFINE_BELOW) & (n1 > 0) & (n2 > 0)):
        p[i], draws[i] = permutation_p(ranks, v == i, float(deviation[i]), strata.index)
    if k == 1:
        p[:] = np.nan
    test = "mannwhitney (subject shares"
    if strata.n_strata > 1 or strata.subsampled:
        test += f", within {strata.n_strata} image-count strat{'a' if strata.n_strata > 1 else 'um'}"
    if strata.subsampled:
        test += f"; {strata.subsampled} subjects' shares over fewer of their images"
    return {
        value_text(value): {
            "test": test + ")" + (f", permutation p ({draws[i]:,} draws)" if draws[i] else ""),
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
