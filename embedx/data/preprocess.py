"""Turn a native-unit image into the network's input: (C, size, size) float32 in [-1, 1].

The recipe is the seeds' (000, 003): resize to a square, window (e.g. centre 40 / width 400 for head CT)
or robust intensity scaling to [-1, 1], optional random horizontal flip in training. Images are
resized to the square directly, without padding, as the seeds do: every cohort image then fills the
frame the same way, and padding borders (an acquisition-like signature of their own) never appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedx.data.images import NiftiSelection, read_image
from embedx.errors import ConfigError

# Robust scaling ignores the darkest / brightest 0.5 % (burned-in text, hot pixels, metal).
PERCENTILES = (0.5, 99.5)


class PreprocessConfig(BaseModel):
    """How images become tensors; saved with every run so that encode repeats it exactly."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(256, ge=4, le=4096)
    channels: int = Field(1, ge=1, le=64)
    window: tuple[float, float] | None = None  # (centre, width) in native units, e.g. (40, 400) for head CT
    nifti_mode: Literal["center", "center_stack", "random_triplet"] = "center"
    nifti_slices: int = Field(1, ge=1, le=64)
    flip: bool = False
    intensity: Literal["minmax", "percentile", "window"] = "percentile"
    # Use a DICOM's own VOI window when `window` is not set. Off keeps full modality range: header windows
    # differ between sites and scanners, so applying them can itself inject an acquisition signature.
    header_window: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessConfig:
        if self.window is not None and self.window[1] <= 0:
            raise ValueError(f"window width must be positive, got {self.window[1]}")
        if self.intensity == "window" and self.window is None:
            raise ValueError("intensity 'window' needs window: [centre, width]")
        # Setting a window without naming the intensity mode means "map this window to [-1, 1]".
        if self.window is not None and "intensity" not in self.model_fields_set:
            self.intensity = "window"
        if self.nifti_mode == "center_stack" and self.channels != self.nifti_slices:
            raise ValueError(
                f"nifti_mode 'center_stack' gives nifti_slices={self.nifti_slices} channels; "
                "set channels to match"
            )
        if self.nifti_mode == "random_triplet" and self.channels != 3:
            raise ValueError("nifti_mode 'random_triplet' gives 3 channels; set channels: 3")
        return self

    def nifti_selection(self) -> NiftiSelection:
        return NiftiSelection(mode=self.nifti_mode, slices=self.nifti_slices)


def _scale(array: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Native units -> [-1, 1]. One range for all channels, so a slice stack keeps relative brightness."""
    if cfg.intensity == "window":
        assert cfg.window is not None  # guaranteed by the config validator
        centre, width = cfg.window
        low, high = centre - width / 2, centre + width / 2
    elif cfg.intensity == "percentile":
        low, high = (float(v) for v in np.percentile(array, PERCENTILES))
    else:
        low, high = float(array.min()), float(array.max())
    if high <= low:  # a constant image: map to the middle of the range rather than divide by zero
        return np.zeros_like(array, dtype=np.float32)
    out = (array - np.float32(low)) * np.float32(2.0 / (high - low)) - np.float32(1.0)
    return np.clip(out, -1.0, 1.0, out=out)


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    if array.shape[-2:] == (size, size):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
    shrinking = array.shape[-2] > size or array.shape[-1] > size
    resized = F.interpolate(
        tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
    )
    return resized[0].numpy()


def preprocess(
    array: np.ndarray, cfg: PreprocessConfig, rng: np.random.Generator | None = None, train: bool = False
) -> np.ndarray:
    """(H, W) or (C, H, W) native-unit image -> (cfg.channels, cfg.size, cfg.size) float32 in [-1, 1]."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ConfigError(f"expected an image of shape (H, W) or (C, H, W), got {array.shape}")
    finite = np.isfinite(array)
    if not finite.all():
        fill = float(array[finite].min()) if finite.any() else 0.0
        array = np.where(finite, array, np.float32(fill))
    # Resize first, then window/scale, in the seeds' order; the percentiles are then also taken on
    # size x size pixels instead of a full-resolution radiograph (50x fewer for a CR).
    out = _scale(_resize(array, cfg.size), cfg)
    np.clip(out, -1.0, 1.0, out=out)
    if out.shape[0] == 1 and cfg.channels > 1:
        out = np.repeat(out, cfg.channels, axis=0)
    elif out.shape[0] != cfg.channels:
        raise ConfigError(
            f"image has {out.shape[0]} channels but the preprocessing config asks for {cfg.channels}"
        )
    return augment(out, cfg, rng=rng, train=train)


def augment(
    image: np.ndarray, cfg: PreprocessConfig, rng: np.random.Generator | None = None, train: bool = False
) -> np.ndarray:
    """The random part of preprocessing (a horizontal flip in training), kept apart so that a cached,
    preprocessed image is augmented afresh each time it is drawn."""
    if train and cfg.flip:
        rng = rng if rng is not None else np.random.default_rng()
        if rng.random() < 0.5:
            image = image[..., ::-1]
    return np.ascontiguousarray(image, dtype=np.float32)


def deterministic(cfg: PreprocessConfig) -> bool:
    """Whether a file always preprocesses to the same array before augmentation (random NIfTI slice
    triplets do not), which is what makes caching it safe."""
    return cfg.nifti_mode != "random_triplet"


def load_image(
    path: str | Path, cfg: PreprocessConfig, rng: np.random.Generator | None = None, train: bool = False
) -> np.ndarray:
    """Read and preprocess one file exactly as the dataset does (window, header window, NIfTI slices).

    The one place that turns a config into `read_image` arguments, so training, encoding and the controls
    cannot drift apart. Raises `ImageReadError` for an unreadable file.
    """
    array = read_image(
        path, window=cfg.window, nifti=cfg.nifti_selection(), rng=rng, header_window=cfg.header_window
    )
    return preprocess(array, cfg, rng=rng, train=train)
