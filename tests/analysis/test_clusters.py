"""Clusters on latents with planted structure: each cluster must be explained by the planted attribute."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.analysis.clusters import cluster_latents, describe_clusters, run_clusters
from embedx.data.schema import AttributeSpec
from embedx.store.h5store import Store, write_store_from_arrays

SITES = ("north", "south", "east")
SCHEMA = {
    "site": AttributeSpec("site", "categorical", "acquisition"),
    "sex": AttributeSpec("sex", "binary", "demographic"),
    "age": AttributeSpec("age", "continuous", "demographic"),
}


def planted(n: int = 450, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """32-d latents: each site shifts its own 3 dimensions by 6 sd; sex and age are independent noise."""
    rng = np.random.default_rng(seed)
    site_idx = rng.integers(0, len(SITES), n)
    z = rng.normal(size=(n, 32))
    for k in range(len(SITES)):
        z[site_idx == k, 3 * k : 3 * k + 3] += 6.0
    attrs = pd.DataFrame(
        {"site": np.array(SITES)[site_idx], "sex": rng.choice(["F", "M"], n), "age": rng.normal(60, 10, n)}
    )
    return z.astype(np.float32), attrs


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_planted_clusters_are_named_after_the_site(method: str) -> None:
    z, attrs = planted()
    clustering = cluster_latents(z, method, seed=0)
    clusters = describe_clusters(clustering, attrs, SCHEMA, np.array([f"s{i}" for i in range(len(z))]))
    real = [c for c in clusters if c["id"] >= 0]
    assert len(real) == 3
    named_sites = []
    for c in real:
        assert c["top_attribute"] == "site"
        assert c["name"].startswith("site=")
        assert "sex=" not in c["name"]  # an independent attribute must not be called enriched
        top = c["enriched"][0]
        assert top["attribute"] == "site" and top["q_value"] < 1e-6
        assert c["attributes"][0]["attribute"] == "site" and c["attributes"][0]["cramers_v"] > 0.9
        named_sites.append(top["value"])
        assert len(c["representatives"]) == 8
    assert sorted(named_sites) == sorted(SITES)  # one cluster per site


def test_k_is_chosen_by_silhouette_and_results_reach_the_store(tmp_path) -> None:
    z, attrs = planted(seed=1)
    path = write_store_from_arrays(
        tmp_path / "s.h5",
        [f"id{i}" for i in range(len(z))],
        [f"p{i}" for i in range(len(z))],
        attrs,
        SCHEMA,
        {"vae": z},
    )
    result = run_clusters(path, "vae", seed=0)
    assert result["params"]["k"] == 3 and result["n_clusters"] == 3
    assert len(result["labels"]) == len(z)
    with Store.open(path) as store:
        stored = store.read_analysis("clusters", "vae")
    assert stored["n_clusters"] == 3
    assert {c["top_attribute"] for c in stored["clusters"]} == {"site"}
    # Representatives are real store sample ids of members of their cluster.
    labels = np.asarray(stored["labels"])
    for c in stored["clusters"]:
        assert (labels[c["representative_rows"]] == c["id"]).all()


def test_reduce_above_the_fit_cap_matches_the_exact_pca(monkeypatch) -> None:
    """Above PCA_FIT_MAX rows the PCA is fitted on a sample and rows are projected in chunks (a million rows
    no longer take 16 GB): the components found are the exact ones, to rounding, and every row is mapped."""
    from embedx.analysis import clusters

    rng = np.random.default_rng(0)
    n, d = 3000, 40
    z = (rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d)).astype(np.float32)
    # two planted directions of clearly different strength, so the leading components are well defined
    z[:, 0:4] += 3.0 * rng.integers(0, 4, (n, 1)) * rng.uniform(0.5, 3, 4).astype(np.float32)
    z[:, 4:7] += 1.5 * rng.integers(0, 3, (n, 1)) * rng.uniform(0.5, 3, 3).astype(np.float32)
    exact = clusters.reduce(z, 3, seed=0)
    mean, std = clusters._column_moments(z)
    np.testing.assert_allclose(mean, z.astype(np.float64).mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(std, z.astype(np.float64).std(axis=0), rtol=1e-9)
    monkeypatch.setattr(clusters, "PCA_FIT_MAX", 1000)
    monkeypatch.setattr(clusters, "CHUNK", 256)
    sampled = clusters.reduce(z, 3, seed=0)
    assert sampled.shape == exact.shape and np.isfinite(sampled).all()
    # the plane of the two planted components is the same (each sampled axis lies in the exact plane)
    lead, fitted = exact[:, :2], sampled[:, :2]
    residual = fitted - lead @ np.linalg.lstsq(lead, fitted, rcond=None)[0]
    assert (residual.var(axis=0) / fitted.var(axis=0)).max() < 0.05
    assert abs(np.corrcoef(exact[:, 0], sampled[:, 0])[0, 1]) > 0.99  # the strongest one, itself


SCANNERS = [f"s{i}" for i in range(10)]


def _null_cohort(rng: np.random.Generator, n_subjects: int = 250) -> tuple[pd.DataFrame, np.ndarray]:
    """Attributes with no link to anything (binary at 2 / 15 %, sex with missing values, a 4-level site, a
    10-level scanner, an image-level view, age at visit, a tied grade) and 1-12 images per subject."""
    subjects = np.repeat(np.arange(n_subjects), np.clip(rng.geometric(0.25, n_subjects), 1, 12))
    n = len(subjects)
    sex = rng.choice(np.array(["F", "M", None], dtype=object), n_subjects, p=[0.4, 0.4, 0.2])
    frame = pd.DataFrame({
        "rare": (rng.random(n_subjects) < 0.02).astype(float)[subjects],
        "common": (rng.random(n_subjects) < 0.15).astype(float)[subjects],
        "sex": sex[subjects],
        "site": rng.choice(["A", "B", "C", "D"], n_subjects, p=[0.6, 0.25, 0.12, 0.03])[subjects],
        "scanner": rng.choice(SCANNERS, n_subjects, p=np.r_[0.5, [0.5 / 9] * 9])[subjects],
        "view": rng.choice(["PA", "AP", "LAT"], n, p=[0.6, 0.3, 0.1]),
        "age": rng.normal(60, 12, n_subjects).round()[subjects] + (rng.random(n) < 0.3),
        "grade": rng.integers(0, 4, n_subjects).astype(float)[subjects],
    })
    return frame, subjects


NULL_SCHEMA = {
    "rare": AttributeSpec("rare", "binary", "clinical"),
    "common": AttributeSpec("common", "binary", "clinical"),
    "sex": AttributeSpec("sex", "binary", "demographic"),
    "site": AttributeSpec("site", "categorical", "acquisition"),
    "scanner": AttributeSpec("scanner", "categorical", "acquisition"),
    "view": AttributeSpec("view", "categorical", "acquisition"),
    "age": AttributeSpec("age", "continuous", "demographic"),
    "grade": AttributeSpec("grade", "continuous", "clinical"),
}


def test_the_reports_cramers_v_is_shown_only_where_the_association_passes_bh() -> None:
    """Clusters with no link to any attribute (a patient's images mostly share a cluster, as with real
    latents): the report's V column printed the top two attributes of every cluster, median V ~0.20 in a
    review's null cohorts. Gated by attribute_q (BH across clusters x attributes), few null cohorts show
    any V (measured with the review's generator at k = 12: 10 / 100 and 9 / 150 cohorts, 10 of 1,200
    cluster rows); a planted site is shown."""
    from embedx.analysis.clusters import Clustering
    from embedx.report.cluster_section import associated_attributes

    rng = np.random.default_rng(11)
    shown = []
    for _ in range(16):
        frame, subjects = _null_cohort(rng)
        own = rng.integers(0, 6, subjects.max() + 1)[subjects]
        labels = np.where(rng.random(len(subjects)) < 0.8, own, rng.integers(0, 6, len(subjects)))
        clustering = Clustering(labels, np.zeros((len(labels), 2)), "kmeans", {}, None)
        clusters = describe_clusters(
            clustering, frame, NULL_SCHEMA, np.arange(len(labels)).astype(str), groups=subjects
        )
        columns = [associated_attributes(c, 0.05) for c in clusters]
        shown.append(any(text != "none" for text in columns))
        for c in clusters:
            assert all(a["attribute_q"] >= a["attribute_p"] for a in c["attributes"] if a["attribute_p"])
    assert sum(shown) <= 2, shown

    frame, subjects = _null_cohort(rng)
    labels = np.where(frame["site"].to_numpy() == "B", 0, rng.integers(1, 4, len(subjects)))
    clustering = Clustering(labels, np.zeros((len(labels), 2)), "kmeans", {}, None)
    clusters = describe_clusters(clustering, frame, NULL_SCHEMA, np.arange(len(labels)).astype(str),
                                 groups=subjects)
    planted = next(c for c in clusters if c["id"] == 0)
    assert associated_attributes(planted, 0.05).startswith("site 1.00")
