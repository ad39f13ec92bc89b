"""`embedx project --engine cuml`: the t-SNE and UMAP fits on a GPU with RAPIDS cuML, an optional extra.

At a million rows openTSNE and umap-learn take tens of minutes on a few CPU cores (bench/scale.py); cuML
fits the same maps in seconds to minutes on one GPU. Only the fit moves: the PCA to 50 components before
it, the stored state, the trustworthiness and `--transform-new` (openTSNE / neighbour placement against the
stored map) stay as on the CPU, so a map made on a GPU node is extended anywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedx.errors import EmbedxError

INSTALL_HINT = ("RAPIDS cuML and an NVIDIA GPU: pip install --extra-index-url=https://pypi.nvidia.com "
                "'cuml-cu12' (the wheel for your CUDA; see docs.rapids.ai/install). Without it, leave "
                "--engine out: openTSNE / umap-learn run on the CPU")


def cuml_version() -> str:
    """cuML's version; a clear error, naming what to install, where it cannot be imported or used."""
    try:
        import cuml
    except Exception as err:  # ImportError, or a CUDA library that fails to load
        raise EmbedxError(f"--engine cuml needs {INSTALL_HINT} ({type(err).__name__}: {err})") from None
    return str(getattr(cuml, "__version__", "unknown"))


def fit_cuml(method: str, X: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The 2-D map of X with cuML's estimator, from the same parameters as the CPU fit."""
    cuml_version()
    from cuml.manifold import TSNE, UMAP

    X = np.ascontiguousarray(X, dtype=np.float32)
    if method == "tsne":
        model = TSNE(n_components=2, perplexity=params["perplexity"], method="fft", metric=params["metric"],
                     random_state=params["random_state"])
    elif method == "umap":
        model = UMAP(n_components=2, n_neighbors=params["n_neighbors"], min_dist=params["min_dist"],
                     metric=params["metric"], random_state=params["random_state"])
    else:
        raise EmbedxError(f"--engine cuml fits tsne or umap, not {method}")
    coords = model.fit_transform(X)
    coords = coords.get() if hasattr(coords, "get") else np.asarray(coords)  # cupy -> numpy
    return np.asarray(coords, dtype=np.float32)
