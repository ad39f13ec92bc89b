"""`embedx project`: maps that keep latent neighbours, stored with their parameters; new samples placed
into an existing map without moving the old points."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from embedx.cli import app
from embedx.errors import StoreError
from embedx.store.encode import encode
from embedx.store.h5store import Store, write_store_from_arrays
from embedx.store.project import project

# Bound for well-separated clusters: a map that scrambled neighbourhoods scores ~0.5.
TRUST_BOUND = 0.9


def _clusters(n: int, seed: int, dim: int = 32, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0, 4.0, (k, dim))
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.normal(0, 1.0, (n, dim))).astype(np.float32), labels


def _clustered_store(path, n=500):
    z, labels = _clusters(n, seed=0)
    ids = [f"a{i}" for i in range(n)]
    attrs = pd.DataFrame({"cluster": labels.astype(str)})
    return write_store_from_arrays(path, ids, ids, attrs, None, {"m": z})


def _add_new(path, n=40):
    z, labels = _clusters(n, seed=1)
    with Store.open(path, "a") as store:
        rows = store.add_samples(
            [f"b{i}" for i in range(n)],
            [f"b{i}" for i in range(n)],
            pd.DataFrame({"cluster": labels.astype(str)}),
        )
        store.write_latents("m", rows, z)
    return rows


def _check_placed_near_neighbours(store: Store, method: str, new_rows: np.ndarray, model: str = "m") -> None:
    z = store.latents(model)
    xy = store.projection(model, method)
    status = store.projection_status(model, method)
    ref = np.flatnonzero(status == 1)
    d_latent = ((z[new_rows, None, :] - z[None, ref, :]) ** 2).sum(-1)
    nearest = ref[d_latent.argmin(1)]
    moved = np.linalg.norm(xy[new_rows] - xy[nearest], axis=1)
    pair = np.linalg.norm(xy[ref][:, None] - xy[ref][None], axis=-1)
    median = np.median(pair[np.triu_indices(len(ref), 1)])
    assert (moved < median).all(), (moved.max(), median)
    assert np.median(moved) < 0.2 * median


def test_tsne_fit_and_transform(tmp_path):
    path = _clustered_store(tmp_path / "s.h5")
    (result,) = project(str(path), "tsne", n_jobs=1)
    assert result.trustworthiness > TRUST_BOUND
    with Store.open(path) as store:
        info = store.projection_info("m", "tsne")
        assert info["params"]["perplexity"] == 30.0 and info["params"]["initialization"] == "pca"
        assert info["params"]["negative_gradient_method"] == "bh"  # FFT from 10k points
        assert info["library"] == "openTSNE" and info["library_version"]
        assert (
            info["trustworthiness"] == pytest.approx(result.trustworthiness)
            and info["trustworthiness_k"] == 10
        )
        before = store.projection("m", "tsne")
        assert np.isfinite(before).all() and (store.projection_status("m", "tsne") == 1).all()

    new_rows = _add_new(path)
    (result,) = project(str(path), "tsne", transform_new=True, n_jobs=1)
    assert (result.n_fitted, result.n_transformed) == (500, 40)
    with Store.open(path) as store:
        after = store.projection("m", "tsne")
        np.testing.assert_array_equal(after[:500], before)  # the old map did not move
        assert (store.projection_status("m", "tsne")[new_rows] == 2).all()
        _check_placed_near_neighbours(store, "tsne", new_rows)


def test_pca_fit_transform_matches_sklearn(tmp_path):
    from sklearn.decomposition import PCA

    path = _clustered_store(tmp_path / "s.h5", n=200)
    project(str(path), "pca")
    new_rows = _add_new(path, 10)
    project(str(path), "pca", transform_new=True)
    with Store.open(path) as store:
        z = store.latents("m")
        reference = PCA(2).fit(z[:200])
        np.testing.assert_allclose(
            np.abs(store.projection("m", "pca")), np.abs(reference.transform(z)), atol=1e-3
        )
        assert (store.projection_status("m", "pca")[new_rows] == 2).all()


SKIPPED_PROBE_SCRIPT = """
import sys
import numpy as np
from embedx.store.h5store import Store
from embedx.store.project import project

path = sys.argv[1]
project(path, "tsne", n_jobs=1)
project(path + ".grown", "tsne", n_jobs=1, transform_new=True)
assert "pynndescent" not in sys.modules, "openTSNE imported pynndescent"
from openTSNE import TSNE  # the library's own run, its probe intact
with Store.open(path) as store:
    z, xy = store.latents("m"), store.projection("m", "tsne")
    params = store.projection_info("m", "tsne")["params"]
keys = ("perplexity", "initialization", "negative_gradient_method", "metric", "neighbors", "random_state",
        "n_jobs")
own = np.asarray(TSNE(n_components=2, **{k: params[k] for k in keys}).fit(z), dtype=np.float32)
np.testing.assert_array_equal(xy, own)
print("same map, no pynndescent")
"""


@pytest.mark.slow
def test_umap_fit_and_transform(tmp_path):
    path = _clustered_store(tmp_path / "s.h5", n=300)
    (result,) = project(str(path), "umap", n_neighbors=10)
    assert result.trustworthiness > TRUST_BOUND
    with Store.open(path) as store:
        assert store.projection_state("m", "umap") == {}  # nothing but coordinates and numbers is stored
    new_rows = _add_new(path, 20)
    # a crafted store: a pickle that would run code if anything unpickled it (older embedx did)
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with Store.open(path, "a") as store:
        state = store._state_group("m", "umap", create=True)
        state.create_dataset("model_pickle", data=np.void(pickle.dumps(Payload())))
    (result,) = project(str(path), "umap", transform_new=True)
    assert not marker.exists(), "a store made embedx run code"
    assert result.n_transformed == 20
    with Store.open(path) as store:
        assert store.projection_info("m", "umap")["params"]["n_neighbors"] == 10
        _check_placed_near_neighbours(store, "umap", new_rows)


def test_seeded_umap_raises_no_n_jobs_warning_and_stores_unchanged_params(tmp_path) -> None:
    """umap-learn's "n_jobs value 1 overridden to 1 by setting random_state" used to be printed on every
    seeded run (review item 14). Beside the other UMAP tests, so that numba compiles UMAP once per worker."""
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


@pytest.mark.slow
def test_unseeded_parallel_umap_is_recorded_as_unseeded_and_keeps_neighbours(tmp_path):
    path = _clustered_store(tmp_path / "s.h5", n=300)
    result = CliRunner().invoke(app, ["project", str(path), "--method", "umap", "--umap-parallel",
                                      "--jobs", "2"])
    assert result.exit_code == 0, result.output
    with Store.open(path) as store:
        info = store.projection_info("m", "umap")
        assert info["params"]["random_state"] is None and info["params"]["n_jobs"] == 2
        assert info["trustworthiness"] > TRUST_BOUND


def test_tsne_never_imports_pynndescent_and_draws_opentsnes_own_map(tmp_path):
    """openTSNE imports pynndescent just to see if it is there (a ~35 s numba compile in a fresh venv): the
    probe is skipped, for a fit and for placing new rows, and the map is the one openTSNE draws. After the
    UMAP tests on purpose: their import of pynndescent fills numba's disk cache, which the unpatched
    comparison run in the subprocess then reads (6 s instead of 24-40 s on a cold cache)."""
    import shutil
    import subprocess
    import sys

    path = _clustered_store(tmp_path / "s.h5", n=300)
    grown = tmp_path / "s.h5.grown"
    shutil.copy(path, grown)
    project(str(grown), "tsne", n_jobs=1)
    _add_new(grown)
    done = subprocess.run([sys.executable, "-c", SKIPPED_PROBE_SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "same map, no pynndescent" in done.stdout, done.stderr[-3000:]


def test_tsne_of_encoded_cohort_and_cli(cohort, vae_run, tmp_path):
    """The real path: encode the synthetic cohort, project it from the CLI, read it back with `store info`."""
    store_path = tmp_path / "s.h5"
    encode(vae_run, cohort, store_path, workers=0)
    runner = CliRunner()
    out = runner.invoke(app, ["project", str(store_path), "--method", "tsne", "--jobs", "1"])
    assert out.exit_code == 0, out.output
    with Store.open(store_path) as store:
        assert store.projection_info("vae-tiny", "tsne")["trustworthiness"] > TRUST_BOUND
    out = runner.invoke(app, ["store", "info", str(store_path), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert (
        summary["models"][0]["name"] == "vae-tiny" and summary["models"][0]["encoded"] == summary["samples"]
    )
    assert {a["name"] for a in summary["attributes"]} >= {"site", "sex", "age"}
    assert summary["projections"][0]["method"] == "tsne"
    text = runner.invoke(app, ["store", "info", str(store_path)]).output
    assert "vae-tiny" in text and "site" in text and "tsne" in text
    with pytest.raises(StoreError, match="known models: vae-tiny"):
        project(str(store_path), "pca", ["nope"])


def test_tsne_of_the_cohorts_dae_latents_keeps_neighbours_and_places_new_scans(cohort, dae_run, tmp_path):
    """The issue's known answer on real DAE latents (z_sem of the synthetic cohort): the map keeps latent
    neighbours, and scans encoded later land next to their nearest latent neighbour without a refit."""
    from embedx.data.manifest import load_manifest, write_manifest

    full = load_manifest(cohort)
    first = write_manifest(full.table.iloc[:240], cohort.parent / "m-dae-first.csv", full.schema)
    store_path = tmp_path / "dae.h5"
    encode(dae_run, first, store_path, workers=0)
    (fitted,) = project(str(store_path), "tsne", n_jobs=1)
    assert fitted.n_fitted == 240 and fitted.trustworthiness > TRUST_BOUND
    with Store.open(store_path) as store:
        model = store.models()[0]
        map_before = store.projection(model, "tsne").copy()
    encode(dae_run, cohort, store_path, workers=0)  # the cohort grew by 60 scans
    (placed,) = project(str(store_path), "tsne", transform_new=True, n_jobs=1)
    assert placed.n_transformed == 60 and placed.n_fitted == 240
    with Store.open(store_path) as store:
        np.testing.assert_array_equal(store.projection(model, "tsne")[:240], map_before)  # old points stay
        assert (store.projection_status(model, "tsne")[:240] == 1).all()
        _check_placed_near_neighbours(store, "tsne", np.arange(240, 300), model=model)


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_wide_latents_are_mapped_from_their_principal_components(method, tmp_path):
    """128-d latents, maps fitted on 20 components: neighbours kept, new rows placed through the same PCA."""
    z, labels = _clusters(500, seed=0, dim=128)
    ids = [f"a{i}" for i in range(500)]
    path = write_store_from_arrays(tmp_path / "s.h5", ids, ids, pd.DataFrame({"c": labels.astype(str)}), None,
                                   {"m": z})
    (result,) = project(str(path), method, n_jobs=1, pca_dims=20)
    assert result.trustworthiness > TRUST_BOUND  # measured against the full 128-d latents
    with Store.open(path) as store:
        assert store.projection_info("m", method)["params"]["pca_dims"] == 20
        state = store.projection_state("m", method)
        assert state["reduce_components"].shape == (20, 128) and state["reduce_mean"].shape == (128,)
    new = np.random.default_rng(5).normal(0, 1.0, (40, 128)).astype(np.float32)
    new += np.random.default_rng(123).normal(0, 4.0, (6, 128))[np.arange(40) % 6]  # the same cluster centres
    with Store.open(path, "a") as store:
        rows = store.add_samples([f"b{i}" for i in range(40)], [f"b{i}" for i in range(40)],
                                 pd.DataFrame({"c": (np.arange(40) % 6).astype(str)}))
        store.write_latents("m", rows, new)
    project(str(path), method, transform_new=True, n_jobs=1, pca_dims=20)
    with Store.open(path) as store:
        _check_placed_near_neighbours(store, method, rows)


def test_engine_cuml_without_cuml_says_what_to_install_and_writes_nothing(tmp_path, monkeypatch):
    """This machine has no cuML: `--engine cuml` stops at once, naming what to install, with the store
    untouched; an unknown engine is refused too."""
    import sys

    from embedx.errors import EmbedxError

    monkeypatch.setitem(sys.modules, "cuml", None)  # as where it is not installed, also if it ever is here
    path = _clustered_store(tmp_path / "s.h5", n=60)
    with pytest.raises(EmbedxError, match=r"RAPIDS cuML.*pip install"):
        project(str(path), "tsne", engine="cuml")
    with pytest.raises(EmbedxError, match="cpu or cuml"):
        project(str(path), "tsne", engine="gpu")
    with Store.open(path) as store:
        assert store.projections() == {}
    result = CliRunner().invoke(app, ["project", str(path), "--method", "umap", "--engine", "cuml"])
    assert isinstance(result.exception, EmbedxError) and "RAPIDS cuML" in str(result.exception)


def test_engine_cuml_map_is_stored_and_extended_on_the_cpu(tmp_path, monkeypatch):
    """The cuML path, run through a stand-in `cuml` module (cuML needs an NVIDIA GPU, which CI lacks) whose
    estimators are openTSNE / umap-learn and return cupy-like arrays: the map is stored as cuML's, with the
    parameters cuML was given, and a CPU machine without cuML places new samples into it."""
    import sys
    import types

    seen: dict[str, dict] = {}

    class _Device:  # cupy arrays come back to the host with .get()
        def __init__(self, a):
            self.a = a

        def get(self):
            return np.asarray(self.a)

    class TSNE:
        def __init__(self, **kw):
            seen["tsne"] = kw

        def fit_transform(self, X):
            import openTSNE

            fitted = openTSNE.TSNE(perplexity=seen["tsne"]["perplexity"], random_state=0, n_jobs=1).fit(X)
            return _Device(np.asarray(fitted))

    class UMAP:
        def __init__(self, **kw):
            seen["umap"] = kw

        def fit_transform(self, X):
            import umap

            fitted = umap.UMAP(n_neighbors=seen["umap"]["n_neighbors"], random_state=0).fit_transform(X)
            return _Device(fitted)

    fake = types.ModuleType("cuml")
    fake.__version__ = "99.0-standin"
    fake.manifold = types.SimpleNamespace(TSNE=TSNE, UMAP=UMAP)
    monkeypatch.setitem(sys.modules, "cuml", fake)
    monkeypatch.setitem(sys.modules, "cuml.manifold", fake.manifold)

    path = _clustered_store(tmp_path / "s.h5")
    (result,) = project(str(path), "tsne", engine="cuml", perplexity=20)
    assert result.trustworthiness > TRUST_BOUND
    assert seen["tsne"]["perplexity"] == 20 and seen["tsne"]["method"] == "fft"
    (result,) = project(str(path), "umap", engine="cuml", n_neighbors=12)
    assert result.trustworthiness > TRUST_BOUND and seen["umap"]["n_neighbors"] == 12
    with Store.open(path) as store:
        info = store.projection_info("m", "tsne")
        assert (info["library"], info["library_version"]) == ("cuML", "99.0-standin")
        assert info["params"]["engine"] == "cuml"
        before = store.projection("m", "tsne")

    monkeypatch.setitem(sys.modules, "cuml", None)  # a CPU machine extends the GPU's map
    new_rows = _add_new(path)
    (result,) = project(str(path), "tsne", transform_new=True, n_jobs=1)
    assert (result.n_fitted, result.n_transformed) == (500, 40)
    with Store.open(path) as store:
        np.testing.assert_array_equal(store.projection("m", "tsne")[:500], before)
        assert store.projection_info("m", "tsne")["library"] == "cuML"
        _check_placed_near_neighbours(store, "tsne", new_rows)


def _twins_store(path, n_fit: int = 500, n_twins: int = 100):
    """A clustered store and, appended, exact latent copies of some of its rows (their 'twins')."""
    z, labels = _clusters(n_fit, seed=0)
    # an asymmetric map (one far cluster), so a placement in a shifted frame cannot go unnoticed
    z[labels == 0] += 25.0
    twins_of = np.random.default_rng(3).choice(n_fit, n_twins, replace=False)
    ids = [f"a{i}" for i in range(n_fit + n_twins)]
    all_z = np.concatenate([z, z[twins_of]])
    attrs = pd.DataFrame({"cluster": np.concatenate([labels, labels[twins_of]]).astype(str)})
    return write_store_from_arrays(path, ids, ids, attrs, None, {"m": all_z}), twins_of


def _median_pair_distance(xy: np.ndarray) -> float:
    pair = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    return float(np.median(pair[np.triu_indices(len(xy), 1)]))


def test_tsne_places_a_copy_of_a_fitted_row_on_top_of_it(tmp_path):
    """openTSNE's transform works in a re-centred frame; a scan identical to a fitted one must land where
    that one is in the stored map, not shifted by the map's centre."""
    path, twins_of = _twins_store(tmp_path / "s.h5")
    (fitted,) = project(str(path), "tsne", n_jobs=1, fit_max=300, seed=0)
    assert (fitted.n_fitted, fitted.n_transformed) == (300, 300)
    with Store.open(path) as store:
        xy = store.projection("m", "tsne")
        status = store.projection_status("m", "tsne")
    pairs = np.stack([twins_of, 500 + np.arange(len(twins_of))], axis=1)
    split = pairs[(status[pairs] == 1).sum(axis=1) == 1]  # one of the two fitted, the other placed
    moved = np.linalg.norm(xy[split[:, 0]] - xy[split[:, 1]], axis=1)
    # the same latent, so the same neighbours, so (nearly) the same place
    assert len(split) >= 25
    assert np.median(moved) < 0.05 * _median_pair_distance(xy[status == 1]), np.median(moved)


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_above_fit_max_the_map_is_fitted_on_a_sample_and_the_rest_placed(method, tmp_path, monkeypatch):
    """A cohort larger than --fit-max: a seeded sample is fitted (status 1), every other row placed into
    that map (status 2) next to its latent neighbours, the whole map keeping neighbourhoods; UMAP's
    placement uses the approximate (Annoy) index above EXACT_NEIGHBOURS_MAX reference rows."""
    import embedx.store.project as project_module

    monkeypatch.setattr(project_module, "EXACT_NEIGHBOURS_MAX", 100)  # the approximate path at test size
    z, labels = _clusters(700, seed=0)
    ids = [f"a{i}" for i in range(700)]
    path = write_store_from_arrays(tmp_path / "s.h5", ids, ids, pd.DataFrame({"c": labels.astype(str)}), None,
                                   {"m": z})
    (result,) = project(str(path), method, n_jobs=1, fit_max=300, seed=1)
    assert (result.n_fitted, result.n_transformed) == (300, 400)
    assert result.trustworthiness > TRUST_BOUND  # over fitted and placed rows alike
    with Store.open(path) as store:
        info = store.projection_info("m", method)
        assert min(info["trustworthiness_fitted"], info["trustworthiness_placed"]) > TRUST_BOUND
        status = store.projection_status("m", method)
        assert np.isfinite(store.projection("m", method)).all()
        assert store.projection_info("m", method)["params"]["fit_max"] == 300
        _check_placed_near_neighbours(store, method, np.flatnonzero(status == 2))
    if method == "tsne":  # the sample is seeded (UMAP's second fit would only add time); the CLI says both
        out = CliRunner().invoke(app, ["project", str(path), "--method", "tsne", "--fit-max", "300", "--jobs",
                                       "1", "--seed", "1"])
        assert out.exit_code == 0, out.output
        text = " ".join(out.output.split())  # the console wraps lines
        assert "300 fitted, 400 placed by transform" in text and "(fitted 0.9" in text
        with Store.open(path) as store:
            np.testing.assert_array_equal(store.projection_status("m", method), status)
    with pytest.raises(Exception, match="--fit-max"):
        project(str(path), method, fit_max=3)
    (tiny,) = project(str(path), method, n_jobs=1, fit_max=8)  # neighbours and perplexity fit 8 points
    assert (tiny.n_fitted, tiny.n_transformed) == (8, 692)
    assert tiny.params.get("perplexity", 2.4) < 8 / 3 and tiny.params.get("n_neighbors", 7) <= 7
