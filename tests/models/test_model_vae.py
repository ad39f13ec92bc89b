"""VAE: shapes, learning, the Hessian penalty on a deterministic decoder."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from embedx.errors import ConfigError
from embedx.models import VAE, VAEConfig, build_model


@pytest.mark.parametrize(("size", "channels"), [(16, 1), (64, 1), (32, 3), (48, 1)])
def test_shapes(size: int, channels: int) -> None:
    model = build_model("vae", {"latent_dim": 8}, size, channels)
    x = torch.rand(2, channels, size, size) * 2 - 1
    recon, mu, logvar, z = model(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == z.shape == (2, 8)
    assert model.embed(x).shape == (2, 8)
    rows = model.eval_images(x, torch.Generator().manual_seed(0))
    assert set(rows) == {"input", "reconstruction", "samples"}
    for row in rows.values():
        assert row.shape == x.shape
        assert row.min() >= -1 and row.max() <= 1


def test_depth_follows_image_size() -> None:
    small, large = build_model("vae", None, 32, 1), build_model("vae", None, 256, 1)
    n_conv = [sum(isinstance(m, nn.Conv2d) for m in v.encoder.modules()) for v in (small, large)]
    assert n_conv == [3, 6]  # 32 -> 4 px and 256 -> 4 px


def test_unusable_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="100 px"):
        build_model("vae", None, 100, 1)


def test_embed_is_the_posterior_mean_and_deterministic() -> None:
    model = build_model("vae", {"latent_dim": 8}, 16, 1)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    assert torch.equal(model.embed(x), model.embed(x))
    assert torch.allclose(model.embed(x), model.encode(x)[0])


def test_training_reduces_loss_and_reconstruction_error(make_blobs: Callable[..., torch.Tensor]) -> None:
    x = make_blobs(16, 32)
    model = build_model("vae", {"latent_dim": 16}, 32, 1)
    assert isinstance(model, VAE)

    def recon_mse() -> float:
        return float(((model.reconstruct(x) - x) ** 2).mean())

    untrained = recon_mse()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss, metrics = model.training_loss({"image": x})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["loss"])
    assert set(metrics) >= {"loss", "recon", "kl", "mse"}
    assert "hessian" not in metrics  # off by default
    assert losses[-1] < 0.2 * losses[0]
    trained = recon_mse()
    # measured: 1.35 -> 0.06; an untrained decoder is about as far from the blobs as their variance or more
    assert trained < 0.2 * untrained
    assert trained < 0.25


def test_decoder_is_deterministic_for_the_penalty() -> None:
    model = build_model("vae", {"latent_dim": 8, "hessian_weight": 1.0}, 32, 1)
    model.train()
    stochastic = (nn.Dropout, nn.modules.batchnorm._BatchNorm)
    assert not any(isinstance(m, stochastic) for m in model.decoder.modules())
    z = torch.randn(4, 8)
    assert torch.equal(model.decode(z), model.decode(z))


def test_hessian_term_enters_the_loss_with_its_weight(make_blobs: Callable[..., torch.Tensor]) -> None:
    x = make_blobs(4, 16)
    cfg = VAEConfig(latent_dim=8, hessian_weight=0.5, beta=2.0)
    model = build_model("vae", cfg, 16, 1)
    loss, tensors = model.training_loss({"image": x})
    m = {key: float(value) for key, value in tensors.items()}
    assert m["hessian"] > 0
    assert float(loss) == pytest.approx(m["recon"] + 2.0 * m["kl"] + 0.5 * m["hessian"], rel=1e-5)
    loss.backward()
    # the penalty's gradient reaches the decoder; z is detached, so the encoder learns only from recon + KL
    assert model.decoder.fc.weight.grad is not None and model.decoder.fc.weight.grad.abs().sum() > 0


def test_hessian_term_is_float32_under_bf16_autocast(make_blobs: Callable[..., torch.Tensor]) -> None:
    x = make_blobs(4, 16)
    model = build_model("vae", {"latent_dim": 8, "hessian_weight": 1.0}, 16, 1)
    values = []
    for enabled in (False, True):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            values.append(float(model.training_loss({"image": x})[1]["hessian"]))
    # in bf16 the finite differences would be off by tens of percent; only z itself differs here
    assert values[1] == pytest.approx(values[0], rel=0.05)


def test_unknown_config_key_names_the_key() -> None:
    with pytest.raises(ConfigError, match="hessian_wieght"):
        build_model("vae", {"hessian_wieght": 1e-6}, 32, 1)
