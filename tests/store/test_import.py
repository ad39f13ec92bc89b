"""`embedx store import`: embeddings from elsewhere become a model like any other, or are refused by row."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from embedx.analysis.probe_core import ProbeConfig
from embedx.analysis.probes import run_probes
from embedx.data.manifest import load_manifest
from embedx.errors import EmbedxError
from embedx.store.h5store import Store
from embedx.store.importer import import_embeddings
from embedx.store.pixels import encode_pixels

CFG = ProbeConfig(n_permutations=99, n_bootstrap=200, seed=0)


@pytest.fixture(scope="module")
def pixel_store(cohort, tmp_path_factory):
    path = tmp_path_factory.mktemp("import") / "s.h5"
    encode_pixels(cohort, path, size=32, pool=16, components=24, workers=0)
    return path


def _copy_store(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_an_imported_copy_probes_exactly_like_the_original(pixel_store, cohort, tmp_path) -> None:
    store_path = _copy_store(pixel_store, tmp_path / "s.h5")
    man = load_manifest(cohort)
    with Store.open(store_path) as store:
        z = store.latents("pixels")
        ids = store.sample_ids.astype(str)
        rows = store.rows_of(store.ids_for(man))
    shuffled = np.random.default_rng(0).permutation(len(ids))
    np.savez(tmp_path / "by-id.npz", embeddings=z[shuffled], sample_id=ids[shuffled])
    table = pd.DataFrame(z[rows][::-1], columns=[f"f{i}" for i in range(z.shape[1])])
    table.insert(0, "path", man.table["path"].to_numpy()[::-1])
    table.to_csv(tmp_path / "by-path.csv", index=False)
    np.save(tmp_path / "by-order.npy", z[rows])
    listed = pd.DataFrame({"path": man.table["path"], "embedding": list(z[rows])})
    listed.to_parquet(tmp_path / "list.parquet")
    with h5py.File(tmp_path / "by-id.h5", "w") as f:
        f["features"] = z[shuffled]
        f["ids"] = ids[shuffled].astype(object)

    import_embeddings(store_path, tmp_path / "by-id.npz", "from-npz")
    import_embeddings(store_path, tmp_path / "by-path.csv", "from-csv", manifest=cohort)
    import_embeddings(store_path, tmp_path / "by-order.npy", "from-npy", manifest=cohort)
    import_embeddings(store_path, tmp_path / "list.parquet", "from-parquet", manifest=cohort)
    import_embeddings(store_path, tmp_path / "by-id.h5", "from-h5")
    names = ["pixels", "from-npz", "from-csv", "from-npy", "from-parquet", "from-h5"]
    with Store.open(store_path) as store:
        for name in names[1:]:
            np.testing.assert_array_equal(store.latents(name), z)
            assert store.embedding_info(name)["kind"] == "imported"
    results = run_probes(store_path, models=names, attributes=["site", "age"], config=CFG, write=False)
    scores = {(r.model, r.attribute): (r.score, r.ci, r.p_value) for r in results}
    for name in names[1:]:
        for attribute in ("site", "age"):
            assert scores[(name, attribute)] == scores[("pixels", attribute)]


def test_mismatched_imports_are_refused_naming_the_rows(pixel_store, cohort, tmp_path) -> None:
    store_path = _copy_store(pixel_store, tmp_path / "s.h5")
    man = load_manifest(cohort)
    z = np.random.default_rng(1).normal(size=(len(man), 8)).astype(np.float32)
    paths = man.table["path"].to_numpy(dtype=object).copy()
    paths[[3, 7]] = ["images/not-here.png", "elsewhere/x.png"]
    frame = pd.DataFrame({"path": paths, **{f"f{i}": z[:, i] for i in range(8)}})
    frame.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(EmbedxError, match=r"2 of 300 row\(s\) are not in the store.*row 4 \('images/not"):
        import_embeddings(store_path, tmp_path / "a.csv", "x", manifest=cohort)
    paths = man.table["path"].to_numpy(dtype=object).copy()
    paths[10] = paths[2]
    pd.DataFrame({"path": paths, "f0": z[:, 0]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(EmbedxError, match=r"2 row\(s\) share a key with another row: row 3 .*row 11"):
        import_embeddings(store_path, tmp_path / "b.csv", "x", manifest=cohort)
    bad = z.copy()
    bad[5, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(EmbedxError, match=r"1 row\(s\) hold NaN or infinite values: row 6"):
        import_embeddings(store_path, tmp_path / "nan.npy", "x", manifest=cohort)
    np.save(tmp_path / "short.npy", z[:-1])
    with pytest.raises(EmbedxError, match="299 embedding rows but the manifest"):
        import_embeddings(store_path, tmp_path / "short.npy", "x", manifest=cohort)
    with pytest.raises(EmbedxError, match="give --manifest"):
        import_embeddings(store_path, tmp_path / "short.npy", "x")
    with pytest.raises(EmbedxError, match="already there"):
        import_embeddings(store_path, tmp_path / "b.csv", "pixels", manifest=cohort)
    frame.to_csv(tmp_path / "semi.csv", index=False, sep=";")
    with pytest.raises(EmbedxError, match="separated by something other than commas"):
        import_embeddings(store_path, tmp_path / "semi.csv", "x", manifest=cohort)
    np.savez(tmp_path / "objects.npz", path=pd.Series(paths).astype(str).to_numpy(dtype=object), z=z)
    with pytest.raises(EmbedxError, match=r"np.asarray\(ids, dtype=str\)"):
        import_embeddings(store_path, tmp_path / "objects.npz", "x", manifest=cohort)
    with Store.open(store_path) as store:
        assert store.models() == ["pixels"]  # nothing half-written


def test_the_command_line_names_the_problem_and_exits_2(pixel_store, tmp_path) -> None:
    store_path = _copy_store(pixel_store, tmp_path / "s.h5")
    (tmp_path / "e.npz").write_bytes(b"not a zip")
    command = ["store", "import", str(store_path), str(tmp_path / "e.npz"), "--name", "x"]
    out = subprocess.run([sys.executable, "-m", "embedx", *command], capture_output=True, text=True,
                         timeout=120)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 2 and "e.npz" in text and "Traceback" not in text


def test_a_refused_replace_keeps_the_old_model_and_keys_must_match_vectors(pixel_store, cohort, tmp_path):
    store_path = _copy_store(pixel_store, tmp_path / "s.h5")
    man = load_manifest(cohort)
    with Store.open(store_path) as store:
        before = store.latents("pixels")
        ids = store.sample_ids.astype(str)
    np.save(tmp_path / "short.npy", np.ones((150, 4), dtype=np.float32))
    with pytest.raises(EmbedxError, match="150 embedding rows but the manifest"):
        import_embeddings(store_path, tmp_path / "short.npy", "pixels", manifest=cohort, replace=True)
    with Store.open(store_path) as store:
        np.testing.assert_array_equal(store.latents("pixels"), before)
    vectors = np.ones((len(man), 4), dtype=np.float32)
    for keys in (ids[:150], np.concatenate([ids, ids[:3]])):
        np.savez(tmp_path / "k.npz", embeddings=vectors, sample_id=keys)
        with pytest.raises(EmbedxError, match=r"keys in 'sample_id' but 300 vectors"):
            import_embeddings(store_path, tmp_path / "k.npz", "x")
    # pandas' default to_csv() index is not a feature
    frame = pd.DataFrame(vectors, columns=[f"f{i}" for i in range(4)])
    frame.insert(0, "path", man.table["path"])
    frame.to_csv(tmp_path / "indexed.csv")
    result = import_embeddings(store_path, tmp_path / "indexed.csv", "x", manifest=cohort)
    assert result.dim == 4
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(EmbedxError, match="empty"):
        import_embeddings(store_path, tmp_path / "empty.npy", "y", manifest=cohort)


def test_path_keys_land_in_the_named_cohort(pixel_store, cohort, tmp_path) -> None:
    from embedx.data.synth import generate_cohort

    store_path = _copy_store(pixel_store, tmp_path / "s.h5")
    other = generate_cohort("cxr", 30, tmp_path / "b", size=32, seed=4)
    encode_pixels(other, store_path, size=32, pool=16, components=24, workers=0, cohort="b")
    vectors = np.arange(30 * 3, dtype=np.float32).reshape(30, 3)
    np.save(tmp_path / "b.npy", vectors)
    import_embeddings(store_path, tmp_path / "b.npy", "mine", manifest=other, cohort="b")
    with Store.open(store_path) as store:
        rows = store.rows_of(store.ids_for(load_manifest(other), "b"))
        z = store.latents("mine")
        cohorts = store.sample_strings("cohort")
    np.testing.assert_array_equal(z[rows], vectors)
    assert set(cohorts[rows]) == {"b"} and np.isnan(z[cohorts == ""]).all()
    with pytest.raises(EmbedxError, match="no rows of cohort 'c'"):
        import_embeddings(store_path, tmp_path / "b.npy", "mine2", manifest=other, cohort="c")


def test_a_partial_import_names_the_rows_left_without_a_vector(pixel_store, cohort, tmp_path) -> None:
    """A file that covers only part of the cohort is imported, and the rows it left out are named: manifest
    rows and paths with --manifest (the store keeps no paths), store rows and sample ids without."""
    store_path = _copy_store(pixel_store, tmp_path / "s.h5")
    man = load_manifest(cohort)
    with Store.open(store_path) as store:
        z = store.latents("pixels")
        rows = store.rows_of(store.ids_for(man))
        ids = store.sample_ids.astype(str)
    left_out = [3, 7]  # manifest rows (0-based) whose vectors the file lacks
    kept = np.setdiff1d(np.arange(len(man.table)), left_out)
    table = pd.DataFrame(z[rows][kept], columns=[f"f{i}" for i in range(z.shape[1])])
    table.insert(0, "path", man.table["path"].to_numpy()[kept])
    table.to_csv(tmp_path / "part.csv", index=False)
    result = import_embeddings(store_path, tmp_path / "part.csv", "part", manifest=cohort)
    assert result.n_store_rows_without == 2
    for r in left_out:
        assert f"row {r + 1} ({man.table['path'].iloc[r]!r})" in result.without_named
    np.savez(tmp_path / "part.npz", embeddings=z[rows][kept], sample_id=ids[rows][kept])
    by_id = import_embeddings(store_path, tmp_path / "part.npz", "part-id")
    assert all(ids[rows[r]] in by_id.without_named for r in left_out)
    assert "--manifest" in by_id.without_named
    complete = import_embeddings(store_path, tmp_path / "part.npz", "part-id", replace=True, manifest=cohort)
    assert "row 4" in complete.without_named and complete.n_store_rows_without == 2


def test_metadata_exported_beside_the_features_is_left_out_and_named(pixel_store, cohort, tmp_path,
                                                                      caplog) -> None:
    """A pandas export `path, finding, age, PatientID (MRN), label, f0..` : a column `finding` taken as a
    feature made the probe of finding read its own label (1.000, "encoded"), and the MRNs went into z."""
    store_path = _copy_store(pixel_store, tmp_path / "s.h5")
    man = load_manifest(cohort)
    with Store.open(store_path) as store:
        z = store.latents("pixels")
        rows = store.rows_of(store.ids_for(man))
        attributes = store.attributes().iloc[rows].reset_index(drop=True)
    assert {"finding", "age"} <= set(attributes.columns)
    table = pd.DataFrame(z[rows], columns=[f"f{i}" for i in range(z.shape[1])])
    table.insert(0, "path", man.table["path"].to_numpy())
    table.insert(1, "Finding", attributes["finding"].to_numpy())  # the store's attribute, another case
    table.insert(2, "age", attributes["age"].to_numpy())
    table.insert(3, "PatientID (MRN)", 100000 + np.arange(len(table)))
    table["label"] = np.random.default_rng(0).integers(0, 3, len(table))
    table.to_csv(tmp_path / "export.csv", index=False)
    with caplog.at_level("WARNING"):
        result = import_embeddings(store_path, tmp_path / "export.csv", "export", manifest=cohort)
    assert result.dim == z.shape[1] + 1  # the label-like column is kept (it may be a quantised feature) ...
    said = caplog.text
    assert "'Finding' (the store's attribute 'finding')" in said and "'age' (the store's attribute" in said
    assert "'PatientID (MRN)' (a patient identifier" in said
    assert "'label'" in said and "drop them from the file" in said  # ... and named
    with Store.open(store_path) as store:
        stored = store.latents("export")[rows]
    np.testing.assert_allclose(stored[:, :-1], z[rows], rtol=1e-6)  # exactly the features, no MRN
    assert not np.isin(100000 + np.arange(len(table)), stored).any()
