"""Speed of the cluster / enrichment / control analyses on synthetic latents (prints one table).

    .venv/bin/python bench/controls.py            full sizes (220k enrichment, 50k clusters, 20k cross-site)
    .venv/bin/python bench/controls.py --quick    small sizes, to check that everything runs

Run on an otherwise idle machine; the goal is enrichment < 0.5 s per call at 220k rows (dashboard lasso).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pandas as pd

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")

from embedx.analysis.clusters import cluster_latents, describe_clusters
from embedx.analysis.cross_site import cross_site_arrays
from embedx.analysis.distribution import distribution_tests_arrays
from embedx.analysis.enrichment import enrichment


def cohort(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    sites = np.array(["north", "south", "east", "west"])
    site_idx = rng.integers(0, 4, n)
    finding = rng.random(n) < np.array([0.1, 0.5, 0.3, 0.7])[site_idx]
    z = rng.normal(size=(n, d)).astype(np.float32)
    z[np.arange(n), site_idx] += 2.0
    z[:, 5] += finding
    attrs = pd.DataFrame(
        {
            "site": sites[site_idx],
            "sex": rng.choice(["F", "M"], n),
            "age": rng.normal(60, 12, n),
            "view": rng.choice(["AP", "PA", "L"], n),
            "finding": finding.astype(float),
            "manufacturer": rng.choice(list("ABCDEFG"), n),
        }
    )
    groups = (np.arange(n) // 2).astype(str)
    return z, attrs, groups


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    quick = "--quick" in sys.argv
    n_enr, n_cl, n_cs, dim = (20_000, 5_000, 2_000, 64) if quick else (220_000, 50_000, 20_000, 128)
    rows = []
    z, attrs, groups = cohort(n_enr, 8)
    mask = np.random.default_rng(1).random(n_enr) < 0.1
    enrichment(attrs, mask)  # warm-up (imports, caches)
    rows.append(
        (
            "enrichment (lasso stats), 6 attributes",
            n_enr,
            np.median([timed(lambda: enrichment(attrs, mask)) for _ in range(3)]),
        )
    )
    z, attrs, groups = cohort(n_cl, dim)
    clustering = None

    def run_clusters() -> None:
        nonlocal clustering
        clustering = cluster_latents(z, "kmeans", seed=0)

    rows.append((f"k-means clusters, k by silhouette, {dim}-d", n_cl, timed(run_clusters)))
    rows.append(
        (
            "cluster enrichment + names",
            n_cl,
            timed(lambda: describe_clusters(clustering, attrs, None, np.arange(n_cl).astype(str))),
        )
    )
    ks_seconds = timed(lambda: distribution_tests_arrays(z, attrs, groups=groups))
    rows.append((f"KS tests, 10 modes, {dim}-d", n_cl, ks_seconds))
    z, attrs, groups = cohort(n_cs, dim)
    rows.append(
        (
            f"cross-site matrix + LOSO + 1000 bootstraps, {dim}-d",
            n_cs,
            timed(
                lambda: cross_site_arrays(
                    z, attrs["finding"].to_numpy() > 0, attrs["site"].to_numpy(), groups, n_bootstrap=1000
                )
            ),
        )
    )
    print(f"{'analysis':<52} {'n':>8} {'seconds':>9}")
    for name, n, sec in rows:
        print(f"{name:<52} {n:>8,} {sec:>9.2f}")


if __name__ == "__main__":
    main()
