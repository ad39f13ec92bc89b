"""Tiny structured images for the model tests: filled ellipses ("blobs") on a dark background."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


def blobs(n: int, size: int, seed: int = 0, channels: int = 1) -> torch.Tensor:
    """(n, channels, size, size) in [-1, 1]: one random filled ellipse per image, -1 outside, +1 inside."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        cx, cy = (torch.rand(2, generator=g) * 1.2 - 0.6).tolist()
        rx, ry = (torch.rand(2, generator=g) * 0.4 + 0.2).tolist()
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        images.append(torch.where(inside, 1.0, -1.0))
    return torch.stack(images)[:, None].repeat(1, channels, 1, 1)


@pytest.fixture(scope="session")
def make_blobs() -> Callable[..., torch.Tensor]:
    return blobs


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
