"""build_model: kinds, typed or dict configs, clear errors; DiffAE-style conditioning is wired in."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from embedx.errors import ConfigError
from embedx.models import (
    MODEL_CONFIGS,
    RECOMMENDED_TRAINING,
    CNNConfig,
    DAEConfig,
    VAEConfig,
    build_model,
    model_config,
)
from embedx.models.dae import ZScaledGroupNorm


def test_every_kind_builds_from_none_dict_or_config() -> None:
    for kind, cls in MODEL_CONFIGS.items():
        k = 3 if kind == "cnn" else None
        for cfg in (None, {}, cls()):
            model = build_model(kind, cfg, 32, 1, num_classes=k)
            assert model.kind == kind
        assert set(RECOMMENDED_TRAINING[kind]) >= {"lr", "batch_size"}
    assert RECOMMENDED_TRAINING["cnn"]["lr"] == 5e-3 and RECOMMENDED_TRAINING["cnn"]["batch_size"] == 32


def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown model kind 'gan'"):
        build_model("gan", None, 32, 1)
    with pytest.raises(ConfigError, match="must be a VAEConfig"):
        build_model("vae", DAEConfig(), 32, 1)
    with pytest.raises(ConfigError, match=r"model\.beta"):
        model_config("vae", {"beta": "lots"})
    with pytest.raises(ConfigError, match=r"model\.filters"):
        model_config("cnn", {"filters": []})


def test_configs_forbid_unknown_keys_and_keep_the_sources_defaults() -> None:
    assert VAEConfig().latent_dim == 128 and VAEConfig().hessian_epsilon == 0.1 and VAEConfig().hessian_k == 2
    assert CNNConfig().filters == (32, 64, 128)
    assert DAEConfig().latent_dim == 512
    for cls in (VAEConfig, DAEConfig, CNNConfig):
        with pytest.raises(ValueError, match="typo"):
            cls(typo=1)


def test_adagn_scales_every_unet_resnet_block_and_only_those() -> None:
    model = build_model("dae", {"unet_channels": (16, 32), "latent_dim": 8}, 16, 1)
    unet_blocks = [m for m in model.unet.modules() if isinstance(m, ResnetBlock2D)]
    assert unet_blocks and all(isinstance(b.norm2, ZScaledGroupNorm) for b in unet_blocks)
    assert not any(isinstance(m, ZScaledGroupNorm) for m in model.encoder.modules())
    norm = unet_blocks[0].norm2
    h, z = torch.randn(2, norm.num_channels, 4, 4), torch.randn(2, 8)
    norm._slot.z_sem = z
    expected = nn.functional.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps)
    expected = expected * (1 + norm.z_proj(z)[:, :, None, None])
    assert torch.allclose(norm(h), expected, atol=1e-6)
    norm._slot.z_sem = None
    with pytest.raises(RuntimeError, match="outside"):
        norm(h)


def test_mean_pooled_encoder_variant() -> None:
    model = build_model("dae", {"unet_channels": (16, 32), "latent_dim": 8, "encoder_pool": "mean"}, 32, 1)
    assert model.embed(torch.zeros(3, 1, 32, 32)).shape == (3, 8)


@pytest.mark.parametrize("kind", ["vae", "dae", "cnn"])
def test_224_px_builds_and_embeds(kind: str) -> None:
    model = build_model(kind, None, 224, 1, num_classes=2 if kind == "cnn" else None).eval()
    assert model.embed(torch.zeros(1, 1, 224, 224)).shape[0] == 1
