"""Statistics shared by probes, fairness, clusters and controls.

Three ideas run through all of it:

* **The subject is the unit of resampling.** Images of one patient are not independent, so bootstrap CIs
  resample *subjects* (cluster bootstrap) and permutation tests exchange labels *between subjects*
  (`SubjectPermuter`); resampling images would give CIs that are too narrow and p-values that are too small.
* **Bootstrap on predictions only.** CIs are taken over the out-of-fold predictions that the score itself was
  computed from; nothing is refit, so 2,000 resamples cost seconds even at CheXpert size. For metrics that are
  ratios of per-sample sums (balanced accuracy, MAE, rates) the resample is a weighted sum of per-subject
  sufficient statistics, which is one matrix product per chunk of resamples.
* **Multiplicity is corrected across the whole table.** Holm's step-down adjustment across attributes x models
  controls the family-wise error without assuming independence between the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from embedx.analysis.labels import is_age_name

__all__ = [
    "AGE_BANDS",
    "SubjectIndex",
    "SubjectPermuter",
    "auc_from_ordered_counts",
    "auc_weighted",
    "balanced_accuracy_from_counts",
    "band",
    "bootstrap_balanced_accuracy",
    "bootstrap_correlation",
    "bootstrap_mae",
    "cluster_bootstrap",
    "count_dropped",
    "holm",
    "normal_interval",
    "percentile_ci",
    "permutation_pvalue",
    "permute_by_subject",
    "stratified_subject_weights",
    "wilson_interval",
]

CI_LEVEL = 0.95
# Age bands (years) used wherever a continuous age must become groups (fairness, strata): <40, 40-59, 60-79,
# 80+ -- wide enough that each band holds patients in a typical cohort, aligned with common clinical cut-offs.
AGE_BANDS = (40.0, 60.0, 80.0)
_CHUNK = 64  # resamples drawn at once: bounds memory at chunk x n_subjects weights


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as given; NaN stays NaN and does not count as a test).

    Sorted ascending p_(1) <= ... <= p_(m), the adjusted value is max_{j<=i} min(1, (m - j + 1) p_(j)),
    which is monotone, so `adjusted < alpha` reproduces Holm's sequential rejection exactly.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    factors = m - np.arange(m)
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * factors))
    out[order] = stepped
    return out


def permutation_pvalue(observed: float, null: np.ndarray, greater: bool = True) -> float:
    """(1 + #{null at least as extreme}) / (1 + P): never zero, valid at any number of permutations.

    Ties count as extreme, within 1e-7 relative (statistics recomputed in float32 may differ in the last
    bits for an identical labelling); null values that are NaN are left out (count them with
    `count_dropped`). NaN when nothing is left or the observed value is undefined.
    """
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(observed):
        return float("nan")
    tol = 1e-7 * max(1.0, abs(observed))
    extreme = np.sum(null >= observed - tol) if greater else np.sum(null <= observed + tol)
    return float((1 + extreme) / (1 + null.size))


def percentile_ci(values: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; NaN replicates (class absent) are ignored."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return (float(low), float(high))


class SubjectIndex:
    """Rows grouped by subject, built once and reused by every resample and permutation of one probe."""

    def __init__(self, groups: np.ndarray) -> None:
        groups = np.asarray(groups)
        self.codes_of_subjects, self.codes = np.unique(groups, return_inverse=True)
        self.codes = self.codes.reshape(-1)
        self.n_subjects = int(self.codes_of_subjects.size)
        self.n_rows = int(self.codes.size)
        self.order = np.argsort(self.codes, kind="stable")
        self.sizes = np.bincount(self.codes, minlength=self.n_subjects)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def per_subject(self, values: np.ndarray) -> np.ndarray:
        """Sum `values` (rows, or rows x columns) within each subject."""
        values = np.asarray(values, dtype=float)
        if values.ndim == 1:
            return np.bincount(self.codes, weights=values, minlength=self.n_subjects)
        out = np.zeros((self.n_subjects, values.shape[1]))
        np.add.at(out, self.codes, values)
        return out

    def weights(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` cluster-bootstrap draws as subject multiplicities (n x n_subjects).

        Each draw picks n_subjects subjects with replacement; counting them with one bincount is ~10x faster
        than `rng.multinomial` over 65k categories (the CheXpert case).
        """
        S = self.n_subjects
        drawn = rng.integers(0, S, size=(n, S)) + (S * np.arange(n))[:, None]
        return np.bincount(drawn.ravel(), minlength=n * S).reshape(n, S).astype(np.float64)

    def resample_rows(self, rng: np.random.Generator) -> np.ndarray:
        """Row indices of one cluster-bootstrap resample (subjects drawn with replacement, all their rows)."""
        drawn = rng.integers(0, self.n_subjects, size=self.n_subjects)
        sizes = self.sizes[drawn]
        starts = self.starts[drawn]
        offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self.order[np.repeat(starts, sizes) + offsets]


def balanced_accuracy_from_counts(correct: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Mean per-class recall from (..., K) correct and total counts; NaN where a class has no rows.

    A bootstrap resample that lost a class has no balanced accuracy over all K classes: averaging the
    recalls of the classes left would put the other classes' recall into the interval. Such resamples are
    NaN, left out of the interval and counted as dropped.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = correct / np.where(total > 0, total, 1)
    return np.where(np.all(total > 0, axis=-1), recall.mean(axis=-1), np.nan)


def _chunks(n: int) -> Iterator[int]:
    done = 0
    while done < n:
        step = min(_CHUNK, n - done)
        yield step
        done += step


def bootstrap_balanced_accuracy(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    index: SubjectIndex | None = None,
) -> np.ndarray:
    """Cluster-bootstrap replicates of balanced accuracy from fixed out-of-fold predictions."""
    index = index or SubjectIndex(groups)
    classes, y_codes = np.unique(y_true, return_inverse=True)
    onehot = np.eye(classes.size)[y_codes.reshape(-1)]
    hit = (np.asarray(y_true) == np.asarray(y_pred))[:, None] * onehot
    total_s = index.per_subject(onehot)
    correct_s = index.per_subject(hit)
    return _weighted_replicates(
        index, n_boot, seed, lambda w: balanced_accuracy_from_counts(w @ correct_s, w @ total_s)
    )


def bootstrap_mae(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    index: SubjectIndex | None = None,
) -> np.ndarray:
    """Cluster-bootstrap replicates of the mean absolute error (row-weighted, as the point estimate)."""
    index = index or SubjectIndex(groups)
    err_s = index.per_subject(np.abs(np.asarray(y_true, float) - np.asarray(y_pred, float)))
    rows_s = index.sizes.astype(float)
    return _weighted_replicates(index, n_boot, seed, lambda w: (w @ err_s) / (w @ rows_s))


def bootstrap_correlation(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    index: SubjectIndex | None = None,
) -> np.ndarray:
    """Cluster-bootstrap replicates of the rows' Pearson correlation of prediction and label (NaN where a
    resample leaves either constant): a continuous probe's effect, first order in it where an MAE gain is
    second order. Centred first, so that large values (ages, 1M rows) lose no precision in the sums."""
    index = index or SubjectIndex(groups)
    y, p = (np.asarray(v, dtype=float) for v in (y_true, y_pred))
    y, p = y - y.mean(), p - p.mean()
    sums = index.per_subject(np.stack([np.ones_like(y), y, p, y * y, p * p, y * p], axis=1))

    def correlation(w: np.ndarray) -> np.ndarray:
        n, sy, sp, syy, spp, syp = (w @ sums).T
        var_y, var_p = syy - sy * sy / n, spp - sp * sp / n
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (syp - sy * sp / n) / np.sqrt(var_y * var_p)
        return np.where((var_y > 1e-12 * n) & (var_p > 1e-12 * n), r, np.nan)

    return _weighted_replicates(index, n_boot, seed, correlation)


def _weighted_replicates(
    index: SubjectIndex, n_boot: int, seed: int, statistic: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """`statistic(w)` on chunks of subject-resample weight rows (w: (chunk, n_subjects) counts), so metrics
    with per-subject sufficient statistics bootstrap as matrix products without materialising resamples."""
    rng = np.random.default_rng(seed)
    out = [statistic(index.weights(step, rng)) for step in _chunks(n_boot)]
    return np.concatenate(out) if out else np.empty(0)


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], float | np.ndarray],
    groups: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    index: SubjectIndex | None = None,
) -> np.ndarray:
    """Generic cluster bootstrap: `statistic(rows)` evaluated on `n_boot` subject resamples.

    For metrics without sufficient statistics (AUC, ECE, fairness gaps); the statistic receives the row
    indices of the resample and returns a number or a fixed-length vector.
    """
    index = index or SubjectIndex(groups)
    rng = np.random.default_rng(seed)
    return np.asarray([statistic(index.resample_rows(rng)) for _ in range(n_boot)], dtype=float)


class SubjectPermuter:
    """Permutations of a label that respect subjects, the exchangeable units under "no association".

    * A label constant within each subject (site, sex) is shuffled *between subjects*: each subject keeps one
      label for all its rows. Under the null (a subject's images say nothing about its label) every such
      shuffle is equally likely, so the test is exact when the label is unrelated to how many images a
      subject has, and conservative when it is (larger subjects all positive, say).
    * A label that varies within a subject (view, age at each visit) is permuted in two exchangeable ways at
      once: every subject receives the labels of another subject *with the same number of rows* (so the
      label's distribution stays exactly as observed), in a random order over its own images (images of
      one subject are exchangeable under the null, so a label tied to the image's position, such as "first
      image frontal", is still testable). A subject whose row count no other subject shares keeps its own
      labels, reordered (`n_fixed` counts them).

    When the permutations can hardly move the labels (a label that varies within one subject only while
    every subject's row count is unique, so nearly every subject is fixed), `mixing` is near 0 and the
    probes call the test untestable rather than "not distinguishable from chance".
    """

    def __init__(self, y: np.ndarray, index: SubjectIndex) -> None:
        self.index = index
        y = np.asarray(y)
        self.y = y
        self.sorted_y = y[index.order]
        self.first = self.sorted_y[index.starts]
        self.constant = bool(np.array_equal(self.sorted_y, np.repeat(self.first, index.sizes)))
        sizes = index.sizes
        self.by_size = np.argsort(sizes, kind="stable")  # subjects grouped by row count
        _, size_counts = np.unique(sizes, return_counts=True)
        self.n_fixed = 0 if self.constant else int(np.sum(size_counts == 1))
        self._row_subject = np.repeat(np.arange(index.n_subjects), sizes).astype(float)  # sorted order
        self._pos = np.arange(index.n_rows) - np.repeat(index.starts, sizes)  # row position within subject

    @property
    def scheme(self) -> str:
        if self.constant:
            return "labels shuffled between subjects (constant within subject)"
        return (
            "labels exchanged between subjects with the same number of rows and shuffled over each subject's "
            f"images (the label varies within subjects); {self.n_fixed} subject(s) with a unique row count "
            "keep their own labels, reordered"
        )

    def draw(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """`n` permuted labellings as an (n_rows, n) array in the original row order."""
        index = self.index
        S = index.n_subjects
        if self.constant:
            # (n, S): subject s receives the label of subject perm[:, s]
            perm = rng.permuted(np.broadcast_to(np.arange(S), (n, S)), axis=1)
            per_subject = self.first[perm]
            out = np.empty((index.n_rows, n), dtype=self.first.dtype)
            out[index.order] = np.repeat(per_subject, index.sizes, axis=1).T
            return out
        # Shuffle subjects within each size class: sort by (size, random key); the k-th subject of a size
        # class (in stable order) receives the labels of the k-th subject of the shuffled order ...
        sizes = index.sizes.astype(float)
        shuffled = np.argsort(sizes[None, :] * 2.0 + rng.random((n, S)), axis=1)  # keys < 1 keep sizes apart
        donor = np.empty((n, S), dtype=np.int64)
        donor[:, self.by_size] = shuffled
        row_subject = self._row_subject.astype(np.int64)
        source = index.starts[donor[:, row_subject]] + self._pos[None, :]  # (n, rows)
        # ... in a random order over its own images (subject blocks stay in place: keys < 1 per block)
        within = np.argsort(self._row_subject[None, :] + rng.random((n, index.n_rows)), axis=1)
        source = np.take_along_axis(source, within, axis=1)
        out = np.empty((index.n_rows, n), dtype=self.sorted_y.dtype)
        out[index.order] = self.sorted_y[source].T
        return out

    def mixing(self, draws: np.ndarray) -> float:
        """How far the drawn labellings (n_rows, n) move the labels: the share of rows whose label changed,
        relative to what shuffling the labels freely over all rows would change (1 = fully mixed, 0 = the
        observed labels every time)."""
        if draws.size == 0:
            return 0.0
        _, counts = np.unique(self.y, return_counts=True)
        free = 1.0 - float(np.sum((counts / counts.sum()) ** 2))
        changed = float(np.mean(draws != self.y[:, None]))
        return changed / free if free > 0 else 0.0


def permute_by_subject(y: np.ndarray, index: SubjectIndex, rng: np.random.Generator) -> np.ndarray:
    """One subject-respecting permutation of `y` (see `SubjectPermuter`)."""
    return SubjectPermuter(y, index).draw(rng, 1)[:, 0]


def normal_interval(estimate: float, replicates: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """estimate +- z * (bootstrap standard error): always holds the estimate, and may cross zero.

    Used for differences chosen after looking at the data (the largest gap between groups), whose percentile
    interval can miss the estimate itself: the resampled "largest gap" is biased upward.
    """
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2 or not np.isfinite(estimate):
        return (float("nan"), float("nan"))
    from scipy.stats import norm

    half = float(norm.ppf(0.5 + level / 2) * values.std(ddof=1))
    return (float(estimate - half), float(estimate + half))


def wilson_interval(successes: int, trials: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (good at 0 and 1, where the normal interval fails)."""
    if trials <= 0:
        return (float("nan"), float("nan"))
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    p = successes / trials
    denom = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def count_dropped(replicates: np.ndarray) -> int:
    """Replicates that gave no value (a class absent from a resample): reported beside every interval."""
    return int(np.sum(~np.isfinite(np.asarray(replicates, dtype=float))))


def auc_weighted(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (ties count one half) for each row of ``weights`` (B, n): the bootstrap without refitting.

    A resample is a vector of multiplicities; AUC is the weighted Mann-Whitney statistic, computed from one
    sort shared by all B resamples. Rows where a class has zero weight give NaN.
    """
    scores = np.asarray(scores, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    boundaries = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order]
    pos_w = np.add.reduceat(w * positive[order], boundaries, axis=1)
    neg_w = np.add.reduceat(w * ~positive[order], boundaries, axis=1)
    return auc_from_ordered_counts(pos_w, neg_w)


def auc_from_ordered_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC per row from positive and negative weights in ascending score order (m, cells); ties count one
    half. NaN where a row has no positive or no negative weight. Shared by the weighted bootstrap AUC and the
    permutation test's binned AUC."""
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def stratified_subject_weights(
    strata: np.ndarray, groups: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n) row multiplicities: subjects drawn with replacement *within each stratum* (e.g. site).

    Resampling within strata keeps every stratum's size fixed, so a cross-site cell never loses its test
    set; every statistic of one replicate is computed on the same drawn subjects, which pairs differences.
    """
    strata = np.asarray(strata)
    groups = np.asarray(groups)
    W = np.zeros((n_boot, len(groups)), dtype=np.float32)
    for stratum in np.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        subjects, codes = np.unique(groups[rows], return_inverse=True)
        draws = rng.multinomial(len(subjects), np.full(len(subjects), 1.0 / len(subjects)), size=n_boot)
        W[:, rows] = draws[:, codes.reshape(-1)]
    return W


def band(values: np.ndarray, edges: tuple[float, ...] | None = None, name: str = "") -> np.ndarray:
    """Continuous values -> band labels (object array; None where missing).

    `edges` are the inner cut points; by default `AGE_BANDS` for an attribute named as an age (`is_age_name`),
    otherwise the quartiles of the present values. Integer edges read as "40-59"; others as "0.5-<1.2".
    """
    v = np.asarray(values, dtype=float)
    present = ~np.isnan(v)
    if edges is None:
        if is_age_name(name):
            edges = AGE_BANDS
        else:
            edges = tuple(np.unique(np.quantile(v[present], [0.25, 0.5, 0.75]))) if present.any() else ()
    edges = tuple(sorted(float(e) for e in edges))
    integer = all(float(e).is_integer() for e in edges)
    labels: list[str] = []
    for i in range(len(edges) + 1):
        lo = edges[i - 1] if i > 0 else None
        hi = edges[i] if i < len(edges) else None
        if lo is None and hi is None:
            labels.append("all")
        elif lo is None:
            labels.append(f"<{hi:g}")
        elif hi is None:
            labels.append(f"{lo:g}+")
        else:
            labels.append(f"{lo:g}-{hi - 1:g}" if integer else f"{lo:g}-<{hi:g}")
    codes = np.searchsorted(np.asarray(edges), v, side="right")
    out = np.empty(len(v), dtype=object)
    out[present] = np.asarray(labels, dtype=object)[codes[present]]
    out[~present] = None
    return out
