"""`embedx encode`: what lands in the store is what the model outputs, aligned, resumable, appendable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from embedx.data.dataset import ImageDataset
from embedx.data.manifest import load_manifest, write_manifest
from embedx.errors import EmbedxError, StoreError
from embedx.store.encode import encode, make_thumbnails
from embedx.store.h5store import Store
from embedx.training.checkpoint import load_trained

COHORT_N = 300  # the session cohort's size (conftest)
ENV = {**os.environ, "EMBEDX_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def embedx_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "embedx", *args]


def run_embedx(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(embedx_cmd(*args), capture_output=True, text=True, timeout=timeout, env=ENV)


def _subset(manifest: Path, rows: slice | list[int], name: str) -> Path:
    full = load_manifest(manifest)
    table = full.table.iloc[rows].reset_index(drop=True)
    return write_manifest(table, manifest.parent / name, full.schema)


def _model_outputs(run_dir: Path, manifest: Path, store_path: Path) -> tuple[np.ndarray, ...]:
    """The store's ids for the manifest, and latents and thumbnails computed directly with the model."""
    run = load_trained(run_dir)
    man = load_manifest(manifest)
    data = ImageDataset(man, run.preprocess)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    with torch.no_grad():
        z = run.model.embed(images).numpy()
    with Store.open(store_path) as store:
        ids = store.ids_for(man)
    return ids, z, make_thumbnails(images)


def test_round_trip_then_append(cohort, vae_run, tmp_path):
    first = _subset(cohort, slice(0, 200), "m-first200.csv")
    store_path = tmp_path / "s.h5"
    result = encode(vae_run, first, store_path, batch_size=32, workers=0)
    assert (result.n_encoded_now, result.n_new_samples, result.failed) == (200, 200, [])
    ids, z, thumbs = _model_outputs(vae_run, cohort, store_path)
    man = load_manifest(cohort)
    with Store.open(store_path) as store:
        assert store.models() == ["vae-tiny"]
        assert list(store.sample_ids) == list(ids[:200])
        np.testing.assert_allclose(store.latents("vae-tiny"), z[:200], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(store.thumbnails(), thumbs[:200])
        frame = store.attributes()
        assert list(frame["site"]) == list(man.table["site"][:200])
        np.testing.assert_allclose(frame["age"], man.table["age"][:200])
        assert store.schema()["site"].kind == man.schema["site"].kind
        # pseudonymised: raw ids never stored, same subject -> same code
        subjects = store.subject_ids
        assert not set(subjects) & set(man.table["subject_id"])
        raw = man.table["subject_id"][:200].to_numpy()
        assert all(
            (subjects[i] == subjects[j]) == (raw[i] == raw[j]) for i in range(0, 200, 7) for j in range(200)
        )
        info = store.embedding_info("vae-tiny")
        assert info["kind"] == "vae" and info["run_dir"] == str(vae_run.resolve())
        assert info["checkpoint_hash"] == load_trained(vae_run).checkpoint_hash
        assert "model: vae" in info["config"] and '"size":32' in info["preprocess"]

    # Mark row 0 with a sentinel: an append must not recompute rows that are already encoded.
    with Store.open(store_path, "a") as store:
        store.write_latents("vae-tiny", [0], np.full((1, 16), 7.0, np.float32))
    shuffled = _subset(cohort, list(range(COHORT_N))[::-1], "m-reversed.csv")  # grown and reordered
    result = encode(vae_run, shuffled, store_path, batch_size=32, workers=0)
    assert (result.n_encoded_now, result.n_skipped_done, result.n_new_samples) == (100, 200, 100)
    with Store.open(store_path) as store:
        assert store.n == COHORT_N and len(set(store.sample_ids)) == COHORT_N
        rows = store.rows_of(ids)
        got = store.latents("vae-tiny")[rows]
        np.testing.assert_array_equal(got[0], np.full(16, 7.0, np.float32))
        np.testing.assert_allclose(got[1:], z[1:], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(store.thumbnails(rows), thumbs)
        assert store.encoded_mask("vae-tiny").all()
        assert list(store.attributes()["site"].iloc[rows]) == list(man.table["site"])


def test_unreadable_images_skipped_and_listed(cohort, vae_run, tmp_path):
    table = load_manifest(cohort).table.iloc[:40].reset_index(drop=True)
    bad = cohort.parent / "images" / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    (cohort.parent / "DOE^JOHN_MRN1234567").mkdir(exist_ok=True)
    bad_named = cohort.parent / "DOE^JOHN_MRN1234567" / "MR_small.png"
    bad_named.write_bytes(b"not an image at all")
    table.loc[3, "path"] = "images/corrupt.png"
    table.loc[5, "path"] = "images/does-not-exist.png"
    table.loc[7, "path"] = "DOE^JOHN_MRN1234567/MR_small.png"  # a folder named after the patient
    manifest = write_manifest(table, cohort.parent / "m-bad.csv", load_manifest(cohort).schema)
    result = encode(vae_run, manifest, tmp_path / "s.h5", batch_size=8, workers=0)
    with Store.open(tmp_path / "s.h5") as store:
        ids = store.ids_for(load_manifest(manifest, check_files=False))
    assert sorted(s for s, _ in result.failed) == sorted([ids[3], ids[5], ids[7]])
    assert any("corrupt.png" in reason for _, reason in result.failed)  # the user's terminal names the file
    with Store.open(tmp_path / "s.h5") as store:
        mask = store.encoded_mask("vae-tiny")
        assert mask.sum() == 37 and not mask[3] and not mask[5] and not mask[7]
        failed = store.failed("vae-tiny")
        assert set(failed["sample_id"]) == {ids[3], ids[5], ids[7]}
        assert failed["reason"].str.contains("<file>").all()  # the store, which is shared, does not
        assert not failed["reason"].str.contains("corrupt.png|does-not-exist|DOE|MRN|MR_small").any()
        assert failed["reason"].str.contains("does not exist|not a readable image|corrupt").all()
    raw = (tmp_path / "s.h5").read_bytes()
    assert b"DOE^JOHN" not in raw and b"MRN1234567" not in raw


def test_a_manifest_whose_first_images_all_fail_is_refused_before_the_store_exists(cohort, vae_run, tmp_path):
    """Eight unreadable rows in a row mean a wrong manifest (other folder, other format), not bad luck:
    refuse with every row's reason, and create no store."""
    table = load_manifest(cohort).table.iloc[:12].reset_index(drop=True)
    table.loc[:7, "path"] = [f"elsewhere/img{i}.png" for i in range(8)]
    manifest = write_manifest(table, cohort.parent / "m-moved.csv", load_manifest(cohort).schema)
    with pytest.raises(EmbedxError, match=r"none of the first 8 images") as err:
        encode(vae_run, manifest, tmp_path / "s.h5", workers=0)
    message = str(err.value)
    # rows named as `data check` names them: data row from 1 and CSV line
    assert "row 1 (line 2):" in message and "row 8 (line 9):" in message and "elsewhere/img7.png" in message
    assert not (tmp_path / "s.h5").exists()


def test_bad_inputs(cohort, vae_run, tmp_path):
    from embedx.data.synth import generate_cohort

    mri = generate_cohort("mri", 3, tmp_path / "mri", size=16, seed=1)
    with pytest.raises(EmbedxError, match="trained on 2-D images"):
        encode(vae_run, mri, tmp_path / "s.h5", workers=0)
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(EmbedxError, match="missing"):
        encode(tmp_path / "empty-run", cohort, tmp_path / "s.h5", workers=0)
    with pytest.raises(EmbedxError, match="does not exist"):
        encode(tmp_path / "no-run", cohort, tmp_path / "s.h5", workers=0)
    # Same name, other weights: refused rather than mixing two checkpoints in one latent matrix.
    small = _subset(cohort, slice(0, 8), "m-8.csv")
    encode(vae_run, small, tmp_path / "t.h5", workers=0)
    with Store.open(tmp_path / "t.h5", "a") as store:
        store.set_embedding_attrs("vae-tiny", checkpoint_hash="0" * 64)
    with pytest.raises(StoreError, match="another --name"):
        encode(vae_run, small, tmp_path / "t.h5", workers=0)
    assert not (tmp_path / "t.h5.lock").exists()  # the lock was released after the error


def test_kill_and_resume(cohort, vae_run, tmp_path):
    """SIGKILL a real encode mid-way; the store opens, and rerunning finishes it exactly."""
    store_path = tmp_path / "killed.h5"
    args = [
        "encode",
        str(vae_run),
        "-m",
        str(cohort),
        "-o",
        str(store_path),
        "--batch-size",
        "1",
        "--workers",
        "0",
    ]
    proc = subprocess.Popen(embedx_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    encoded_at_kill = 0
    refused = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if store_path.exists():
            try:
                with Store.open(store_path) as store:  # readers open a store under encode
                    if "vae-tiny" in store.models():
                        encoded_at_kill = int(store.encoded_mask("vae-tiny").sum())
            except (StoreError, KeyError, OSError):
                pass  # created but not yet initialised (the writer is setting it up)
            if encoded_at_kill >= 5:
                if not refused:
                    with pytest.raises(StoreError, match="being written by another process"):
                        Store.open(store_path, "a")
                    refused = True
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the encode finished before it could be killed"
    with Store.open(store_path) as store:
        encoded = int(store.encoded_mask("vae-tiny").sum())
        assert 5 <= encoded < COHORT_N
    done = run_embedx(*args[:-4], "--batch-size", "64", "--workers", "0")
    assert done.returncode == 0, done.stderr
    assert f"{COHORT_N - encoded} encoded now" in " ".join(done.stderr.split())

    clean = tmp_path / "clean.h5"
    encode(vae_run, cohort, clean, batch_size=64, workers=0)
    with Store.open(store_path) as resumed, Store.open(clean) as reference:
        assert resumed.n == COHORT_N and len(set(resumed.sample_ids)) == COHORT_N
        man = load_manifest(cohort)  # each store salts its ids: both hold the manifest's rows in order
        assert list(resumed.sample_ids) == list(resumed.ids_for(man))
        assert list(reference.sample_ids) == list(reference.ids_for(man))
        assert resumed.encoded_mask("vae-tiny").all()
        np.testing.assert_allclose(
            resumed.latents("vae-tiny"), reference.latents("vae-tiny"), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_array_equal(resumed.thumbnails(), reference.thumbnails())
        pd.testing.assert_frame_equal(resumed.attributes(), reference.attributes())


@pytest.mark.slow
def test_two_process_accelerate_equals_single(cohort, vae_run, tmp_path):
    single, multi = tmp_path / "single.h5", tmp_path / "multi.h5"
    encode(vae_run, cohort, single, batch_size=32, workers=0)
    launcher = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run(
        [
            str(launcher),
            "launch",
            "--num_processes",
            "2",
            "--cpu",
            "-m",
            "embedx",
            "encode",
            str(vae_run),
            "-m",
            str(cohort),
            "-o",
            str(multi),
            "--batch-size",
            "16",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not multi.with_name(multi.name + ".shards").exists()  # merged and cleaned up
    with Store.open(single) as a, Store.open(multi) as b:
        man = load_manifest(cohort)  # ids are salted per store: both must hold the manifest's rows in order
        assert list(a.sample_ids) == list(a.ids_for(man)) and list(b.sample_ids) == list(b.ids_for(man))
        assert b.encoded_mask("vae-tiny").all()
        np.testing.assert_allclose(a.latents("vae-tiny"), b.latents("vae-tiny"), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a.thumbnails(), b.thumbnails())
        pd.testing.assert_frame_equal(a.attributes(), b.attributes())
        # subject codes are salted per store; the grouping they encode must be the same
        sa, sb = a.subject_ids, b.subject_ids
        assert pd.Series(sa).factorize()[0].tolist() == pd.Series(sb).factorize()[0].tolist()


def test_vae_and_dae_side_by_side_with_stochastic_codes(cohort, vae_run, dae_run, tmp_path):
    manifest = _subset(cohort, slice(0, 12), "m-12.csv")
    store_path = tmp_path / "s.h5"
    encode(vae_run, manifest, store_path, workers=0)
    encode(dae_run, manifest, store_path, workers=0, batch_size=8, stochastic=True, steps=3)
    run = load_trained(dae_run)
    man = load_manifest(manifest)
    data = ImageDataset(man, run.preprocess)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    with torch.no_grad():
        z = run.model.embed(images).numpy()
        xt = run.model.encode_stochastic(images, None, 3).numpy()
    with Store.open(store_path) as store:
        assert store.models() == ["vae-tiny", "dae-tiny"] and store.n == 12
        assert store.embedding_info("dae-tiny")["kind"] == "dae"
        assert store.latents("dae-tiny").shape == (12, 32) and store.latents("vae-tiny").shape == (12, 16)
        np.testing.assert_allclose(store.latents("dae-tiny"), z, rtol=1e-4, atol=1e-5)
        assert store.stochastic_mask("dae-tiny").all()
        np.testing.assert_allclose(store.stochastic_codes("dae-tiny"), xt, rtol=1e-4, atol=1e-4)
    with pytest.raises(EmbedxError, match="needs a diffusion autoencoder"):
        encode(vae_run, manifest, store_path, workers=0, stochastic=True)


def test_a_run_trained_on_a_mixed_folder_encodes_that_folder_and_refuses_what_it_never_saw(cohort, vae_run,
                                                                                            tmp_path):
    """`data scan` of a folder of PNGs and NIfTI volumes gives one manifest; `train` takes its NIfTI rows as
    centre slices, so `encode` must take the same manifest (it looked at the training manifest's first row
    only and called the run "trained on 2-D images"). A run that saw only 2-D images still refuses volumes."""
    from types import SimpleNamespace

    import nibabel as nib

    from embedx.store.encode import check_manifest_fits_run

    volume = cohort.parent / "head.nii.gz"
    voxels = np.random.default_rng(0).random((32, 32, 9)).astype(np.float32)
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), volume)
    table = load_manifest(cohort).table.iloc[:10].reset_index(drop=True)
    head = table.iloc[[0]].assign(path=volume.name, subject_id="vol-1")
    mixed = pd.concat([table, head], ignore_index=True)
    mixed_csv = write_manifest(mixed, cohort.parent / "m-mixed.csv", load_manifest(cohort).schema)
    trained = load_trained(vae_run)
    run = SimpleNamespace(info={"manifest": str(mixed_csv)}, preprocess=trained.preprocess, run_dir=vae_run)
    check_manifest_fits_run(run, load_manifest(mixed_csv))  # refused before
    flat = SimpleNamespace(info={"manifest": str(cohort)}, preprocess=trained.preprocess, run_dir=vae_run)
    refused = r"row 11 \(line 12\) \(head.nii.gz\).*2-D images \(PNG/JPEG/TIFF/DICOM\) only"
    with pytest.raises(EmbedxError, match=refused):
        check_manifest_fits_run(flat, load_manifest(mixed_csv))
