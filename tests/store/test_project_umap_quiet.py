"""A seeded `project --method umap` says nothing about threads: umap-learn's "n_jobs value 1 overridden to
1 by setting random_state" used to be printed on every run (review item 14)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from embedx.store.h5store import Store, write_store_from_arrays
from embedx.store.project import project


def test_seeded_umap_raises_no_n_jobs_warning_and_stores_unchanged_params(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = (rng.integers(0, 3, 120)[:, None] * 5.0 + rng.normal(size=(120, 8))).astype(np.float32)
    ids = [f"a{i}" for i in range(len(z))]
    attrs = pd.DataFrame(index=range(len(z)))
    path = write_store_from_arrays(tmp_path / "s.h5", ids, ids, attrs, None, {"m": z})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (result,) = project(str(path), "umap", n_neighbors=10)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "overridden to 1 by setting random_state" in m], messages
    assert np.isfinite(result.trustworthiness)
    with Store.open(path) as store:
        params = store.projection_info("m", "umap")["params"]
    assert "n_jobs" not in params and params["random_state"] == 0  # the seed, not a thread count, is recorded
