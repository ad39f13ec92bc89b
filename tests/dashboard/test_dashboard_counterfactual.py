"""Counterfactual view: the probe direction is the injected one, and a real (tiny, untrained) DAE decodes
z_sem moved along it — as pure functions and through the page, from a real run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from synthstore import cohort, latents

import embedx.dashboard
from embedx.dashboard import counterfactual
from embedx.dashboard.data import STORE_ENV
from embedx.models.registry import build_model
from embedx.store.h5store import Store
from embedx.training.checkpoint import save_weights_atomic, sha256_file, write_run_json
from embedx.training.config import load_config, save_config

TINY = ["data.preprocess.size=16", "dae.latent_dim=16", "dae.unet_channels=[8,16]", "dae.ddim_steps=3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished DAE run folder as training leaves it (config.yaml, run.json, model.safetensors)."""
    folder = tmp_path_factory.mktemp("dae_run")
    config = load_config("dae", overrides=TINY)
    save_config(config, folder / "config.yaml")
    torch.manual_seed(0)
    model = build_model("dae", config.model_section, 16, 1)
    save_weights_atomic(model.state_dict(), folder / "model.safetensors")
    write_run_json(folder, {"kind": "dae", "checkpoint_sha256": sha256_file(folder / "model.safetensors")})
    return folder


def test_probe_direction_recovers_the_injected_site_axis() -> None:
    table = cohort(600, seed=3)
    z = latents(table, 16, with_sex=True, seed=4)  # south = north + 4 on axis 0 and + 3 on axis 1
    direction = counterfactual.probe_direction(z, table["site"].to_numpy(), "north", "south")
    assert direction.accuracy > 0.95
    assert direction.vector[0] > 0.6 and direction.vector[1] > 0.4
    assert np.abs(direction.vector[3:]).max() < 0.3  # pure-noise axes carry little weight
    assert direction.distance == pytest.approx(5.0, abs=0.8)
    with pytest.raises(ValueError, match="at least 5"):
        counterfactual.probe_direction(z[:6], table["site"].to_numpy()[:6], "north", "south")


def test_counterfactuals_decode_along_the_direction(run_dir: Path) -> None:
    from embedx.training.checkpoint import load_trained

    model = load_trained(run_dir).model
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 16)).astype(np.float32)
    direction = counterfactual.Direction(np.eye(16, dtype=np.float32)[0], 2.0, 1.0, "a", "b", 5, 5)
    alphas = np.array([0.0, 1.0])
    thumbs = rng.integers(0, 255, (3, 64, 64)).astype(np.uint8)
    images = counterfactual.thumbnails_to_input(thumbs, 16, 1)
    assert images.shape == (3, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    out, source = counterfactual.counterfactuals(model, z, direction, alphas, images=images, steps=3)
    assert source == "inverted" and out.shape == (3, 2, 1, 16, 16)
    assert np.abs(out).max() <= 1.0
    x_t = model.encode_stochastic(torch.as_tensor(images), torch.as_tensor(z), 3)
    own = model.decode(torch.as_tensor(z), x_t, 3).numpy()
    np.testing.assert_allclose(out[:, 0], own, atol=1e-5)  # α = 0 is the model's own decode
    assert not np.allclose(out[:, 0], out[:, 1])  # moving z_sem changes the image
    fixed, source = counterfactual.counterfactuals(model, z, direction, alphas, steps=3)
    assert source == "fixed" and fixed.shape == out.shape
    assert counterfactual.to_uint8(out).shape == (3, 2, 16, 16)


def test_counterfactual_page_decodes_from_a_real_run_folder(
    bare_store: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(bare_store, "a") as store:
        store.set_embedding_attrs("dae", run_dir=str(run_dir))
    monkeypatch.setenv(STORE_ENV, str(bare_store))
    page = Path(embedx.dashboard.__file__).resolve().parent / "views" / "counterfactual.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("balanced accuracy" in m.value for m in at.markdown)
    at.sidebar.slider(key="cf_steps").set_value(5).run()
    at.button(key="cf_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("x_T: inverted" in c.value for c in at.caption)
    assert len(at.get("image")) == len(at.multiselect(key="cf_rows").value)
