"""Name-the-site CNN: shapes, and it separates two trivially different classes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from embedx.errors import ConfigError
from embedx.models import CNN, build_model


def _two_sites(make_blobs: Callable[..., torch.Tensor], n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """16 px blobs whose "site" 1 adds a bright 2x2 marker in the top-left corner; anatomy is shared."""
    x = make_blobs(n, 16, seed=seed) * 0.8
    y = torch.arange(n) % 2
    x[y == 1, :, 1:3, 1:3] = 1.0
    return x, y


@pytest.mark.parametrize(("size", "channels", "k"), [(16, 1, 2), (64, 3, 5)])
def test_shapes(size: int, channels: int, k: int) -> None:
    model = build_model("cnn", None, size, channels, num_classes=k)
    x = torch.rand(4, channels, size, size) * 2 - 1
    assert model(x).shape == (4, k)
    model.eval()
    assert model.embed(x).shape == (4, 128)
    assert torch.equal(model.embed(x), model.embed(x))
    assert model.eval_images(x, torch.Generator())["input"].shape == x.shape


def test_needs_classes_and_labels() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("cnn", None, 32, 1)
    with pytest.raises(ConfigError, match="at least 2"):
        build_model("cnn", None, 32, 1, num_classes=1)
    model = build_model("cnn", None, 32, 1, num_classes=2)
    with pytest.raises(ConfigError, match="label"):
        model.training_loss({"image": torch.zeros(2, 1, 32, 32)})


def test_learns_to_name_the_site(make_blobs: Callable[..., torch.Tensor]) -> None:
    x, y = _two_sites(make_blobs, 32, seed=0)
    model = build_model("cnn", None, 16, 1, num_classes=2)
    assert isinstance(model, CNN)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)  # seed 000's settings: Adam lr 5e-3, batch 32
    first = None
    for _ in range(30):
        loss, metrics = model.training_loss({"image": x, "label": y})
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else metrics["loss"]
    assert metrics["loss"] < 0.3 * first
    model.eval()
    x_new, y_new = _two_sites(make_blobs, 64, seed=1)  # unseen anatomy
    accuracy = float((model(x_new).argmax(1) == y_new).float().mean())
    assert accuracy >= 0.9  # measured 0.97


def test_label_without_pixel_effect_stays_near_chance(make_blobs: Callable[..., torch.Tensor]) -> None:
    x, _ = _two_sites(make_blobs, 32, seed=0)
    x_new, _ = _two_sites(make_blobs, 64, seed=1)
    x[:, :, 1:3, 1:3] = x_new[:, :, 1:3, 1:3] = 0.8  # every image gets the marker: no site signal left
    y, y_new = torch.randint(0, 2, (32,)), torch.randint(0, 2, (64,))
    model = build_model("cnn", None, 16, 1, num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(30):
        loss, _ = model.training_loss({"image": x, "label": y})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    accuracy = float((model(x_new).argmax(1) == y_new).float().mean())
    assert 0.25 <= accuracy <= 0.75  # chance is 0.5; 64 held-out images give a standard error of about 0.06
