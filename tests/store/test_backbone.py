"""`embedx encode --backbone`: a pretrained encoder from local files, its own preprocessing, no download."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from embedx.data.dataset import ImageDataset
from embedx.data.manifest import load_manifest, write_manifest
from embedx.errors import EmbedxError
from embedx.store.backbone import load_backbone
from embedx.store.encode import encode
from embedx.store.h5store import Store


@pytest.fixture(scope="module")
def small_manifest(cohort, tmp_path_factory):
    full = load_manifest(cohort)
    table = full.table.iloc[:24].reset_index(drop=True)
    return write_manifest(table, cohort.parent / "m-24.csv", full.schema)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    """A tiny randomly initialised ViT saved as a Hugging Face folder, with a preprocessor config."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64)
    folder = tmp_path_factory.mktemp("vit") / "tiny-vit"
    ViTModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32},
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    return folder


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def test_a_transformers_folder_encodes_with_its_own_preprocessing(vit_folder, small_manifest, tmp_path):
    from transformers import ViTModel

    backbone = load_backbone(vit_folder)
    assert backbone.model.size == 32 and backbone.describe()["mean"] == [0.5, 0.5, 0.5]
    result = encode(backbone, small_manifest, tmp_path / "s.h5", "vit", workers=0, batch_size=8)
    assert (result.n_encoded_now, result.failed) == (24, [])
    with Store.open(tmp_path / "s.h5") as store:
        z = store.latents("vit")
        info = store.embedding_info("vit")
    assert z.shape == (24, 32) and info["kind"] == "backbone" and info["run_dir"] == ""
    # the same vectors as the model itself gives on its own input convention
    man = load_manifest(small_manifest)
    images = torch.stack([ImageDataset(man, backbone.preprocess, train=False)[i]["image"] for i in (0, 5)])
    x = (images.mean(1, keepdim=True) + 1) / 2
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False,
                                        antialias=True)
    x = (x.expand(-1, 3, -1, -1) - 0.5) / 0.25
    with torch.no_grad():
        expected = ViTModel.from_pretrained(vit_folder).eval()(pixel_values=x).pooler_output.numpy()
    rows = [0, 5]
    np.testing.assert_allclose(z[rows], expected, rtol=1e-4, atol=1e-5)
    # resumable like any encode; the same weights are recognised by their hash
    again = encode(load_backbone(vit_folder), small_manifest, tmp_path / "s.h5", "vit", workers=0)
    assert (again.n_encoded_now, again.n_skipped_done) == (0, 24)


def test_a_torchscript_file_is_pooled_over_its_feature_map(small_manifest, tmp_path) -> None:
    torch.manual_seed(0)
    scripted = torch.jit.script(TinyCNN())
    path = tmp_path / "cnn.pt"
    scripted.save(str(path))
    result = encode(load_backbone(path, size=48), small_manifest, tmp_path / "s.h5", "cnn", workers=0)
    assert result.n_encoded_now == 24
    with Store.open(tmp_path / "s.h5") as store:
        z = store.latents("cnn")
    assert z.shape == (24, 6) and np.isfinite(z).all() and (z >= 0).all()


def test_missing_or_wrong_weights_say_what_to_put_where(tmp_path) -> None:
    with pytest.raises(EmbedxError, match=r"does not exist\. embedx downloads nothing.*--local-dir"):
        load_backbone(tmp_path / "rad-dino")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbedxError, match=r"without config\.json"):
        load_backbone(tmp_path / "empty")
    (tmp_path / "weights.pt").write_bytes(torch.zeros(3).numpy().tobytes())
    with pytest.raises(EmbedxError, match="not a TorchScript file"):
        load_backbone(tmp_path / "weights.pt")


def test_a_folder_loads_with_the_network_cut_off(vit_folder, monkeypatch) -> None:
    dead = "http://127.0.0.1:9"  # any attempt to reach the network fails at once
    monkeypatch.setenv("HTTPS_PROXY", dead)
    monkeypatch.setenv("HTTP_PROXY", dead)
    assert load_backbone(vit_folder).form == "transformers"


def test_the_command_encodes_with_a_backbone(small_manifest, tmp_path) -> None:
    torch.jit.script(TinyCNN()).save(str(tmp_path / "net.pt"))
    command = ["encode", "--backbone", str(tmp_path / "net.pt"), "--backbone-size", "48", "--manifest",
               str(small_manifest), "--out", str(tmp_path / "s.h5"), "--workers", "0"]
    env = {**os.environ, "EMBEDX_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, "-m", "embedx", *command], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    with Store.open(tmp_path / "s.h5") as store:
        assert store.models() == ["net"] and store.encoded_mask("net").all()


class OneChannel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


class Scalar(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean()


class Diverged(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * float("nan")


def test_odd_scripted_networks_are_adapted_or_named(small_manifest, tmp_path) -> None:
    for cls, name in ((OneChannel, "one"), (Scalar, "scalar"), (Diverged, "nan")):
        torch.jit.script(cls()).save(str(tmp_path / f"{name}.pt"))
    one = load_backbone(tmp_path / "one.pt", size=32)
    assert one.model.channels == 1  # tried RGB, fell back to one channel
    with pytest.raises(EmbedxError, match=r"shape \(\); embedx needs one vector"):
        load_backbone(tmp_path / "scalar.pt", size=32)
    result = encode(load_backbone(tmp_path / "nan.pt", size=32), small_manifest, tmp_path / "s.h5", "nan",
                    workers=0)
    assert result.n_encoded_now == 0 and len(result.failed) == 24
    assert all("non-finite" in reason for _, reason in result.failed)
