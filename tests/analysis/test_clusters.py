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
