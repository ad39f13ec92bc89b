"""Is there cluster structure in the latents beyond a Gaussian cloud? A null reference for k-means.

Why. k-means always returns k groups, and the silhouette argmax over 2..12 always picks some k: on isotropic
Gaussian latents (no islands at all) a review saw k = 2, 11 or 12 with silhouette ~0.05, printed as
"N clusters" beside names that suggest islands. The silhouette alone cannot say whether 0.05 (or 0.3) is
more than k-means carves out of a structureless cloud of the same shape: a Gaussian elongated along one
direction, split across it, scores far higher than a round one.

What. The chosen solution's k-means (same k, same number of rows as the subsample of the PCA-reduced
latents it was fitted on, same initialisations, silhouette on the same number of rows) is repeated on
`REFERENCE_DRAWS` Gaussian clouds with the subsample's covariance (its PCA spectrum): gap-statistic style,
observed against reference at the same k. Structure is found when the chosen solution beats that reference
on either of two statistics:

* silhouette: the partition's mean silhouette exceeds the reference's by `SILHOUETTE_MARGIN` (and by 3 sd
  of the reference draws);
* island: its most distinct cluster (the one with the highest mean silhouette among those holding at least
  1 % of the silhouette rows and, when subject ids are given, `ISLAND_MIN_SUBJECTS` subjects) reaches
  `ISLAND_FLOOR` and exceeds the reference's most distinct cluster by `ISLAND_MARGIN` (and 3 sd). A rare
  separated group (a 3 % scanner) barely moves the whole partition's silhouette, which is dominated by how
  the other 97 % are cut, but stands out here. The subject minimum keeps one outlying patient, whose dozen
  images sit together far from everyone (a heavy-tailed cloud has some), from counting as an island.

The margins are in silhouette units, not p-values: the reference draws vary by a few thousandths, so any
significance rule would call the mild non-Gaussianity of real latents (heavy tails, a subject effect)
"structure". Measured on simulated latents with a subject effect (300 subjects, ~1,150 images, 20 seeds
each; docs/probes-and-fairness.md has the rates): isotropic and anisotropic Gaussian clouds came within 0.01
of the reference silhouette and 0.015 of its island; heavy-tailed (t, 5 df) clouds within 0.013 and 0.09,
islands below 0.15; five separated groups beat the reference by 0.10-0.41 on the silhouette and 0.17 or
more on the island.

Cost. Each draw is one k-means fit at the chosen k on <= `CHOOSE_SAMPLE` rows (choosing k took one per k
in 2..12), never the PCA or the full fit, so the added time does not grow with the cohort. Measured on
1M x 512 float32 Gaussian latents: +0.6 s on a 15 s `cluster_latents` (choosing k: 1.9 s) on an idle
2-core machine, +2.3 s on 34 s with the cores shared. The chosen k is the argmax of the observed
silhouettes while the reference is read at that k, which favours the observed by the spread of the
silhouette across k (a few thousandths in Gaussian clouds, measured), far inside the margins; rerunning the
whole k-selection per draw would multiply the cost by 11 for that.

HDBSCAN needs no such reference: it leaves a single unimodal cloud unclustered (every sample noise; checked
on isotropic, anisotropic and t-distributed clouds of 60 to 30,000 rows), so any cluster it returns is a
density mode of its own. Its result records that as the structure verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_samples

from embedx.errors import EmbedxError

CHOOSE_SAMPLE = 5_000  # rows k-means is fitted on to choose k (and to test for structure)
SILHOUETTE_SAMPLE = 3_000  # rows of those the silhouette is computed on (it is quadratic in n)
REFERENCE_DRAWS = 5
SILHOUETTE_MARGIN = 0.05
ISLAND_MARGIN = 0.10
ISLAND_FLOOR = 0.25  # Kaufman & Rousseeuw: a mean silhouette <= 0.25 means no substantial structure
ISLAND_MIN_SHARE = 0.01
ISLAND_MIN_ROWS = 10
ISLAND_MIN_SUBJECTS = 5

NO_STRUCTURE = "no cluster structure beyond a Gaussian cloud; the groups below are arbitrary partitions of it"


@dataclass(frozen=True)
class Solution:
    """One k-selection: the chosen k, its silhouette, its most distinct cluster, every k's score."""

    k: int
    silhouette: float
    island: float  # mean silhouette of the most distinct cluster large enough to count (NaN: none is)
    scores: dict[int, float]


def sample_rows(n: int, seed: int, size: int = CHOOSE_SAMPLE) -> np.ndarray:
    """The rows k is chosen on: a seeded random sample (k-means per k and the silhouette scale with n)."""
    return np.random.default_rng(seed).choice(n, size=min(size, n), replace=False)


def _island(values: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> float:
    """Highest per-cluster mean silhouette among clusters large enough not to be a handful of outliers
    (nor, with ``groups``, one or two patients' images)."""
    least = max(ISLAND_MIN_ROWS, int(np.ceil(ISLAND_MIN_SHARE * labels.size)))
    means = []
    for c in np.unique(labels):
        member = labels == c
        if member.sum() < least:
            continue
        if groups is not None and len(np.unique(groups[member])) < ISLAND_MIN_SUBJECTS:
            continue
        means.append(float(values[member].mean()))
    return max(means) if means else float("nan")


def solve(xs: np.ndarray, ks: range | list[int], seed: int, groups: np.ndarray | None = None) -> Solution:
    """k-means for each k on ``xs``; the k with the best silhouette (on `SILHOUETTE_SAMPLE` of the rows).

    The silhouette rows are drawn as `sklearn.metrics.silhouette_score(sample_size=..., random_state=seed)`
    draws them, so the k chosen is the one that call would choose; the per-sample values are kept for the
    island statistic. ``groups``: subject id per row of ``xs`` (None: every row its own subject)."""
    rows = np.random.RandomState(seed).permutation(xs.shape[0])[: min(SILHOUETTE_SAMPLE, xs.shape[0])]
    row_groups = None if groups is None else np.asarray(groups)[rows]
    best: tuple[int, float, float] | None = None
    scores: dict[int, float] = {}
    for k in ks:
        labels = KMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(xs)[rows]
        if len(np.unique(labels)) < 2:
            continue
        values = silhouette_samples(xs[rows], labels)
        scores[k] = float(values.mean())
        if best is None or scores[k] > best[1]:
            best = (k, scores[k], _island(values, labels, row_groups))
    if best is None:
        raise EmbedxError("too few distinct latent vectors to form two clusters")
    return Solution(k=best[0], silhouette=best[1], island=best[2], scores=scores)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def _factor(cov: np.ndarray) -> np.ndarray:
    """A square root of a covariance (eigenvalues clipped at 0), so that ``normal @ factor.T`` has it."""
    eigenvalues, vectors = np.linalg.eigh(np.atleast_2d(cov))
    return vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def reference_cloud_maker(
    xs: np.ndarray, groups: np.ndarray | None
) -> Callable[[np.random.Generator], np.ndarray]:
    """``draw(rng)``: a Gaussian cloud shaped like ``xs``, with its subjects where ``groups`` has repeats.

    Without subjects (or one row each) the cloud has the covariance of ``xs``. With them it is a Gaussian
    *subject effect* plus Gaussian image scatter, in the same layout of images per subject: a cohort's
    images clump around their patient, and a pilot of 30 patients with a few images each is 30 clumps that
    k-means separates well. A plain Gaussian reference called such a pilot "cluster structure" in 10 of 10
    review cohorts whose patients formed one Gaussian cloud (/tmp/review-claims/repro_pilot_clusters.sh).
    The covariances are the method-of-moments split: within = pooled scatter around each subject's mean,
    between = covariance of the subject means less the part their own image scatter adds (clipped to be
    positive semi-definite).
    """
    if groups is not None:
        _, codes, counts = np.unique(np.asarray(groups).astype(str), return_inverse=True, return_counts=True)
        codes = codes.reshape(-1)
        n, n_subjects = xs.shape[0], counts.size
        if counts.max() > 1 and n_subjects > 1:
            means = np.zeros((n_subjects, xs.shape[1]))
            np.add.at(means, codes, xs)
            means /= counts[:, None]
            scatter = xs - means[codes]
            within = scatter.T @ scatter / max(n - n_subjects, 1)
            between = np.atleast_2d(np.cov(means, rowvar=False)) - within * float(np.mean(1.0 / counts))
            between_f, within_f = _factor(between), _factor(within)

            def draw_subjects(rng: np.random.Generator) -> np.ndarray:
                effect = rng.standard_normal((n_subjects, xs.shape[1])) @ between_f.T
                return effect[codes] + rng.standard_normal(xs.shape) @ within_f.T

            return draw_subjects
    factor = _factor(np.cov(xs, rowvar=False))

    def draw(rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(xs.shape) @ factor.T

    return draw


def gaussian_reference(
    xs: np.ndarray,
    seed: int,
    observed: Solution,
    draws: int = REFERENCE_DRAWS,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Repeat the observed solution's k-means on Gaussian clouds shaped like ``xs`` (with its subject effect
    when ``groups`` gives the subject of each row); the verdict and its numbers.

    Returns the JSON-ready record stored as ``structure_test`` (see `docs/report.md`)."""
    draw = reference_cloud_maker(xs, groups)
    rng = np.random.default_rng([seed, 0x5EED])
    reference: list[Solution] = []
    for _ in range(draws):
        cloud = draw(rng)
        try:
            reference.append(solve(cloud, [observed.k], seed, groups))
        except EmbedxError:  # a degenerate draw (a handful of rows): it has no partition to compare
            continue
    sil_mean, sil_sd = _mean_sd([r.silhouette for r in reference])
    isl_mean, isl_sd = _mean_sd([r.island for r in reference])
    by_silhouette = bool(
        np.isfinite(sil_mean) and observed.silhouette > sil_mean + max(SILHOUETTE_MARGIN, 3 * sil_sd)
    )
    by_island = bool(
        np.isfinite(observed.island)
        and np.isfinite(isl_mean)
        and observed.island >= ISLAND_FLOOR
        and observed.island > isl_mean + max(ISLAND_MARGIN, 3 * isl_sd)
    )
    criteria = [name for name, hit in (("silhouette", by_silhouette), ("island", by_island)) if hit]
    return {
        "found": bool(criteria),
        "criteria": criteria,
        "reference": "k-means at the same k on Gaussian clouds with the covariance of the subsample"
        + ("" if groups is None else ", as a subject effect plus image scatter, images per subject kept"),
        "rows": int(xs.shape[0]),
        "draws": len(reference),
        "k": observed.k,
        "silhouette": observed.silhouette,
        "reference_silhouette": sil_mean,
        "reference_silhouette_sd": sil_sd,
        "island": observed.island,
        "reference_island": isl_mean,
        "reference_island_sd": isl_sd,
        "margins": {
            "silhouette": SILHOUETTE_MARGIN,
            "island": ISLAND_MARGIN,
            "island_floor": ISLAND_FLOOR,
            "island_min_subjects": ISLAND_MIN_SUBJECTS,
        },
    }


def density_verdict(n_clusters: int) -> dict[str, Any]:
    """HDBSCAN's own verdict (see the module doc): a unimodal cloud comes back as noise, so a cluster is
    structure."""
    return {
        "found": n_clusters > 0,
        "criteria": ["density"] if n_clusters > 0 else [],
        "reference": "none needed: HDBSCAN leaves a single Gaussian cloud unclustered (all noise)",
    }


def _num(value: Any) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.2f}"


def structure_sentence(payload: Any) -> str | None:
    """The CLI / report line on the structure test, or None for a result written before the test existed
    (and for HDBSCAN clusters, which are density modes by construction)."""
    test = payload.get("structure_test")
    if not test or "reference_silhouette" not in test:
        return None
    numbers = (
        f"silhouette {_num(test.get('silhouette'))} vs {_num(test.get('reference_silhouette'))} "
        "for a Gaussian cloud of the same covariance"
    )
    if not test.get("found"):
        return f"{NO_STRUCTURE} ({numbers})"
    if "island" in (test.get("criteria") or []):
        numbers += (
            f"; most distinct cluster {_num(test.get('island'))} vs {_num(test.get('reference_island'))}"
        )
    return f"cluster structure beyond a Gaussian cloud ({numbers})"
