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
k-means partitions any cloud, so its solution is compared with the same procedure on Gaussian clouds of the
latents' covariance (`embedx.analysis.cluster_structure`); ``structure`` says whether it beat them.
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
from embedx.analysis.cluster_structure import (
    SILHOUETTE_SAMPLE,
    density_verdict,
    gaussian_reference,
    sample_rows,
    solve,
)
from embedx.analysis.enrichment import CohortTests, attribute_bh, bh_adjust, sort_rows
from embedx.analysis.typed import JsonResult
from embedx.data.schema import AttributeSpec
from embedx.errors import EmbedxError

log = logging.getLogger(__name__)

Method = Literal["kmeans", "hdbscan"]

HDBSCAN_FIT_MAX = 10_000  # HDBSCAN's cost grows ~quadratically: fit on a sample, extend by 1-NN
KMEANS_FULL_MAX = 50_000  # above this, MiniBatchKMeans for the final fit
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
    # beyond a Gaussian cloud of the latents' covariance (None: not tested); see `cluster_structure`
    structure: bool | None = None
    reference_silhouette: float | None = None
    structure_test: dict[str, Any] | None = None
    correction: str = (
        "Benjamini-Hochberg across all clusters x attribute values (q_value) and across all clusters x "
        "attributes (attribute_q)"
    )
    test_unit: str = (
        "subjects: every subject's share of its images for subject-constant categorical attributes, one "
        "drawn image per subject otherwise (tests, odds ratios, Cramér's V); counts and folds describe all "
        "images"
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
    structure: dict[str, Any] | None = None  # the Gaussian-reference verdict (`cluster_structure`)


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


def cluster_latents(
    z: np.ndarray,
    method: Method = "kmeans",
    *,
    k: int | None = None,
    k_range: tuple[int, int] = (2, 12),
    n_components: int = 20,
    min_cluster_size: int | None = None,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> Clustering:
    """Cluster the rows of ``z`` (no NaN rows); see the module doc for the two methods. ``groups`` (subject
    id per row) keeps one outlying patient's images from passing for an island in the structure test."""
    n = z.shape[0]
    if n < 10:
        raise EmbedxError(f"clustering needs at least 10 encoded samples, the store has {n}")
    structure: dict[str, Any] | None = None
    if method == "kmeans":
        x = reduce(z, n_components, seed)
        sample = sample_rows(n, seed)  # k is chosen, and tested against the Gaussian reference, on these
        xs, sample_groups = x[sample], None if groups is None else np.asarray(groups)[sample]
        lo, hi = max(2, k_range[0]), max(2, min(k_range[1], len(xs) - 1))
        ks = list(range(lo, hi + 1)) if k is None else [int(k)]
        try:
            observed = solve(xs, ks, seed, sample_groups) if max(ks) < len(xs) else None
        except EmbedxError:
            if k is None:
                raise
            observed = None  # a fixed k on degenerate latents: fitted below, nothing to test
        if observed is not None:
            structure = gaussian_reference(xs, seed, observed, groups=sample_groups)
        chosen = observed.k if observed is not None else ks[0]  # None only for a fixed k
        labels = _kmeans(x, chosen, seed).labels_.astype(int)
        params = {
            "k": chosen,
            "k_range": list(k_range),
            "n_components": x.shape[1],
            "silhouette_by_k": {
                str(kk): round(v, 4) for kk, v in (observed.scores if observed and k is None else {}).items()
            },
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
        structure = density_verdict(int((np.unique(labels) >= 0).sum()))
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
    return Clustering(
        labels=labels, reduced=x, method=method, params=params, silhouette=silhouette, structure=structure
    )


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

    ``groups`` (subject ids) makes the tests, and Cramér's V, subject-level, as a patient's images tend to
    share a cluster; see `embedx.analysis.enrichment`. Each attribute's own test is BH-corrected across all
    clusters x attributes (``attribute_q``), so a reader shows an attribute's V only where it passes.
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
        pooled["attribute_q"] = attribute_bh(pooled, ("cluster", "attribute"))  # gates the V shown
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
        attr_v = (  # one row per attribute; first non-missing V / p (a value absent from the units has none)
            rows.groupby("attribute", sort=False)[["kind", "cramers_v", "attribute_p", "attribute_q"]]
            .first()
            .reset_index()
            .sort_values("cramers_v", ascending=False)
        )
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
    clustering = cluster_latents(
        encoded, method, k=k, min_cluster_size=min_cluster_size, seed=seed, groups=subject_ids[rows]
    )
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
        structure=None if clustering.structure is None else bool(clustering.structure["found"]),
        reference_silhouette=(clustering.structure or {}).get("reference_silhouette"),
        structure_test=clustering.structure,
    )
    if write:
        with Store.open(store_path, "a") as store:
            store.write_analysis("clusters", model, payload.to_dict())
    return payload
