"""Clusters on the latents, each described by what its samples share.

A map shows islands; a reviewer needs to know whether an island is a disease, a sex, or a scanner. So every
cluster gets its size, the attribute values over-represented in it (a 2x2 test per value against the rest
of the cohort, Benjamini-Hochberg across *all* clusters x values, fold enrichment, odds ratio, Cramér's V),
continuous attributes compared by Mann-Whitney / KS with the median shift, the samples nearest its
centre, and a name built from its enriched values ("site=south ×3.0 · manufacturer=VendorB ×2.9").

Clustering runs on PCA-reduced latents (distances in 512-d are dominated by noise dimensions):
k-means with k chosen by the silhouette on a sample (the default: every sample gets a cluster, it scales
to 220k with MiniBatchKMeans), or scikit-learn's HDBSCAN (density clusters, some samples left as noise
``-1``; fitted on a sample above `HDBSCAN_FIT_MAX` rows and extended to the rest by nearest neighbour).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN, KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

from embedx._version import __version__
from embedx.analysis.enrichment import CohortTests, bh_adjust, sort_rows
from embedx.analysis.typed import JsonResult
from embedx.data.schema import AttributeSpec
from embedx.errors import EmbedxError

log = logging.getLogger(__name__)

Method = Literal["kmeans", "hdbscan"]

HDBSCAN_FIT_MAX = 10_000  # HDBSCAN's cost grows ~quadratically: fit on a sample, extend by 1-NN
KMEANS_FULL_MAX = 50_000  # above this, MiniBatchKMeans for the final fit
SILHOUETTE_SAMPLE = 3_000
PCA_FIT_MAX = 250_000  # rows the standardise + PCA step is fitted on (all of them up to this)
CHUNK = 65_536  # rows standardised and projected at a time above PCA_FIT_MAX


@dataclass(frozen=True)
class ClusterSummary(JsonResult):
    """One cluster: its size, what is over-represented in it, and the samples nearest its centre."""

    id: int
    name: str
    size: int
    fraction: float
    top_attribute: str | None
    attributes: list[dict[str, Any]]
    enriched: list[dict[str, Any]]
    continuous: list[dict[str, Any]]
    tests: list[dict[str, Any]]
    representatives: list[str]
    representative_rows: list[int]


@dataclass(frozen=True)
class ClustersResult(JsonResult):
    """A clustering of one model's latents, every cluster described, and the label of every store row."""

    model: str
    method: str
    params: dict[str, Any]
    n: int
    n_clusters: int
    n_noise: int
    silhouette: float | None
    clusters: tuple[ClusterSummary, ...]
    labels: list[int]
    correction: str = "Benjamini-Hochberg across all clusters x attribute values"
    test_unit: str = (
        "one image per subject (seeded draw) for tests and odds ratios; counts and folds describe all images"
    )
    embedx_version: str = __version__


@dataclass
class Clustering:
    """Labels (-1 = noise) and the PCA space the clusters live in."""

    labels: np.ndarray
    reduced: np.ndarray
    method: str
    params: dict
    silhouette: float | None


def reduce(z: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """Standardise then PCA: so one large-variance latent unit does not decide the clusters alone.

    Above `PCA_FIT_MAX` rows the components are fitted on a seeded random sample of that many rows and
    every row is projected a chunk at a time: at a million 512-d rows, standardising and decomposing the
    whole matrix in float64 took 16 GB, while 250k rows pin the top components down to rounding."""
    n = z.shape[0]
    k = int(max(1, min(n_components, z.shape[1], n - 1)))
    if n <= PCA_FIT_MAX:
        z = np.asarray(z, dtype=np.float64)
        std = z.std(axis=0)
        z = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
        return PCA(n_components=k, random_state=seed).fit_transform(z)
    mean, std = _column_moments(z)
    scale = np.where(std > 0, std, 1.0)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=PCA_FIT_MAX, replace=False))
    pca = PCA(n_components=k, random_state=seed).fit((np.asarray(z[sample], dtype=np.float64) - mean) / scale)
    out = np.empty((n, k))
    for start in range(0, n, CHUNK):
        part = np.asarray(z[start:start + CHUNK], dtype=np.float64)
        out[start:start + CHUNK] = pca.transform((part - mean) / scale)
    return out


def _column_moments(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and (population) standard deviations in float64, a chunk of rows at a time."""
    total, squares = np.zeros(z.shape[1]), np.zeros(z.shape[1])
    for start in range(0, z.shape[0], CHUNK):
        part = np.asarray(z[start:start + CHUNK], dtype=np.float64)
        total += part.sum(axis=0)
    mean = total / z.shape[0]
    for start in range(0, z.shape[0], CHUNK):
        part = np.asarray(z[start:start + CHUNK], dtype=np.float64) - mean
        squares += (part * part).sum(axis=0)
    return mean, np.sqrt(squares / z.shape[0])


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 4) -> KMeans | MiniBatchKMeans:
    if x.shape[0] > KMEANS_FULL_MAX:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=n_init, batch_size=4096).fit(x)
    return KMeans(n_clusters=k, random_state=seed, n_init=n_init).fit(x)


def choose_k(
    x: np.ndarray, k_range: tuple[int, int], seed: int, sample: int = 5_000
) -> tuple[int, dict[int, float]]:
    """k with the best silhouette on a random sample (the silhouette is quadratic in n)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(x.shape[0], size=min(sample, x.shape[0]), replace=False)
    xs = x[idx]
    lo, hi = k_range
    hi = min(hi, xs.shape[0] - 1)
    scores: dict[int, float] = {}
    for k in range(max(2, lo), max(2, hi) + 1):
        labels = KMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(xs)
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(
            silhouette_score(xs, labels, sample_size=min(SILHOUETTE_SAMPLE, xs.shape[0]), random_state=seed)
        )
    if not scores:
        raise EmbedxError("too few distinct latent vectors to form two clusters")
    best = max(scores, key=lambda kk: scores[kk])
    return best, scores


def cluster_latents(
    z: np.ndarray,
    method: Method = "kmeans",
    *,
    k: int | None = None,
    k_range: tuple[int, int] = (2, 12),
    n_components: int = 20,
    min_cluster_size: int | None = None,
    seed: int = 0,
) -> Clustering:
    """Cluster the rows of ``z`` (no NaN rows); see the module doc for the two methods."""
    n = z.shape[0]
    if n < 10:
        raise EmbedxError(f"clustering needs at least 10 encoded samples, the store has {n}")
    if method == "kmeans":
        x = reduce(z, n_components, seed)
        scores: dict[int, float] = {}
        if k is None:
            k, scores = choose_k(x, k_range, seed)
        labels = _kmeans(x, k, seed).labels_.astype(int)
        params = {
            "k": int(k),
            "k_range": list(k_range),
            "n_components": x.shape[1],
            "silhouette_by_k": {str(kk): round(v, 4) for kk, v in scores.items()},
        }
    elif method == "hdbscan":
        x = reduce(z, min(n_components, 10), seed)
        mcs = int(min_cluster_size or max(10, n // 50))
        rng = np.random.default_rng(seed)
        fit_idx = (
            np.sort(rng.choice(n, size=HDBSCAN_FIT_MAX, replace=False))
            if n > HDBSCAN_FIT_MAX
            else np.arange(n)
        )
        mcs_fit = max(5, round(mcs * len(fit_idx) / n))
        fit_labels = HDBSCAN(min_cluster_size=mcs_fit, copy=True).fit_predict(x[fit_idx]).astype(int)
        labels = np.full(n, -1, dtype=int)
        labels[fit_idx] = fit_labels
        if len(fit_idx) < n:
            rest = np.setdiff1d(np.arange(n), fit_idx)
            nn = NearestNeighbors(n_neighbors=1).fit(x[fit_idx])
            labels[rest] = fit_labels[nn.kneighbors(x[rest], return_distance=False)[:, 0]]
        params = {"min_cluster_size": mcs, "n_components": x.shape[1], "fit_sample": len(fit_idx)}
    else:
        raise EmbedxError(f"unknown clustering method {method!r} (kmeans or hdbscan)")
    clustered = labels >= 0
    silhouette = None
    if len(np.unique(labels[clustered])) >= 2:
        silhouette = float(
            silhouette_score(
                x[clustered],
                labels[clustered],
                sample_size=min(SILHOUETTE_SAMPLE, int(clustered.sum())),
                random_state=seed,
            )
        )
    return Clustering(labels=labels, reduced=x, method=method, params=params, silhouette=silhouette)


def _term(attribute: str, rows: pd.DataFrame) -> str:
    """'site=south ×3.0', or 'site=east|north ×2.1' when several values of one attribute mark the cluster.

    Values join when each is at least twice as common inside as outside (at most three, most frequent
    first); the fold is then that of the joined values. A value found nowhere else reads '(only here, 55%)'.
    """
    strong = rows[rows["fold"] >= 2.0].sort_values("pct_selected", ascending=False).head(3)
    chosen = (
        strong if len(strong) > 1 else rows.sort_values(["fold", "pct_selected"], ascending=False).head(1)
    )
    values = "|".join(str(v) for v in chosen["value"])
    inside, outside = float(chosen["pct_selected"].sum()), float(chosen["pct_rest"].sum())
    if outside > 0:
        return f"{attribute}={values} ×{inside / outside:.1f}"
    return f"{attribute}={values} (only here, {inside:.0%})"


def _name(cluster_id: int, categorical: pd.DataFrame, continuous: pd.DataFrame, max_terms: int = 2) -> str:
    """Name from the enriched values: one term per attribute, strongest association (Cramér's V) first."""
    terms: list[str] = []
    if not categorical.empty:
        order = categorical.groupby("attribute")["cramers_v"].max().sort_values(ascending=False)
        for attribute in order.index[:max_terms]:
            terms.append(_term(str(attribute), categorical[categorical["attribute"] == attribute]))
    if len(terms) < max_terms and not continuous.empty:
        for row in (
            continuous.sort_values("cramers_v", ascending=False).head(max_terms - len(terms)).itertuples()
        ):
            arrow = "↑" if row.median_shift > 0 else "↓"
            terms.append(
                f"{row.attribute}{arrow} (median {row.median_selected:.3g} vs {row.median_rest:.3g})"
            )
    if not terms:
        return f"cluster {cluster_id} (no enriched attribute)"
    return " · ".join(terms)


def _records(frame: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-safe dicts (NaN -> None) for the store and report.json."""
    out = []
    for record in frame.to_dict(orient="records"):
        clean = {}
        for key, value in record.items():
            if isinstance(value, (float, np.floating)):
                clean[key] = None if not np.isfinite(value) else float(value)
            elif isinstance(value, (np.integer,)):
                clean[key] = int(value)
            elif isinstance(value, (np.bool_,)):
                clean[key] = bool(value)
            else:
                clean[key] = value
        out.append(clean)
    return out


def describe_clusters(
    clustering: Clustering,
    attributes: pd.DataFrame,
    schema: Mapping[str, AttributeSpec] | None,
    sample_ids: np.ndarray,
    *,
    alpha: float = 0.05,
    min_fold: float = 1.2,
    n_representatives: int = 8,
    groups: np.ndarray | None = None,
) -> list[ClusterSummary]:
    """Per cluster: size, enrichment (BH across all clusters x values), Cramér's V, representatives, name.

    ``groups`` (subject ids) makes the tests subject-level (one image per subject), as a patient's images
    tend to share a cluster; see `embedx.analysis.enrichment`.
    """
    labels = clustering.labels
    ids = sorted(int(c) for c in np.unique(labels) if c >= 0)
    if (labels < 0).any():
        ids.append(-1)
    frames = []
    tests = CohortTests(attributes, schema, groups=groups)  # coded, ranked and drawn once for every cluster
    for cid in ids:
        table = tests.table(labels == cid, correct=False)
        table.insert(0, "cluster", cid)
        frames.append(table)
    pooled = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not pooled.empty:
        pooled["q_value"] = bh_adjust(pooled["p_value"].to_numpy())
        pooled["significant"] = (pooled["q_value"] < alpha).fillna(False).astype(bool)
    out = []
    for cid in ids:
        member = labels == cid
        rows = pooled[pooled["cluster"] == cid].drop(columns="cluster") if not pooled.empty else pooled
        rows = sort_rows(rows)
        sig = rows.loc[rows["significant"].astype(bool).to_numpy()]
        enriched = sig.loc[
            (
                (sig["kind"] != "continuous") & (sig["direction"] == "over") & (sig["fold"] >= min_fold)
            ).to_numpy()
        ]
        continuous = sig.loc[(sig["kind"] == "continuous").to_numpy()]
        attr_v = rows.drop_duplicates("attribute")[
            ["attribute", "kind", "cramers_v", "attribute_p"]
        ].sort_values("cramers_v", ascending=False)
        members = np.flatnonzero(member)
        centre = clustering.reduced[members].mean(axis=0)
        dist = np.linalg.norm(clustering.reduced[members] - centre, axis=1)
        reps = members[np.argsort(dist)[:n_representatives]]
        top = enriched.sort_values("cramers_v", ascending=False)
        out.append(
            ClusterSummary(
                id=cid,
                name="noise (not clustered)" if cid < 0 else _name(cid, enriched, continuous),
                size=int(member.sum()),
                fraction=float(member.mean()),
                top_attribute=None if top.empty else str(top.iloc[0]["attribute"]),
                attributes=_records(attr_v),
                enriched=_records(enriched),
                continuous=_records(rows.loc[(rows["kind"] == "continuous").to_numpy()]),
                tests=_records(rows),
                representatives=[str(sample_ids[i]) for i in reps],
                representative_rows=[int(i) for i in reps],
            )
        )
    return out


def resolve_model(models: list[str], model: str | None, store_path: str | Path) -> str:
    if not models:
        raise EmbedxError(f"{store_path}: the store holds no embeddings yet (run `embedx encode` first)")
    if model is None:
        return models[0]
    if model not in models:
        raise EmbedxError(f"{store_path}: no model named {model!r}; the store has {', '.join(models)}")
    return model


def run_clusters(
    store_path: str | Path,
    model: str | None = None,
    *,
    method: Method = "kmeans",
    k: int | None = None,
    min_cluster_size: int | None = None,
    seed: int = 0,
    alpha: float = 0.05,
    write: bool = True,
) -> ClustersResult:
    """Cluster one model's latents, describe every cluster, and write `/analysis/clusters/<model>`.

    Returns the payload: model, method, params, n, n_clusters, n_noise, silhouette, clusters (see
    `describe_clusters`) and ``labels`` (one int per store row, -2 for rows that the model did not encode).
    """
    from embedx.store.h5store import Store

    with Store.open(store_path, "r") as store:
        model = resolve_model(store.models(), model, store_path)
        z = store.latents(model)
        mask = store.encoded_mask(model)
        attributes = store.attributes()
        schema = store.schema()
        sample_ids = np.asarray(store.sample_ids).astype(str)
        subject_ids = np.asarray(store.subject_ids).astype(str)
    rows = np.flatnonzero(mask)
    encoded = z if len(rows) == len(z) else z[rows]  # no 2 GB copy of a million fully encoded rows
    clustering = cluster_latents(encoded, method, k=k, min_cluster_size=min_cluster_size, seed=seed)
    clusters = describe_clusters(
        clustering,
        attributes.iloc[rows].reset_index(drop=True),
        schema,
        sample_ids[rows],
        alpha=alpha,
        groups=subject_ids[rows],
    )
    clusters = [
        c.replace(representative_rows=[int(rows[i]) for i in c.representative_rows]) for c in clusters
    ]
    labels = np.full(len(mask), -2, dtype=int)
    labels[rows] = clustering.labels
    payload = ClustersResult(
        model=model,
        method=method,
        params=clustering.params | {"seed": seed, "alpha": alpha},
        n=len(rows),
        n_clusters=len([c for c in clusters if c.id >= 0]),
        n_noise=int((clustering.labels < 0).sum()),
        silhouette=clustering.silhouette,
        clusters=tuple(clusters),
        labels=labels.tolist(),
    )
    if write:
        with Store.open(store_path, "a") as store:
            store.write_analysis("clusters", model, payload.to_dict())
    return payload
