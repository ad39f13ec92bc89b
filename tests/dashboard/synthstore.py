"""A small synthetic store for the explorer's tests and benchmark, built with the store's own array helper.

Two models with structured latents: "vae" encodes the site strongly, "dae" the site and the sex. Attributes
site / sex / age / finding / insurance; thumbnails whose brightness follows the site; a PCA map per model;
probe, fairness, cluster and control results (real `run_clusters` / `cross_site`, design-card probe and
fairness dicts written by hand with known numbers that the page tests look for).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedx.data.schema import AttributeSpec
from embedx.store.h5store import Store, write_store_from_arrays

SITES = ("north", "south", "east")
PROBE_SCORE = 0.9137  # the stored balanced accuracy the probes page must show
FAIRNESS_DPD = 0.0421


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


def probe_dicts(models: tuple[str, ...]) -> list[dict]:
    out = []
    for model in models:
        for attribute, kind, score, chance in (
            ("site", "categorical", PROBE_SCORE, 1 / 3),
            ("sex", "binary", 0.81 if model == "dae" else 0.52, 0.5),
            ("age", "continuous", 11.2, 12.0),
        ):
            out.append(
                {
                    "model": model,
                    "attribute": attribute,
                    "kind": kind,
                    "metric": "mae" if kind == "continuous" else "balanced_accuracy",
                    "score": score,
                    "ci": [score - 0.03, score + 0.03],
                    "chance": chance,
                    "p_value": 0.001,
                    "encoded": attribute != "age" and score - 0.03 > chance,
                    "n": 300,
                    "classes": {},
                }
            )
    return out


def fairness_dict(model: str) -> dict:
    return {
        "model": model,
        "target": "finding",
        "sensitive": "sex",
        "by_group": {
            "F": {
                "n": 150,
                "positives": 70,
                "tpr": 0.81,
                "fpr": 0.12,
                "auc": 0.88,
                "ci": {"tpr": [0.74, 0.88], "auc": [0.83, 0.92]},
            },
            "M": {
                "n": 150,
                "positives": 75,
                "tpr": 0.77,
                "fpr": 0.15,
                "auc": 0.85,
                "ci": {"tpr": [0.69, 0.84], "auc": [0.80, 0.90]},
            },
        },
        "demographic_parity_difference": FAIRNESS_DPD,
        "equalized_odds_difference": 0.04,
    }


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
            for probe in probe_dicts(tuple(models)):
                store.write_analysis("probes", f"{probe['model']}__{probe['attribute']}", probe)
            store.write_analysis("fairness", "dae__finding__sex", fairness_dict("dae"))
    if analyses:
        from embedx.analysis.clusters import run_clusters
        from embedx.analysis.cross_site import cross_site

        run_clusters(path, "dae", k=3, seed=seed)
        cross_site(path, "finding", "site", "dae", n_bootstrap=20, folds=3, seed=seed)
    return path
