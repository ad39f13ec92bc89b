"""Configs: defaults <- file <- --set; bad keys and values are ConfigErrors naming the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from embedx.errors import ConfigError
from embedx.models.registry import build_model
from embedx.training.config import (
    KINDS,
    default_config,
    load_config,
    read_config,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_per_kind_differ_where_the_sources_do() -> None:
    vae, dae, cnn = (default_config(k) for k in KINDS)
    assert (vae.optim.lr, dae.optim.lr, cnn.optim.lr) == (2.5e-3, 1e-4, 5e-3)
    assert dae.optim.ema_decay == 0.9999 and vae.optim.ema_decay is None
    assert vae.vae is not None and vae.dae is None and cnn.cnn is not None


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_default_yaml_equals_the_code(kind: str) -> None:
    """configs/<kind>.yaml is a dump of the code defaults (regenerate: python -m embedx.training.config)."""
    shipped = yaml.safe_load((CONFIGS / f"{kind}.yaml").read_text())
    assert shipped == yaml.safe_load(default_config(kind).to_yaml()), (
        f"configs/{kind}.yaml is stale: run `python -m embedx.training.config configs`")


def test_unknown_key_names_the_dotted_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'.*known keys here: lr, batch_size"):
        load_config("vae", None, ["optim.lrr=0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  preprocess:\n    sise: 64\n")
    with pytest.raises(ConfigError, match=rf"unknown key 'data\.preprocess\.sise' \(from {bad}\)"):
        load_config("vae", bad)
    with pytest.raises(ConfigError, match=r"unknown key 'vae\.latent'"):
        load_config("vae", None, ["vae.latent=8"])


def test_mistyped_value_names_key_and_expected_type() -> None:
    with pytest.raises(ConfigError, match=r"optim\.lr \(from --set\): expected float, got 'fast'"):
        load_config("vae", None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"optim\.batch_size.*expected int, got 2\.5"):
        load_config("vae", None, ["optim.batch_size=2.5"])
    with pytest.raises(ConfigError, match=r"optim\.mixed_precision.*expected 'auto' \| 'no' \| 'bf16'"):
        load_config("dae", None, ["optim.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match=r"dae\.unet_channels.*expected tuple\[int"):
        load_config("dae", None, ["dae.unet_channels=wide"])
    with pytest.raises(ConfigError, match="section 'dae' does not apply to model 'vae'"):
        load_config("vae", None, ["dae.latent_dim=8"])
    with pytest.raises(ConfigError, match=r"expected key\.sub=value"):
        load_config("vae", None, ["optim.lr"])


def test_overrides_apply_last_and_are_yaml_typed(tmp_path: Path) -> None:
    file = tmp_path / "exp.yaml"
    file.write_text("optim:\n  lr: 1.0e-2\n  batch_size: 8\ndata:\n  label: sex\n")
    config = load_config("cnn", file, ["optim.lr=1e-3", "data.label=site", "cnn.filters=[4,8]",
                                       "optim.grad_clip=null", "data.preprocess.window=[40,400]"])
    assert config.optim.lr == 1e-3 and config.optim.batch_size == 8  # --set beats the file
    assert config.data.label == "site" and config.cnn.filters == (4, 8)
    assert config.optim.grad_clip is None
    # YAML reads an unquoted `no` as false; for mixed_precision it still means "no".
    assert load_config("vae", None, ["optim.mixed_precision=no"]).optim.mixed_precision == "no"
    # A window given alone switches intensity scaling to it (the preprocessing's own rule survives merging).
    assert config.data.preprocess.window == (40.0, 400.0) and config.data.preprocess.intensity == "window"
    with pytest.raises(ConfigError, match="does not match the requested 'vae'"):
        load_config("vae", _write(tmp_path / "d.yaml", "model: dae\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_resolved_config_saves_and_reloads(tmp_path: Path) -> None:
    config = load_config("dae", CONFIGS / "demo_dae.yaml", ["optim.seed=7"])
    path = save_config(config, tmp_path / "config.yaml")
    again = read_config(path)
    assert again == config and again.optim.seed == 7 and again.dae.unet_channels == (16, 32, 64)
    assert "vae:" not in path.read_text()  # only the chosen model's section is written


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses_and_builds(path: Path) -> None:
    kind = yaml.safe_load(path.read_text())["model"]
    config = load_config(kind, path)
    pre = config.data.preprocess
    with torch.device("meta"):  # checks the architecture fits the image size without allocating it
        build_model(kind, config.model_section, pre.size, pre.channels, 4 if kind == "cnn" else None)
    if path.name.startswith(("gnc", "chexpert")):
        assert pre.size == 256
