"""Small helpers shared by the models: how deep a network must be for an image size, norm group counts."""

from __future__ import annotations

import torch

from embedx.errors import ConfigError


def halvings_to(size: int, smallest: int, *, what: str) -> int:
    """How many 2x downsamplings take `size` to a side of at most `smallest` (or an odd side of at most 8).

    The models derive their depth from the image size this way, so one config serves 32 px and 256 px.
    """
    if size < 8:
        raise ConfigError(f"{what}: image size {size} px is too small (at least 8 px)")
    n, s = 0, size
    while s > smallest:
        if s % 2 and s <= 8:  # e.g. 224 px ends at 7 px: small enough
            break
        if s % 2:
            raise ConfigError(
                f"{what}: image size {size} px cannot be halved down to {smallest} px or less "
                f"(stuck at {s} px); use a size divisible by a power of two, e.g. 64, 128, 224 or 256"
            )
        s //= 2
        n += 1
    return n


def group_count(channels: list[int] | tuple[int, ...], preferred: int = 32) -> int:
    """The largest group count <= `preferred` that divides every width (GroupNorm needs it)."""
    for g in (32, 16, 8, 4, 2, 1):
        if g <= preferred and all(c % g == 0 for c in channels):
            return g
    return 1


def randn_like_on(shape: tuple[int, ...], like: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Normal noise of `shape` with `like`'s device and dtype, drawn on `generator`'s own device.

    Eval code passes a CPU generator for reproducible grids; drawing on it and then moving keeps the images
    identical on CPU and GPU.
    """
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


def item(t: torch.Tensor) -> torch.Tensor:
    """A logged metric: a detached 0-d tensor, left on the device.

    Why not `float(...)`: that copies the value to the host, which waits for the GPU to finish the step,
    so the CPU cannot queue the next step's kernels meanwhile. The training loop sums these on the device
    and reads them once per log row."""
    return t.detach()
