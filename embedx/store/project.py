"""`embedx project`: 2-D maps of a model's latents (openTSNE, UMAP, PCA), stored with their quality.

Every map is stored with its parameters, library versions and its trustworthiness (k = 10, on at most 5,000
sampled points, since sklearn's implementation is O(n²) in memory), so a reader can tell a faithful map from
a misleading one.

New samples (a grown cohort) can be placed into an existing map without refitting (`transform_new`), so
the old points stay where users have learned them:
- t-SNE: the fitted rows are kept as status 1; the reference `openTSNE.TSNEEmbedding` is rebuilt from the
  stored coordinates and the stored latents of those rows (affinities recomputed with the same perplexity
  and seed) and `transform` optimises only the new points against the fixed map. Nothing opaque is
  stored, at the cost of recomputing the reference kNN graph (seconds at 50k).
- UMAP: nothing but numbers is stored (a shared store must never run code, so the fitted `umap.UMAP` object
  is not pickled into it, and a `model_pickle` left by an older embedx is never read). New points are placed
  the way UMAP's own `transform` starts: at the membership-weighted mean of the map positions of their
  `n_neighbors` nearest fitted rows in latent space (weights exp(-(d - d_nearest) / sigma), sigma the mean
  neighbour distance above the nearest), from the stored latents and coordinates alone.
- PCA: components and mean are stored as arrays.
Placed points get status 2 in `/projection_state/<model>/<method>/status` so that plots can flag them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np

from embedx.errors import EmbedxError, StoreError
from embedx.store.h5store import (
    PROJECTION_METHODS,
    STATUS_FITTED,
    STATUS_NONE,
    STATUS_TRANSFORMED,
    Store,
    now_iso,
)
from embedx.store.opentsne_probe import without_pynndescent_probe

log = logging.getLogger(__name__)

TRUST_K = 10
TRUST_MAX_N = 5000
FFT_FROM = 10_000  # openTSNE's own switch point: Barnes-Hut below, FFT-accelerated gradients from here
PCA_DIMS = 50  # t-SNE / UMAP run on the first 50 principal components of wider latents (the usual recipe)
# Above this many rows a t-SNE / UMAP map is fitted on a seeded sample of this size and the other rows are
# placed into it (status 2): t-SNE of 1M rows takes over an hour on 2 cores, of 250k about 7 minutes.
FIT_MAX = 250_000
# Reference sets above this size are searched with an approximate index (Annoy) when placing points:
# an exact search of 750k new rows against 250k fitted ones is ~10^13 flops.
EXACT_NEIGHBOURS_MAX = 50_000
PLACE_CHUNK = 100_000  # rows reduced and placed per step, so a million rows never exist twice in float32


@dataclass
class ProjectionResult:
    model: str
    method: str
    n_fitted: int
    n_transformed: int
    trustworthiness: float
    seconds: float
    params: dict[str, Any]
    trustworthiness_by_status: dict[str, float] = field(default_factory=dict)  # fitted / placed, when both


def trustworthiness_sample(X: np.ndarray, Y: np.ndarray, seed: int = 0, k: int = TRUST_K,
                           max_n: int = TRUST_MAX_N) -> tuple[float, int, int]:
    """sklearn's trustworthiness on a seeded subsample; returns (score, k used, n used)."""
    from sklearn.manifold import trustworthiness

    n = X.shape[0]
    if n < 4:
        return float("nan"), 0, n
    idx = np.arange(n)
    if n > max_n:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_n, replace=False))
    k = int(min(k, (idx.size - 1) // 2))
    return float(trustworthiness(X[idx], Y[idx], n_neighbors=k)), k, int(idx.size)


def _trustworthiness_of_rows(Z: np.ndarray, coords: np.ndarray, rows: np.ndarray, seed: int,
                             ) -> tuple[float, int, int]:
    """trustworthiness_sample of `rows`, sampled before indexing: a million rows are never copied whole."""
    if rows.size > TRUST_MAX_N:
        rows = np.sort(np.random.default_rng(seed).choice(rows, TRUST_MAX_N, replace=False))
    return trustworthiness_sample(Z[rows], coords[rows], seed=seed)


def _tsne_params(n: int, perplexity: float, seed: int, n_jobs: int) -> dict[str, Any]:
    return {
        "perplexity": float(min(perplexity, max(1.0, (n - 1) / 3.0))),
        "initialization": "pca",
        "negative_gradient_method": "fft" if n >= FFT_FROM else "bh",
        "metric": "euclidean",
        "neighbors": "auto",
        "random_state": seed,
        "n_jobs": n_jobs,
    }


def _fit(method: str, X: np.ndarray, params: dict[str, Any], X_new: np.ndarray | None = None,
         ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """(map of X, state to store, X_new placed into that map or None).

    A t-SNE fitted here places X_new with its own affinity index, which saves rebuilding the reference's
    neighbour graph (about two minutes at 250k rows) that `transform_new` has to do later.
    """
    coords, state, embedding = _fit_only(method, X, params)
    if X_new is None:
        return coords, state, None
    if embedding is not None:
        return coords, state, _place_tsne(embedding, X_new)
    return coords, state, _transform(method, X, coords, X_new, params, state)


def _place_tsne(reference: Any, X_new: np.ndarray) -> np.ndarray:
    """openTSNE's transform of X_new into `reference`, in the reference's frame.

    openTSNE first centres the reference on its bounding box, in place, and returns the new points in that
    centred frame: they are shifted back into the stored map's frame.
    """
    centre = (np.max(reference, axis=0) + np.min(reference, axis=0)) / 2
    return (np.asarray(reference.transform(X_new), dtype=np.float64) + centre).astype(np.float32)


def _fit_only(method: str, X: np.ndarray, params: dict[str, Any],
              ) -> tuple[np.ndarray, dict[str, np.ndarray], Any]:
    engine = params.get("engine", "cpu")
    params = {k: v for k, v in params.items() if k not in ("pca_dims", "engine", "fit_max")}  # ours
    if engine == "cuml" and method != "pca":
        from embedx.store.project_gpu import fit_cuml

        return fit_cuml(method, X, params), {}, None
    if method == "tsne":
        from openTSNE import TSNE

        with without_pynndescent_probe():
            embedding = TSNE(n_components=2, verbose=False, **params).fit(X)
        return np.array(embedding, dtype=np.float32), {}, embedding
    if method == "umap":
        import umap

        if params.get("random_state") is not None:
            # a seeded UMAP runs on one thread anyway; saying so up front spares umap-learn's warning
            # "n_jobs value 1 overridden to 1 by setting random_state" on every seeded run
            params.setdefault("n_jobs", 1)
        reducer = umap.UMAP(n_components=2, **params)
        coords = reducer.fit_transform(X)
        return np.asarray(coords, dtype=np.float32), {}, None
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=params["random_state"]).fit(X)
    coords = pca.transform(X)
    return np.asarray(coords, dtype=np.float32), {
        "components": pca.components_.astype(np.float64), "mean": pca.mean_.astype(np.float64),
        "explained_variance_ratio": pca.explained_variance_ratio_.astype(np.float64),
    }, None


def _fit_reduction(X: np.ndarray, dims: int, seed: int) -> dict[str, np.ndarray]:
    """PCA to `dims` components, kept as plain arrays in the projection state (no pickle)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit(X)
    return {"reduce_components": pca.components_.astype(np.float32),
            "reduce_mean": pca.mean_.astype(np.float32)}


def _reducer(state: dict[str, np.ndarray]) -> Any:
    """The map's input from latents: their principal components if the map was fitted on them."""
    if "reduce_components" not in state:
        return lambda X: X
    components, mean = state["reduce_components"], state["reduce_mean"]
    return lambda X: ((np.asarray(X, dtype=np.float32) - mean) @ components.T).astype(np.float32)


def _transform(method: str, X_ref: np.ndarray, Y_ref: np.ndarray, X_new: np.ndarray, params: dict[str, Any],
               state: dict[str, np.ndarray]) -> np.ndarray:
    if method == "tsne":
        from openTSNE import TSNEEmbedding
        from openTSNE.affinity import PerplexityBasedNN

        with without_pynndescent_probe():
            affinities = PerplexityBasedNN(
                X_ref, perplexity=params["perplexity"], method=params.get("neighbors", "auto"),
                metric=params.get("metric", "euclidean"), n_jobs=params["n_jobs"],
                random_state=params["random_state"], verbose=False,
            )
        reference = TSNEEmbedding(
            Y_ref.astype(np.float64), affinities, negative_gradient_method=params["negative_gradient_method"],
            n_jobs=params["n_jobs"], random_state=params["random_state"],
        )
        return _place_tsne(reference, X_new)
    if method == "umap":
        return place_by_neighbours(X_ref, Y_ref, X_new, int(params.get("n_neighbors", 15)),
                                   seed=params.get("random_state") or 0)
    return ((X_new - state["mean"]) @ state["components"].T).astype(np.float32)


def place_by_neighbours(X_ref: np.ndarray, Y_ref: np.ndarray, X_new: np.ndarray, k: int,
                        seed: int = 0) -> np.ndarray:
    """New points at the membership-weighted mean map position of their k nearest reference rows.

    The neighbours are exact up to EXACT_NEIGHBOURS_MAX reference rows, and above it come from an Annoy
    index (the one openTSNE builds its own neighbour graphs with): no JIT compilation, and 750k rows
    placed against 250k in about two minutes on 2 cores.
    """
    k = int(max(1, min(k, len(X_ref))))
    if len(X_ref) > EXACT_NEIGHBOURS_MAX:
        neighbours, distances = approximate_neighbours(X_ref, X_new, k, seed)
    else:
        from sklearn.neighbors import NearestNeighbors

        distances, neighbours = NearestNeighbors(n_neighbors=k).fit(X_ref).kneighbors(X_new)
    above = distances - distances[:, :1]
    sigma = np.maximum(above.mean(axis=1, keepdims=True), 1e-12)
    weights = np.exp(-above / sigma)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkc->nc", weights, Y_ref[neighbours]).astype(np.float32)


def approximate_neighbours(X_ref: np.ndarray, X_new: np.ndarray, k: int, seed: int = 0,
                           n_trees: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of the k approximate nearest reference rows of each new row, nearest first."""
    from openTSNE.dependencies.annoy import AnnoyIndex

    from embedx.parallel import map_in_threads

    index = AnnoyIndex(X_ref.shape[1], "euclidean")
    index.set_seed(int(seed))
    for i, row in enumerate(np.asarray(X_ref, dtype=np.float32)):
        index.add_item(i, row)
    index.build(n_trees, n_jobs=os.cpu_count() or 1)
    X_new = np.asarray(X_new, dtype=np.float32)

    def query(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found, dist = np.empty((rows.size, k), np.int64), np.empty((rows.size, k), np.float64)
        for j, i in enumerate(rows):
            found[j], dist[j] = index.get_nns_by_vector(X_new[i], k, include_distances=True)
        return found, dist

    parts = map_in_threads(query, np.array_split(np.arange(len(X_new)), max(1, len(X_new) // 5_000)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _library(method: str, engine: str = "cpu") -> tuple[str, str]:
    if engine == "cuml" and method != "pca":
        from embedx.store.project_gpu import cuml_version

        return "cuML", cuml_version()
    lib = {"tsne": "openTSNE", "umap": "umap-learn", "pca": "scikit-learn"}[method]
    return lib, version(lib)


def project(
    store_path: str,
    method: str = "tsne",
    models: list[str] | None = None,
    *,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    transform_new: bool = False,
    n_jobs: int | None = None,
    umap_parallel: bool = False,
    pca_dims: int = PCA_DIMS,
    engine: str = "cpu",
    fit_max: int | None = None,
) -> list[ProjectionResult]:
    """Fit (or extend, with `transform_new`) the `method` map of each model's encoded rows.

    t-SNE and UMAP of latents wider than `pca_dims` run on their first `pca_dims` principal components
    (0: on the latents themselves): the neighbour search, most of a large map's time, is then done in 50
    dimensions instead of 512, and the components carry nearly all of the neighbourhood structure. The
    map's trustworthiness is measured against the full latents all the same.

    UMAP is seeded by default, which makes umap-learn run single-threaded; `umap_parallel` drops the seed
    for all cores (measured 3.7x faster at 50k x 512 on 2 cores) at the price of a map that differs run to
    run. t-SNE is seeded and parallel either way.

    Above `fit_max` encoded rows (default FIT_MAX on the CPU, no limit with cuML; 0: no limit) t-SNE and
    UMAP are fitted on a seeded random sample of `fit_max` rows and every other row is placed into that
    map the way `transform_new` places new scans (status 2, so plots can flag them): a map of a million
    rows on a CPU in minutes instead of hours, whose trustworthiness is measured over fitted and placed
    rows alike.

    `engine="cuml"` fits t-SNE / UMAP on a GPU with RAPIDS cuML where it is installed (see project_gpu);
    PCA, the stored state and `transform_new` stay on the CPU.
    """
    if method not in PROJECTION_METHODS:
        raise EmbedxError(f"unknown projection method {method!r} (one of {', '.join(PROJECTION_METHODS)})")
    if engine not in ("cpu", "cuml"):
        raise EmbedxError(f"unknown --engine {engine!r} (cpu or cuml)")
    if engine == "cuml" and method != "pca":
        from embedx.store.project_gpu import cuml_version

        cuml_version()  # before any work: a missing cuML is said at once
    if perplexity <= 0:
        raise EmbedxError(f"--perplexity must be positive, got {perplexity}")
    if fit_max is None:
        fit_max = 0 if engine == "cuml" else FIT_MAX
    if fit_max < 0 or 0 < fit_max < 5:
        raise EmbedxError(f"--fit-max must be 0 (fit every row) or at least 5, got {fit_max}")
    n_jobs = int(n_jobs or os.cpu_count() or 1)
    results = []
    with Store.open(store_path) as store:
        names = models or store.models()
        if not names:
            raise StoreError(f"{store_path} holds no model yet; run `embedx encode` first")
        for model in names:
            store.latents(model, rows=[])  # an unknown name fails here, listing the known models
    for model in names:
        # Fit from a read-only handle; the writer lock is taken only to store the result, so probes and
        # other writers are not locked out for the minutes a large t-SNE takes.
        with Store.open(store_path) as store:
            n_read, ids_read = store.n, store.sample_ids.copy()
            result, coords, status, attrs, state = _project_one(
                store, model, method, perplexity, n_neighbors, min_dist, seed, transform_new, n_jobs,
                umap_parallel, pca_dims, engine, fit_max)
        with Store.open(store_path, "a") as store:
            if store.n < n_read or np.any(store.sample_ids[:n_read] != ids_read):
                raise StoreError(f"{store_path} changed its rows while the {method} map was computed; rerun")
            grown = store.n - n_read  # rows appended meanwhile: not in the map yet (--transform-new later)
            coords = np.concatenate([coords, np.full((grown, 2), np.nan, np.float32)])
            status = np.concatenate([status, np.zeros(grown, np.int8)])
            store.write_projection(model, method, coords, status, attrs, state)
        results.append(result)
    return results


def _project_one(store: Store, model: str, method: str, perplexity: float, n_neighbors: int, min_dist: float,
                 seed: int, transform_new: bool, n_jobs: int, umap_parallel: bool = False,
                 pca_dims: int = PCA_DIMS, engine: str = "cpu", fit_max: int = FIT_MAX,
                 ) -> tuple[ProjectionResult, np.ndarray, np.ndarray, dict[str, Any], dict | None]:
    start = time.perf_counter()
    Z = store.latents(model)  # raises with the known models listed when the name is unknown
    encoded = store.encoded_mask(model)
    existing = method in store.projections().get(model, [])
    if transform_new and existing:
        coords = store.projection(model, method).copy()
        status = store.projection_status(model, method).copy()
        info = store.projection_info(model, method)
        params = info["params"]
        new = np.flatnonzero(encoded & (status == STATUS_NONE))
        ref = np.flatnonzero(status == STATUS_FITTED)
        if new.size:
            fitted_state = store.projection_state(model, method)
            reduce = _reducer(fitted_state)
            coords[new] = _transform(method, reduce(Z[ref]), coords[ref], reduce(Z[new]), params,
                                     fitted_state)
            status[new] = STATUS_TRANSFORMED
        state = None  # keep the fitted state as it is
    else:
        if transform_new:
            log.warning("no %s map of %s yet: fitting one on all encoded rows", method, model)
        rows = np.flatnonzero(encoded)
        if rows.size < 5:
            raise StoreError(f"model {model!r} has {rows.size} encoded rows; a {method} map needs at least 5")
        fit_rows, rest = rows, rows[:0]
        if method != "pca" and fit_max and rows.size > fit_max:
            fit_rows = np.sort(np.random.default_rng(seed).choice(rows, fit_max, replace=False))
            rest = np.setdiff1d(rows, fit_rows, assume_unique=True)
        if method == "tsne":
            params = _tsne_params(fit_rows.size, perplexity, seed, n_jobs)
        elif method == "umap":
            params = {"n_neighbors": int(min(n_neighbors, fit_rows.size - 1)), "min_dist": float(min_dist),
                      "metric": "euclidean", "random_state": None if umap_parallel else seed}
            if umap_parallel:
                params["n_jobs"] = n_jobs
        else:
            params = {"random_state": seed}
        if engine == "cuml" and method != "pca":
            params["engine"] = "cuml"
        if rest.size:
            params["fit_max"] = int(fit_max)
        coords = np.full((store.n, 2), np.nan, dtype=np.float32)
        status = np.zeros(store.n, dtype=np.int8)
        X, reduction = Z[fit_rows], {}
        if method != "pca" and pca_dims and Z.shape[1] > pca_dims and fit_rows.size > pca_dims:
            reduction = _fit_reduction(X, pca_dims, seed)
            X = _reducer(reduction)(X)
            params["pca_dims"] = int(pca_dims)
        X_new = None
        if rest.size:
            log.info("%s map fitted on %d sampled rows; the other %d placed into it", method, fit_rows.size,
                     rest.size)
            reduce = _reducer(reduction)
            X_new = np.concatenate([reduce(Z[chunk]) for chunk in np.array_split(
                rest, max(1, -(-rest.size // PLACE_CHUNK)))])
        coords[fit_rows], state, placed_xy = _fit(method, X, params, X_new)
        state = {**state, **reduction}
        status[fit_rows] = STATUS_FITTED
        if rest.size:
            coords[rest], status[rest] = placed_xy, STATUS_TRANSFORMED
        del X_new, placed_xy
    if params.get("engine") == "cuml" and transform_new and existing:  # extended on the CPU: still cuML's map
        lib, lib_version = info.get("library", "cuML"), info.get("library_version", "")
    else:
        lib, lib_version = _library(method, params.get("engine", "cpu"))
    placed = np.flatnonzero(status != STATUS_NONE)
    trust, k, n_trust = _trustworthiness_of_rows(Z, coords, placed, seed)
    by_status = {}
    if (status == STATUS_FITTED).any() and (status == STATUS_TRANSFORMED).any():
        # both kinds of rows, each on its own: a placement worse than the fit shows up here
        for name, code in (("fitted", STATUS_FITTED), ("placed", STATUS_TRANSFORMED)):
            these = np.flatnonzero(status == code)
            by_status[f"trustworthiness_{name}"] = _trustworthiness_of_rows(Z, coords, these, seed)[0]
    seconds = time.perf_counter() - start
    attrs = {
        "params": params, "library": lib, "library_version": lib_version, "numpy_version": np.__version__,
        "trustworthiness": trust, "trustworthiness_k": k, "trustworthiness_n": n_trust, **by_status,
        "date": now_iso(),
        "n_fitted": int((status == STATUS_FITTED).sum()),
        "n_transformed": int((status == STATUS_TRANSFORMED).sum()),
        "seconds": round(seconds, 3),
    }
    result = ProjectionResult(model=model, method=method, n_fitted=attrs["n_fitted"],
                              n_transformed=attrs["n_transformed"], trustworthiness=trust, seconds=seconds,
                              params=params, trustworthiness_by_status=by_status)
    return result, coords, status, attrs, state
