"""Preprocessing, the ImageDataset and the DataLoader with workers that skips unreadable images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from embedx.data.dataset import ImageDataset, collate_skip_failed, make_loader
from embedx.data.manifest import load_manifest
from embedx.data.preprocess import PreprocessConfig, preprocess
from embedx.errors import ConfigError


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Twelve 16-bit PNGs of different sizes with a corrupt file in the middle (row 5)."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        name = f"{i}.png"
        if i == 5:
            (root / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        else:
            Image.fromarray(rng.integers(0, 60000, (20 + i, 24), dtype=np.uint16)).save(root / name)
        rows.append(
            {
                "path": name,
                "subject_id": f"s{i // 2}",
                "sex": "F" if i % 2 else "M",
                "view": ["AP", "PA", "LAT"][i % 3],
                "age": 30.0 + i if i != 7 else np.nan,
            }
        )
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return load_manifest(root / "m.csv")


# ---------------------------------------------------------------- preprocess


def test_window_40_400_maps_to_minus_one_one():
    ct = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]], dtype=np.float32)
    cfg = PreprocessConfig(size=5, window=(40, 400))
    assert cfg.intensity == "window"  # a window alone means "map this window"
    out = preprocess(np.repeat(ct, 5, axis=0), cfg)
    assert out.shape == (1, 5, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-1, -1, 0, 1, 1], atol=1e-6)


def test_percentile_and_minmax_scaling_and_resize_any_size():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (40, 30)).astype(np.float32)
    img[0, 0] = 1e6  # one hot pixel: percentile scaling ignores it, minmax does not
    robust = preprocess(img, PreprocessConfig(size=24))
    minmax = preprocess(img, PreprocessConfig(size=24, intensity="minmax"))
    assert robust.shape == minmax.shape == (1, 24, 24)
    assert robust.min() >= -1 and robust.max() <= 1
    assert robust.std() > 0.1 and abs(np.median(robust)) < 0.2  # spread over the range
    assert np.median(minmax) < -0.99  # squashed against -1 by the hot pixel
    assert preprocess(img, PreprocessConfig(size=57)).shape == (1, 57, 57)
    assert np.all(preprocess(np.full((8, 8), 3.0), PreprocessConfig(size=8)) == 0)  # constant -> 0


def test_flip_only_in_training_and_deterministic_for_rng():
    img = np.tile(np.arange(16, dtype=np.float32), (16, 1))
    cfg = PreprocessConfig(size=16, flip=True, intensity="minmax")
    assert np.all(np.diff(preprocess(img, cfg, train=False)[0, 0]) > 0)
    flips = [preprocess(img, cfg, np.random.default_rng(s), train=True)[0, 0, 0] for s in range(20)]
    assert {round(float(f)) for f in flips} == {-1, 1}
    a = preprocess(img, cfg, np.random.default_rng(5), train=True)
    np.testing.assert_array_equal(a, preprocess(img, cfg, np.random.default_rng(5), train=True))


def test_channels_native_one_or_repeated_or_stack():
    assert preprocess(np.ones((8, 8)), PreprocessConfig(size=8, channels=3)).shape == (3, 8, 8)
    stack = PreprocessConfig(size=8, channels=5, nifti_mode="center_stack", nifti_slices=5)
    assert preprocess(np.random.rand(5, 12, 12), stack).shape == (5, 8, 8)
    with pytest.raises(ConfigError, match="2 channels"):
        preprocess(np.random.rand(2, 12, 12), PreprocessConfig(size=8, channels=3))


def test_config_rejects_unknown_keys_and_inconsistent_settings():
    with pytest.raises(ValueError, match="sise"):
        PreprocessConfig(sise=64)
    with pytest.raises(ValueError, match="needs window"):
        PreprocessConfig(intensity="window")
    with pytest.raises(ValueError, match="channels"):
        PreprocessConfig(nifti_mode="random_triplet")
    cfg = PreprocessConfig(size=64, window=(40, 400))
    assert PreprocessConfig.model_validate(cfg.model_dump()) == cfg


# ---------------------------------------------------------------- dataset and loader


def test_loader_with_two_workers_skips_and_lists_the_corrupt_file(cohort):
    dataset = ImageDataset(cohort, PreprocessConfig(size=16), label="sex")
    loader = make_loader(dataset, batch_size=4, shuffle=False, workers=2, seed=0)
    assert loader.persistent_workers and loader.num_workers == 2
    rows, failed = [], []
    for batch in loader:
        assert batch["image"].shape[1:] == (1, 16, 16)
        assert batch["image"].shape[0] == len(batch["row"]) == len(batch["label"])
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        rows += batch["row"].tolist()
        failed += batch["failed"]
    assert rows == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert len(failed) == 1 and failed[0][0] == 5 and "5.png" in failed[0][1]


def test_categorical_labels_are_class_indices(cohort):
    dataset = ImageDataset(cohort, PreprocessConfig(size=8), rows=[0, 1, 2, 3], label="view")
    assert dataset.classes == ["AP", "LAT", "PA"]
    items = [dataset[i] for i in range(4)]
    assert [int(it["label"]) for it in items] == [0, 2, 1, 0]
    assert all(it["label"].dtype == torch.long for it in items)
    assert items[0]["image"].shape == (1, 8, 8)


def test_continuous_label_excludes_missing_rows(cohort):
    dataset = ImageDataset(cohort, PreprocessConfig(size=8), label="age")
    assert 7 not in dataset.rows.tolist() and len(dataset) == 11
    item = dataset[0]
    assert item["label"].dtype == torch.float32 and float(item["label"]) == 30.0


def test_unknown_label_is_named(cohort):
    with pytest.raises(Exception, match="'finding'"):
        ImageDataset(cohort, PreprocessConfig(size=8), label="finding")


def test_collate_when_every_item_failed():
    batch = collate_skip_failed([{"row": 3, "error": "x: bad"}, {"row": 4, "error": "y: bad"}])
    assert batch["row"].numel() == 0 and batch["failed"] == [(3, "x: bad"), (4, "y: bad")]


def test_shuffled_training_loader_is_reproducible_for_a_seed(cohort):
    def epoch() -> tuple[list[int], torch.Tensor]:
        dataset = ImageDataset(cohort, PreprocessConfig(size=8, flip=True), train=True, seed=1)
        batches = list(make_loader(dataset, batch_size=12, shuffle=True, workers=0, seed=9))
        return batches[0]["row"].tolist(), batches[0]["image"]

    rows_a, images_a = epoch()
    rows_b, images_b = epoch()
    assert rows_a == rows_b and sorted(rows_a) == [r for r in range(12) if r != 5]
    assert rows_a != sorted(rows_a)
    assert torch.equal(images_a, images_b)


def test_dicom_header_window_can_be_switched_off(tmp_path, dicom_writer):
    pixels = np.tile(np.arange(0, 2000, 125, dtype=np.uint16), (16, 1))
    dicom_writer(tmp_path / "a.dcm", pixels, window=(500.0, 200.0))
    pd.DataFrame({"path": ["a.dcm"]}).to_csv(tmp_path / "m.csv", index=False)
    manifest = load_manifest(tmp_path / "m.csv")
    header = ImageDataset(manifest, PreprocessConfig(size=16, intensity="minmax"))[0]["image"][0, 0]
    full = ImageDataset(manifest, PreprocessConfig(size=16, intensity="minmax", header_window=False))[0]
    # Header window 400..600: everything below is -1, above is +1; without it the ramp is linear.
    assert (header == -1).sum() >= 4 and (header == 1).sum() >= 10
    np.testing.assert_allclose(full["image"][0, 0].numpy(), np.linspace(-1, 1, 16), atol=1e-5)


def test_a_cached_cohort_gives_the_arrays_an_uncached_one_reads_augmented_afresh(cohort, monkeypatch):
    """Training decodes a small cohort once: every later draw is the same array, flipped or not anew."""
    import embedx.data.dataset as dataset_module

    config = PreprocessConfig(size=16, flip=True)
    n, epochs = len(cohort.table), 4
    plain = ImageDataset(cohort, config, train=True, seed=3, cache_mb=0.0)
    expected = [[plain[i] for i in range(n)] for _ in range(epochs)]
    unflipped = ImageDataset(cohort, config, train=False)
    unflipped = [unflipped[i].get("image") for i in range(n)]
    reads = []
    real_load = dataset_module.load_image
    monkeypatch.setattr(dataset_module, "load_image",
                        lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    dataset_module.failures.forget_all()  # the corrupt file was met above: let this dataset meet it afresh
    cached = ImageDataset(cohort, config, train=True, seed=3, cache_mb=1.0)
    assert cached._cache.enabled and not plain._cache.enabled
    flips = set()
    for epoch in range(epochs):
        for index in range(n):
            got, want = cached[index], expected[epoch][index]
            assert got.keys() == want.keys()
            if "error" in got:  # the corrupt file is listed every time, but read only once
                continue
            np.testing.assert_array_equal(got["image"].numpy(), want["image"].numpy())
            flips.add(bool(np.array_equal(got["image"].numpy(), unflipped[index].numpy()[..., ::-1])))
    assert reads.count(str(cohort.absolute_path(0))) == 1
    assert len(reads) == n  # each image once, the corrupt one too (embedx.data.failures remembers it)
    assert flips == {True, False}  # the cache holds the image before augmentation


def test_a_cohort_over_the_budget_or_with_random_slices_is_not_cached(cohort):
    tight = ImageDataset(cohort, PreprocessConfig(size=64), train=True, cache_mb=12 * 64 * 64 * 4 / 2**20 / 2)
    assert not tight._cache.enabled
    assert ImageDataset(cohort, PreprocessConfig(size=64), train=True, cache_mb=1.0)._cache.enabled
    triplets = PreprocessConfig(size=16, channels=3, nifti_mode="random_triplet")
    assert not ImageDataset(cohort, triplets, train=True, cache_mb=100.0)._cache.enabled


def test_training_with_loader_workers_keeps_no_cache(cohort) -> None:
    from embedx.training.config import load_config
    from embedx.training.data import build_datasets

    alone = build_datasets(cohort, load_config("vae", None, ["data.preprocess.size=16"]))
    workers = build_datasets(cohort, load_config("vae", None, ["data.preprocess.size=16", "data.workers=2"]))
    assert alone.train._cache.enabled and not workers.train._cache.enabled
