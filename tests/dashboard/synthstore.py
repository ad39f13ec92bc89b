"""A small synthetic store for the explorer's tests and benchmark, built with the store's own array helper.

Two models with structured latents: "vae" encodes the site strongly, "dae" the site and the sex. Attributes
site / sex / age / finding / insurance; thumbnails whose brightness follows the site; a PCA map per model;
probe, fairness, cluster and control results written by the real analysis functions (`run_probes`,
`run_fairness`, `run_clusters`, `cross_site`) with small resampling counts, so the pages are tested on
exactly what the analysis commands store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedx.data.schema import AttributeSpec
from embedx.store.h5store import Store, write_store_from_arrays

SITES = ("north", "south", "east")


def cohort(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "site": rng.choice(SITES, n, p=[0.5, 0.3, 0.2]),
            "sex": rng.choice(["F", "M"], n),
            "age": rng.normal(55, 15, n).round(1),
            "finding": rng.integers(0, 2, n).astype(float),
            "insurance": rng.choice(["public", "private"], n),
        }
    )


SCHEMA = {
    "site": AttributeSpec("site", "categorical", "acquisition"),
    "sex": AttributeSpec("sex", "binary", "demographic"),
    "age": AttributeSpec("age", "continuous", "demographic"),
    "finding": AttributeSpec("finding", "binary", "clinical"),
    "insurance": AttributeSpec("insurance", "binary", "demographic"),
}


def latents(table: pd.DataFrame, dim: int, with_sex: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (len(table), dim)).astype(np.float32)
    site_code = pd.Categorical(table["site"], categories=SITES).codes
    z[:, 0] += 4.0 * site_code
    z[:, 1] += 3.0 * (site_code == 1)
    if with_sex:
        z[:, 2] += 3.0 * (table["sex"].to_numpy() == "F")
    return z


def thumbnails(table: pd.DataFrame, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 18**2).astype(np.float32)
    base = {"north": 60.0, "south": 130.0, "east": 200.0}
    level = np.array([base[s] for s in table["site"]], dtype=np.float32)[:, None, None]
    noise = rng.normal(0, 12, (len(table), 64, 64))
    return np.clip(level * (0.4 + 0.6 * disc) + noise, 0, 255).astype(np.uint8)


def make_store(
    path: Path,
    n: int = 300,
    seed: int = 0,
    analyses: bool = True,
    dim: int = 16,
    with_thumbnails: bool = True,
) -> Path:
    """Write the synthetic store to `path`; `analyses=False` leaves /analysis empty (for the hint tests).

    `with_thumbnails=False` (the 220k benchmark) skips 0.9 GB of thumbnails; the store then serves blanks.
    """
    from sklearn.decomposition import PCA

    table = cohort(n, seed)
    models = {"vae": latents(table, dim, False, seed + 1), "dae": latents(table, dim, True, seed + 2)}
    ids = np.array([f"s{i:07d}" for i in range(n)])
    thumbs = thumbnails(table, seed) if with_thumbnails else None
    write_store_from_arrays(
        path,
        ids,
        ids,
        table,
        SCHEMA,
        models,
        thumbs,
        embedding_attrs={"vae": {"kind": "vae"}, "dae": {"kind": "dae"}},
    )
    with Store.open(path, "a") as store:
        for name, z in models.items():
            coords = PCA(n_components=2, random_state=seed).fit_transform(z).astype(np.float32)
            store.write_projection(name, "pca", coords, np.ones(n, dtype=np.int8), {"params": {"seed": seed}})
    if analyses:
        from embedx.analysis.clusters import run_clusters
        from embedx.analysis.cross_site import cross_site
        from embedx.analysis.fairness import FairnessConfig, run_fairness
        from embedx.analysis.fairness_metrics import GroupRules
        from embedx.analysis.probes import ProbeConfig, run_probes

        quick = {"folds": 3, "c_grid": (0.1, 1.0), "seed": seed}
        # 300 permutations: enough for Holm over the 6 probes to pass where the signal is real
        run_probes(
            path,
            attributes=["site", "sex", "age"],
            config=ProbeConfig(n_permutations=300, n_bootstrap=200, **quick),
        )
        run_fairness(
            path,
            "finding",
            ["sex"],
            "dae",
            config=FairnessConfig(
                probe=ProbeConfig(**quick),
                rules=GroupRules(n_bootstrap=100, n_bootstrap_auc=50, n_permutations=100),
                intersections="none",
            ),
        )
        run_clusters(path, "dae", k=3, seed=seed)
        cross_site(path, "finding", "site", "dae", n_bootstrap=20, folds=3, seed=seed)
    return path
