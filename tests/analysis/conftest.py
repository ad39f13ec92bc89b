"""Shared fixtures: stores built from the synthetic known-answer cohort with a fixed, training-free encoder.

Pixel PCA stands in for a trained model here: it needs no training, takes a second, and carries whatever the
pixels carry, so a probe on it must find the injected attributes and must not find the pure labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from embedx.data.manifest import load_manifest
from embedx.data.synth import generate_cohort
from embedx.store.h5store import write_store_from_arrays


def pixel_pca_store(folder: Path, n: int, strength: float, seed: int = 0, components: int = 32) -> Path:
    manifest_path = generate_cohort("cxr", n, folder, size=32, strength=strength, seed=seed, workers=1)
    manifest = load_manifest(manifest_path)
    pixels = np.stack(
        [np.asarray(Image.open(manifest.absolute_path(i)), dtype=np.float32).ravel() for i in range(n)]
    )
    latents = PCA(n_components=components, random_state=0).fit_transform(pixels).astype(np.float32)
    table = manifest.table
    return write_store_from_arrays(
        folder / "store.h5",
        manifest.sample_ids(),
        table["subject_id"].to_numpy(),
        table[manifest.attributes],
        manifest.schema,
        {"pixels-pca": latents, "pixels-pca8": latents[:, :8]},
    )


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[float], Path]:
    """`synth_store(strength)` -> a 400-image store (cached per strength for the whole session)."""
    cache: dict[float, Path] = {}

    def make(strength: float) -> Path:
        if strength not in cache:
            folder = tmp_path_factory.mktemp(f"synth-{strength:g}")
            cache[strength] = pixel_pca_store(folder, 400, strength)
        return cache[strength]

    return make


@pytest.fixture(scope="session")
def phantom_latents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Real latents for null tests: pixel PCA of a 1,000-image phantom cohort (~490 subjects, 1-3 images)."""
    from embedx.store.h5store import Store

    path = pixel_pca_store(tmp_path_factory.mktemp("phantom-latents"), 1000, 1.0, seed=7)
    with Store.open(path) as store:
        return {
            "X": store.latents("pixels-pca"),
            "subjects": np.asarray(store.subject_ids).astype(str),
            "site": store.attributes()["site"].to_numpy(),
        }
