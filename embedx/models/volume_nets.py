"""Seed 001's 3-D networks, built from MONAI (the field's library) rather than written here.

- Classifier: MONAI's 3-D `ResNet` as the seed describes it: a 7^3 stride-2 stem with max pooling, four
  scales of two basic residual blocks with (32, 64, 128, 256) channels, global average pooling and a dense
  head (two logits, trained with cross-entropy).
- Segmenter: MONAI's 3-D `UNet` with five stages of (8, 16, 32, 64, 128) channels, each halving the grid,
  and a mirrored decoder; one output channel (sigmoid), trained with MONAI's `DiceLoss`.

`width` scales every stage's channels (1.0 = the seed's); small widths make the CPU tests and benchmarks
fast without changing the architecture.
"""

from __future__ import annotations

from torch import nn

from embedx.errors import EmbedxError

RESNET_CHANNELS = (32, 64, 128, 256)
UNET_CHANNELS = (8, 16, 32, 64, 128)
UNET_DOWNSAMPLING = 2 ** (len(UNET_CHANNELS) - 1)


def _scaled(channels: tuple[int, ...], width: float) -> tuple[int, ...]:
    if width <= 0:
        raise EmbedxError(f"--width must be positive, got {width}")
    return tuple(max(2, round(c * width)) for c in channels)


def check_volume_net(task: str, width: float, shape: tuple[int, int, int]) -> None:
    """The errors `build_volume_net` would raise, without building (and allocating) a network."""
    if task not in ("classify", "segment"):
        raise EmbedxError(f"--task {task!r}: use classify or segment")
    _scaled(UNET_CHANNELS, width)
    if task == "segment" and any(s % UNET_DOWNSAMPLING for s in shape):
        raise EmbedxError(f"--shape {','.join(map(str, shape))}: the U-Net halves the grid "
                          f"{len(UNET_CHANNELS) - 1} times, so every size must be a multiple of "
                          f"{UNET_DOWNSAMPLING}")


def resnet3d(width: float = 1.0, num_classes: int = 2) -> nn.Module:
    from monai.networks.nets import ResNet

    return ResNet(
        block="basic",
        layers=(2, 2, 2, 2),
        block_inplanes=list(_scaled(RESNET_CHANNELS, width)),
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        num_classes=num_classes,
    )


def unet3d(width: float = 1.0) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=_scaled(UNET_CHANNELS, width),
        strides=(2,) * (len(UNET_CHANNELS) - 1),
        num_res_units=1,
    )


def build_volume_net(task: str, width: float, shape: tuple[int, int, int]) -> nn.Module:
    check_volume_net(task, width, shape)
    return resnet3d(width) if task == "classify" else unet3d(width)
