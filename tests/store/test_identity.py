"""A store knows which cohort each row came from: no silent merge, no image counted twice, no loss on a full
disk (issue #12, cases 1, 2 and 6)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from embedx.data.manifest import load_manifest, write_manifest
from embedx.data.synth import generate_cohort
from embedx.errors import StoreError
from embedx.store.encode import encode
from embedx.store.h5store import Store
from embedx.store.info import store_summary


def _first(manifest: Path, n: int, name: str) -> Path:
    full = load_manifest(manifest)
    return write_manifest(full.table.iloc[:n].reset_index(drop=True), manifest.parent / name, full.schema)


def test_a_second_cohort_with_the_same_paths_is_refused_or_kept_apart(cohort, vae_run, tmp_path):
    first = _first(cohort, 60, "m-first60.csv")
    store_path = tmp_path / "s.h5"
    encode(vae_run, first, store_path, workers=0)
    other = generate_cohort("cxr", 40, tmp_path / "other", size=32, seed=1)  # images/000000.png ... too
    assert set(load_manifest(other).table["path"]) <= set(load_manifest(first).table["path"])
    with pytest.raises(StoreError, match=r"of this manifest have the path of a row already in the store but "
                       r"hold a different image \(row 1 'images/000000.png'.*--cohort NAME"):
        encode(vae_run, other, store_path, workers=0)
    with Store.open(store_path) as store:
        assert store.n == 60  # nothing of the other cohort got in

    result = encode(vae_run, other, store_path, workers=0, cohort="site-b")
    assert (result.n_new_samples, result.n_encoded_now) == (40, 40)
    with Store.open(store_path) as store:
        assert store.n == 100 and store.encoded_mask("vae-tiny").all()
        assert list(store.sample_strings("cohort")) == [""] * 60 + ["site-b"] * 40
        # the first cohort's rows kept their own latents and subjects
        np.testing.assert_array_equal(store.rows_of(store.ids_for(load_manifest(first))), np.arange(60))
    summary = store_summary(store_path)
    assert summary["cohorts"] == {"": 60, "site-b": 40} and summary["duplicate_images"] == 0
    # the named cohort resumes as itself: nothing is encoded again
    again = encode(vae_run, other, store_path, workers=0, cohort="site-b")
    assert (again.n_new_samples, again.n_encoded_now, again.n_skipped_done) == (0, 0, 40)


def test_the_same_images_under_other_paths_are_one_sample(cohort, vae_run, tmp_path):
    first = _first(cohort, 30, "m-first30.csv")
    store_path = tmp_path / "s.h5"
    encode(vae_run, first, store_path, workers=0)
    with Store.open(store_path) as store:
        z_before = store.latents("vae-tiny")

    # 1. absolute paths inside the cohort's folder: the same ids, nothing new
    table = load_manifest(first).table.copy()
    table["path"] = [str(cohort.parent / p) for p in table["path"]]
    absolute = write_manifest(table, cohort.parent / "m-absolute.csv", load_manifest(first).schema)
    result = encode(vae_run, absolute, store_path, workers=0)
    assert (result.n_new_samples, result.n_encoded_now) == (0, 0)

    # 2. the folder copied to a new mount point, manifest elsewhere with absolute paths: found by content
    mount = tmp_path / "new-mount" / "cohort"
    (mount / "images").mkdir(parents=True)
    for p in load_manifest(first).table["path"]:
        shutil.copy(cohort.parent / p, mount / p)
    table["path"] = [str(mount / p) for p in load_manifest(first).table["path"]]
    (tmp_path / "lists").mkdir()
    moved = write_manifest(table, tmp_path / "lists" / "m.csv", load_manifest(first).schema)
    result = encode(vae_run, moved, store_path, workers=0)
    assert (result.n_new_samples, result.n_encoded_now) == (0, 0)
    assert any("30 row(s) are images already in the store under another path" in w for w in result.warnings)
    with Store.open(store_path) as store:
        assert store.n == 30
        np.testing.assert_array_equal(store.latents("vae-tiny"), z_before)
        np.testing.assert_array_equal(store.rows_of(store.ids_for(load_manifest(moved))), np.arange(30))

    # 3. a copy inside one manifest is reported, row by row, and kept as the file it is
    shutil.copy(cohort.parent / table_path(first, 4), cohort.parent / "images" / "copy-of-4.png")
    grown = load_manifest(first).table.copy()
    grown.loc[len(grown)] = {**grown.iloc[4].to_dict(), "path": "images/copy-of-4.png"}
    dup = write_manifest(grown, cohort.parent / "m-dup.csv", load_manifest(first).schema)
    result = encode(vae_run, dup, store_path, workers=0)
    assert any("1 image(s) appear more than once" in w and "row 5, row 31" in w for w in result.warnings)
    assert store_summary(store_path)["duplicate_images"] == 1


def table_path(manifest: Path, row: int) -> str:
    return str(load_manifest(manifest).table.at[row, "path"])


def test_a_full_disk_while_adding_rows_loses_nothing(cohort, vae_run, tmp_path, monkeypatch):
    first = _first(cohort, 20, "m-first20.csv")
    store_path = tmp_path / "s.h5"
    encode(vae_run, first, store_path, workers=0)
    real_resize = h5py.Dataset.resize
    calls = {"n": 0}

    def resize_until_full(self, size, axis=None):
        calls["n"] += 1
        if calls["n"] == 3:  # a few datasets grown, the rest not: the disk filled up half-way
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_resize(self, size, axis)

    monkeypatch.setattr(h5py.Dataset, "resize", resize_until_full)
    bigger = _first(cohort, 50, "m-first50.csv")
    with pytest.raises(StoreError, match=r"could not add 30 sample\(s\).*a full disk\? The store keeps its"):
        encode(vae_run, bigger, store_path, workers=0)
    monkeypatch.setattr(h5py.Dataset, "resize", real_resize)
    with Store.open(store_path) as store:
        assert store.n == 20 and store.encoded_mask("vae-tiny").all()
    result = encode(vae_run, bigger, store_path, workers=0)
    assert (result.n_new_samples, result.n_encoded_now, result.n_encoded_total) == (30, 30, 50)


def test_a_store_left_with_empty_ids_is_named_by_readers_and_repaired_by_the_next_encode(cohort, vae_run,
                                                                                          tmp_path):
    """The state the issue found after ENOSPC: rows allocated, ids never written."""
    first = _first(cohort, 20, "m-first20b.csv")
    store_path = tmp_path / "s.h5"
    encode(vae_run, first, store_path, workers=0)
    with h5py.File(store_path, "r+", locking=False) as f:
        f["samples/id"].resize(600, axis=0)
        f["samples/subject_id"].resize(600, axis=0)  # the other datasets were never grown
    with pytest.raises(StoreError, match=r"stopped half-way .* after row 20\. Free some space and rerun"):
        Store.open(store_path)
    result = encode(vae_run, _first(cohort, 40, "m-first40.csv"), store_path, workers=0)
    assert (result.n_new_samples, result.n_encoded_total) == (20, 40)
    with Store.open(store_path) as store:
        assert store.n == 40 and "" not in set(store.sample_ids)


def test_an_image_replaced_in_place_is_encoded_again_not_kept_stale(cohort, vae_run, tmp_path):
    """Two of 40 files overwritten with other images: their old latents must not survive the resume."""
    folder = tmp_path / "c"
    shutil.copytree(cohort.parent / "images", folder / "images")
    full = load_manifest(cohort)
    manifest = write_manifest(full.table.iloc[:40].reset_index(drop=True), folder / "m.csv", full.schema)
    store_path = tmp_path / "s.h5"
    encode(vae_run, manifest, store_path, workers=0)
    table = load_manifest(manifest).table
    for target, source in ((5, 100), (7, 101)):
        shutil.copy(cohort.parent / full.table.at[source, "path"], folder / table.at[target, "path"])
    result = encode(vae_run, manifest, store_path, workers=0)
    assert result.n_encoded_now == 2
    assert any("2 image(s) changed since they were encoded (row 6, row 8)" in w for w in result.warnings)
    fresh = tmp_path / "fresh.h5"
    encode(vae_run, manifest, fresh, workers=0)
    with Store.open(store_path) as a, Store.open(fresh) as b:
        np.testing.assert_allclose(a.latents("vae-tiny"), b.latents("vae-tiny"), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a.thumbnails(), b.thumbnails())


def test_a_moved_folder_with_copies_keeps_one_row_per_file(cohort, vae_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(cohort.parent / "images", old / "images")
    full = load_manifest(cohort)
    table = full.table.iloc[:20].reset_index(drop=True)
    shutil.copy(old / table.at[1, "path"], old / "images" / "dup.png")
    table.loc[len(table)] = {**table.iloc[1].to_dict(), "path": "images/dup.png"}
    (tmp_path / "lists").mkdir()
    table["path"] = [str(old / p) for p in table["path"]]
    first = write_manifest(table, tmp_path / "lists" / "m1.csv", full.schema)
    store_path = tmp_path / "s.h5"
    encode(vae_run, first, store_path, workers=0)
    (tmp_path / "old").rename(tmp_path / "new")
    table["path"] = [p.replace(str(old), str(tmp_path / "new")) for p in table["path"]]
    moved = write_manifest(table, tmp_path / "lists" / "m2.csv", full.schema)
    result = encode(vae_run, moved, store_path, workers=0)
    assert (result.n_new_samples, result.n_encoded_now) == (0, 0)
    with Store.open(store_path) as store:
        assert store.n == 21
        rows = store.rows_of(store.ids_for(load_manifest(moved)))
        np.testing.assert_array_equal(np.sort(rows), np.arange(21))


def test_repair_pads_a_short_dataset_instead_of_cutting_rows_with_ids(cohort, vae_run, tmp_path):
    store_path = tmp_path / "s.h5"
    encode(vae_run, _first(cohort, 30, "m-first30c.csv"), store_path, workers=0)
    with h5py.File(store_path, "r+", locking=False) as f:
        f["embeddings/vae-tiny/encoded"].resize(20, axis=0)  # one dataset short: rows 20-29 keep their ids
    result = encode(vae_run, _first(cohort, 30, "m-first30c.csv"), store_path, workers=0)
    assert (result.n_new_samples, result.n_encoded_now, result.n_encoded_total) == (0, 10, 30)
    with Store.open(store_path) as store:
        assert store.n == 30 and store.encoded_mask("vae-tiny").all()


def test_store_info_counts_subjects_with_images_in_brackets(tmp_path):
    """A minority site of 3 patients with 19 images read '19' in `store info` while every other command said
    '3 (19)': the info table counts subjects first, as the rest of embedx does."""
    import pandas as pd

    from embedx.store.h5store import write_store_from_arrays

    subjects = [f"a{i}" for i in range(10)] + ["c0"] * 7 + ["c1"] * 6 + ["c2"] * 6
    site = ["big"] * 10 + ["small"] * 19
    sex = ["F", "M"] * 5 + [None] * 7 + ["F"] * 12  # c0's seven images have no sex
    path = write_store_from_arrays(tmp_path / "s.h5", [f"i{i}" for i in range(29)], subjects,
                                   pd.DataFrame({"site": site, "sex": sex}), None,
                                   {"m": np.zeros((29, 2), dtype=np.float32)})
    by = {a["name"]: a for a in store_summary(path)["attributes"]}
    assert by["site"]["summary"] == "big: 10 (10), small: 3 (19)"
    assert (by["sex"]["missing"], by["sex"]["missing_subjects"]) == (7, 1)
