"""The store's read/write API: alignment, growth, errors, locks, analyses, h5py-only readability."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from embedx.data.schema import AttributeSpec
from embedx.errors import StoreError
from embedx.store.h5store import SCHEMA_VERSION, Store, write_store_from_arrays


def _arrays(n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"s{i:05d}" for i in range(n)]
    subjects = [f"p{i // 2}" for i in range(n)]
    attrs = pd.DataFrame(
        {
            "site": rng.choice(["A", "B", "C"], n),
            "age": rng.normal(50, 10, n),
            "AP/PA": rng.choice(["AP", "PA"], n).astype(object),
            "sex": rng.integers(0, 2, n),
        }
    )
    attrs.loc[3, "age"] = np.nan
    attrs.loc[4, "AP/PA"] = None
    z = rng.normal(size=(n, 6)).astype(np.float32)
    z[7] = np.nan
    thumbs = rng.integers(0, 255, (n, 64, 64), dtype=np.uint8)
    return ids, subjects, attrs, z, thumbs


@pytest.fixture()
def store_path(tmp_path):
    ids, subjects, attrs, z, thumbs = _arrays()
    schema = {"site": AttributeSpec("site", "categorical", "acquisition")}
    return write_store_from_arrays(
        tmp_path / "s.h5", ids, subjects, attrs, schema, {"vae": z, "dae": z[:, :4] * 2}, thumbnails=thumbs
    )


def test_round_trip_aligned(store_path):
    ids, subjects, attrs, z, thumbs = _arrays()
    with Store.open(store_path) as store:
        assert store.n == 50
        assert list(store.sample_ids) == ids
        assert list(store.subject_ids) == subjects
        assert store.models() == ["vae", "dae"]
        mask = store.encoded_mask("vae")
        assert mask.sum() == 49 and not mask[7]
        got = store.latents("vae")
        np.testing.assert_array_equal(got[mask], z[mask])
        assert np.isnan(got[7]).all()
        np.testing.assert_array_equal(store.latents("vae", rows=[9, 2, 2]), z[[9, 2, 2]])
        np.testing.assert_array_equal(store.thumbnails([5, 1]), thumbs[[5, 1]])
        frame = store.attributes()
        assert list(frame.columns) == ["site", "age", "AP/PA", "sex"]
        assert list(frame["site"]) == list(attrs["site"])
        assert np.isnan(frame["age"][3]) and frame["age"][10] == pytest.approx(attrs["age"][10])
        assert pd.isna(frame["AP/PA"][4]) and frame["AP/PA"][5] == attrs["AP/PA"][5]
        assert frame["sex"].dtype == np.float64
        schema = store.schema()
        assert schema["site"] == AttributeSpec("site", "categorical", "acquisition", False)
        assert schema["age"].kind == "continuous" and schema["age"].inferred
        assert store.embedding_info("dae")["dim"] == 4


def test_h5py_only_layout(store_path):
    with h5py.File(store_path, "r") as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert f["samples/id"].shape == (50,)
        assert f["embeddings/vae/z"].shape == (50, 6)
        assert f["samples/attrs/AP%2FPA"].attrs["name"] == "AP/PA"
        assert f["thumbs"].dtype == np.uint8


def test_append_keeps_rows_and_latents(store_path):
    ids, _, _, z, _ = _arrays()
    with Store.open(store_path, "a") as store:
        rows = store.add_samples(
            ["s00001", "new-1", "new-2"],
            ["q", "r", "r"],
            pd.DataFrame({"site": ["D", "E", "E"], "bmi": [20.0, 21.5, np.nan]}),
        )
        assert list(rows) == [1, 50, 51]
        assert store.n == 52
        np.testing.assert_array_equal(
            store.latents("vae")[:50][store.encoded_mask("vae")[:50]], z[np.isfinite(z).all(1)]
        )
        assert np.isnan(store.latents("vae")[50:]).all() and not store.encoded_mask("vae")[50:].any()
        frame = store.attributes()
        assert frame["site"][1] == "D" and frame["site"][51] == "E"
        assert frame["bmi"][1] == 20.0 and frame["bmi"][50] == 21.5 and np.isnan(frame["bmi"][51])
        assert np.isnan(frame["bmi"][2:50]).all()
        assert list(store.sample_ids[:50]) == ids
        assert store.thumbnails([51]).sum() == 0 and not store.has_thumbnail()[51]


def test_errors(store_path, tmp_path):
    with Store.open(store_path) as store:
        with pytest.raises(StoreError, match=r"known models: vae, dae"):
            store.latents("cnn")
        with pytest.raises(StoreError, match="no 'tsne' projection"):
            store.projection("vae", "tsne")
    with Store.open(store_path, "a") as store:
        with pytest.raises(StoreError, match="mismatched lengths"):
            store.add_samples(["a", "b"], ["x"], None)
        with pytest.raises(StoreError, match="duplicate sample id"):
            store.add_samples(["a", "a"], ["x", "y"], None)
        with pytest.raises(StoreError, match="6-d latents"):
            store.ensure_embedding("vae", 8)
        with pytest.raises(StoreError, match="stored as numbers"):
            store.add_samples(["a"], ["x"], pd.DataFrame({"age": ["old"]}))
    with h5py.File(store_path, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="schema version"):
        Store.open(store_path)
    (tmp_path / "plain.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="not a readable"):
        Store.open(tmp_path / "plain.h5")
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "missing.h5")


def test_second_writer_refused_reader_allowed(store_path):
    with Store.open(store_path, "a"):
        with pytest.raises(StoreError, match=r"being written by another process \(PID \d+"):
            Store.open(store_path, "a")
        with Store.open(store_path) as reader:  # readers are never blocked
            assert reader.n == 50
    with Store.open(store_path, "a") as store:  # released on close
        assert store.n == 50


def test_analyses_round_trip(store_path):
    with Store.open(store_path, "a") as store:
        store.write_analysis("probes", "vae/site", {"score": np.float32(0.75), "ci": np.array([0.7, 0.8])})
        store.write_analysis("probes", "vae/age", {"score": 3.0})
        store.write_analysis("probes", "vae/site", {"score": 0.5})  # replaces
        with pytest.raises(StoreError, match="unknown analysis kind"):
            store.write_analysis("bogus", "k", {})
    with Store.open(store_path) as store:
        assert store.read_analysis("probes", "vae/site") == {"score": 0.5}
        assert [r["score"] for r in store.read_analysis("probes")] == [3.0, 0.5]
        assert store.analyses() == {"probes": ["vae/age", "vae/site"]} or set(store.analyses()["probes"]) == {
            "vae/age",
            "vae/site",
        }
        assert store.read_analysis("fairness") == []
        with pytest.raises(StoreError, match="present: "):
            store.read_analysis("probes", "nope")


def test_strings_read_through_stringdtype_are_the_ones_asstr_reads(tmp_path):
    """The fast string read must give exactly h5py's `asstr` result: non-ASCII text, empty strings, rows never
    written (grown by a resize) and an empty dataset."""
    from embedx.store.h5io import read_strings

    with h5py.File(tmp_path / "s.h5", "w") as f:
        ds = f.create_dataset("a", shape=(6,), dtype=h5py.string_dtype(), chunks=(2,), maxshape=(None,))
        ds[1], ds[2], ds[4] = "Zürich – 東京 ✓", "", "x" * 300
        ds.resize((9,))
        f.create_dataset("empty", shape=(0,), dtype=h5py.string_dtype())
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name in ("a", "empty"):
            fast, plain = read_strings(f[name]), f[name].asstr()[()].astype(object)
            assert fast.dtype == object and fast.tolist() == plain.tolist()
            assert all(type(v) is str for v in fast)
        assert read_strings(f["a"])[1] == "Zürich – 東京 ✓" and read_strings(f["a"])[8] == ""


def test_a_text_column_reads_as_the_str_objects_would_give_it(tmp_path):
    """The Arrow fast path of attribute columns must equal building the Series from str objects, "" and
    rows never written being missing."""
    from embedx.store.h5io import read_strings, read_text_column

    with h5py.File(tmp_path / "s.h5", "w") as f:
        ds = f.create_dataset("a", shape=(6,), dtype=h5py.string_dtype(), chunks=(2,), maxshape=(None,))
        ds[0], ds[1], ds[2], ds[4] = "north", "Zürich – 東京 ✓", "", "north"
        ds.resize((9,))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        values = read_strings(f["a"])
        values[values == ""] = None
        pd.testing.assert_series_equal(read_text_column(f["a"]), pd.Series(values))
        assert read_text_column(f["a"]).isna().sum() == 6
