"""The pixel reference (`embedx encode --pixels`): what plain pixels carry, with no training (issue #14)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embedx.analysis.probe_core import ProbeConfig
from embedx.analysis.probe_result import VERDICT_NOT_FOUND
from embedx.analysis.probes import probe_arrays, run_probes
from embedx.data.dataset import ImageDataset
from embedx.data.manifest import load_manifest, write_manifest
from embedx.store.h5store import Store
from embedx.store.pixels import STAT_NAMES, acquisition_stats, encode_pixels, reference_from_store

CFG = ProbeConfig(n_permutations=199, n_bootstrap=300, seed=0)


def test_noise_border_and_clipping_statistics_measure_what_they_say() -> None:
    gen = torch.Generator().manual_seed(0)
    flat = torch.zeros(1, 1, 128, 128)
    noisy = flat + 0.1 * torch.randn(1, 1, 128, 128, generator=gen)
    framed = flat.clone()
    framed[..., :8, :] = framed[..., -8:, :] = framed[..., :, :8] = framed[..., :, -8:] = -1.0
    stats = acquisition_stats(torch.cat([noisy, framed]))
    col = {name: stats[:, i] for i, name in enumerate(STAT_NAMES)}
    assert col["noise_sigma"][0].item() == pytest.approx(0.1, rel=0.05)  # Immerkaer on pure noise
    assert col["noise_sigma"][1].item() < 0.05  # a clean image with a collimation frame
    assert col["border_mean"][1].item() == pytest.approx(-1.0)
    assert col["border_sd"][1].item() == pytest.approx(0)
    assert col["clipped_low"][1].item() == pytest.approx(1 - (112 / 128) ** 2)
    assert col["highfreq_energy"][0] > col["highfreq_energy"][1]
    assert not torch.isnan(stats).any()


def test_pixels_find_the_injected_signatures_and_not_the_pure_label(cohort, tmp_path) -> None:
    store_path = tmp_path / "s.h5"
    result = encode_pixels(cohort, store_path, size=32, pool=16, components=32, workers=0)
    assert (result.n_encoded_now, result.failed) == (300, [])
    results = run_probes(store_path, models=["pixels"], attributes=["site", "sex"], config=CFG, write=False)
    assert all(r.encoded for r in results)
    # A label with no pixel effect. The cohort's own `insurance` is drawn independently, but in this sample
    # of 150 subjects it happens to go with sex (chi-square p = 0.004 over subjects), which the pixels do
    # carry, so a probe rightly reads it. Dealt out evenly within each sex x site cell instead, a pure
    # label cannot ride on either.
    with Store.open(store_path) as store:
        frame, subjects, z = store.attributes(), store.subject_ids.astype(str), store.latents("pixels")
    rng = np.random.default_rng(5)
    per_subject = frame.assign(subject=subjects).groupby("subject").first()
    label = {}
    for _, cell in per_subject.groupby(["sex", "site"]):
        names = rng.permutation(cell.index.to_numpy())
        label.update({s: "abc"[i % 3] for i, s in enumerate(names)})
    y = np.array([label[s] for s in subjects], dtype=object)
    pure = probe_arrays(z, y, subjects, "categorical", config=CFG)
    assert not pure.encoded and pure.verdict.startswith(VERDICT_NOT_FOUND)
    with Store.open(store_path) as store:
        info = store.embedding_info("pixels")
        assert info["kind"] == "pixels" and info["dim"] == 32 + len(STAT_NAMES)
        assert '"fit_rows": 300' in info["config"]


def test_a_grown_manifest_is_encoded_on_the_axes_fitted_first(cohort, tmp_path) -> None:
    full = load_manifest(cohort)
    table = full.table.iloc[:150].copy()
    table["path"] = [str(cohort.parent / p) for p in table["path"]]
    half = write_manifest(table.reset_index(drop=True), cohort.parent / "m-half.csv", full.schema)
    store_path = tmp_path / "s.h5"
    encode_pixels(half, store_path, size=32, pool=16, components=16, workers=0)
    with Store.open(store_path) as store:
        state = store.model_arrays("pixels")
        first = store.latents("pixels")
    again = encode_pixels(cohort, store_path, size=32, pool=16, components=16, workers=0)
    assert (again.n_skipped_done, again.n_encoded_now) == (150, 150)
    with Store.open(store_path) as store:
        for key, value in store.model_arrays("pixels").items():
            np.testing.assert_array_equal(value, state[key])  # not refitted on the grown cohort
        z = store.latents("pixels")
        np.testing.assert_array_equal(z[:150], first)
        reference = reference_from_store(store.model_arrays("pixels"), store.embedding_info("pixels"))
        rows = store.rows_of(store.ids_for(full)[[200, 299]])
    data = ImageDataset(full, reference.preprocess, rows=np.array([200, 299]), train=False)
    images = torch.stack([data[i]["image"] for i in range(2)])
    with torch.no_grad():
        expected = reference.model.embed(images).numpy()
    np.testing.assert_allclose(z[rows], expected, rtol=1e-4, atol=1e-5)
    assert math.isfinite(float(z.sum()))
