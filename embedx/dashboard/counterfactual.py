"""Counterfactuals from a diffusion autoencoder: "what the model thinks site B looks like" (no Streamlit).

The probe of every analysis (a class-balanced linear SVM) fitted on z_sem separates two values of an
attribute (site A vs site B). Its normal, mapped back to raw z_sem units, is the direction the latent space
uses for that attribute. Moving an image's z_sem along it by a multiple of the distance between the two
group means, and decoding with DDIM from the image's own stochastic code x_T, changes what the semantic code
says about the attribute while x_T keeps the rest (pose, fine detail). x_T comes from the store where
`encode --stochastic` saved it; otherwise it is found by DDIM inversion of the store's 64 px thumbnail,
resized to the model's input size and conditioned on the stored z_sem; `noise="fixed"` skips inversion and
decodes every image from one seeded noise draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from embedx.errors import EmbedxError

XTSource = Literal["stored", "inverted", "fixed"]


@dataclass(frozen=True)
class Direction:
    """A unit vector in raw z_sem space from group A to group B, and how far apart the group means lie."""

    vector: np.ndarray
    distance: float
    accuracy: float
    value_a: str
    value_b: str
    n_a: int
    n_b: int


def probe_direction(
    z: np.ndarray,
    labels: np.ndarray,
    value_a: str,
    value_b: str,
    seed: int = 0,
    max_per_value: int = 5_000,
    groups: np.ndarray | None = None,
) -> Direction:
    """The probe of every analysis (class-balanced linear SVM, `LinearProbe`) A vs B; its normal in raw units.

    The decision function is w·(z − μ)/σ, so the raw-space normal is w/σ. `distance` is the gap between the
    two group means projected on that normal: moving by 1× of it takes an average A to an average B along
    the probe's axis. `accuracy` is the out-of-fold balanced accuracy (folds grouped by `groups`, the
    subjects, when given), to say how separable the groups are at all. At most `max_per_value` images per
    value are used (seeded), so the fit stays interactive on big stores.
    """
    from embedx.analysis.probe_core import ProbeConfig, out_of_fold_scores

    labels = np.asarray(labels).astype(str)
    keep = np.isin(labels, [value_a, value_b]) & ~np.isnan(z).any(axis=1)
    rng = np.random.default_rng(seed)
    for value in (value_a, value_b):  # a seeded subset per value keeps the fit interactive at 220k rows
        members = np.flatnonzero(keep & (labels == value))
        if len(members) > max_per_value:
            keep[rng.choice(members, len(members) - max_per_value, replace=False)] = False
    x, y = z[keep].astype(np.float64), (labels[keep] == value_b).astype(int)
    subjects = np.arange(len(y)) if groups is None else np.asarray(groups)[keep]
    n_a, n_b = int((y == 0).sum()), int((y == 1).sum())
    if min(n_a, n_b) < 5:
        raise ValueError(f"need at least 5 encoded images of each value ({value_a}: {n_a}, {value_b}: {n_b})")
    config = ProbeConfig(seed=seed)
    try:
        scores, _, _ = out_of_fold_scores(x, y, subjects, config)
    except EmbedxError as err:
        raise ValueError(str(err)) from err
    predicted = (scores > 0).astype(int)
    accuracy = float(np.mean([np.mean(predicted[y == c] == c) for c in (0, 1)]))
    probe = config.estimator("classification").fit(x, y, subjects)
    normal = probe.direction()
    unit = normal / np.linalg.norm(normal)
    distance = float((x[y == 1].mean(0) - x[y == 0].mean(0)) @ unit)
    return Direction(unit.astype(np.float32), distance, accuracy, value_a, value_b, n_a, n_b)


def thumbnails_to_input(thumbs: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(B, 64, 64) uint8 thumbnails -> (B, C, size, size) float32 in [-1, 1], the model's input range."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(thumbs, dtype=np.float32) / 127.5 - 1.0)[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.repeat(1, channels, 1, 1).clamp(-1, 1).numpy()


def counterfactuals(
    model: object,
    z: np.ndarray,
    direction: Direction,
    alphas: np.ndarray,
    *,
    images: np.ndarray | None = None,
    x_T: np.ndarray | None = None,
    steps: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, XTSource]:
    """Decode z_sem + α·distance·u of each image for every α: ((B, len(α), C, S, S) in [-1, 1], x_T source).

    `x_T` given: used as is ("stored"). Else `images` given: DDIM inversion conditioned on z ("inverted").
    Else one seeded noise draw shared by all images ("fixed"). α = 0 is the model's own reconstruction.
    """
    import torch

    z_t = torch.as_tensor(np.asarray(z, dtype=np.float32))
    batch = z_t.shape[0]
    if x_T is not None:
        start, source = torch.as_tensor(np.asarray(x_T, dtype=np.float32)), "stored"
    elif images is not None:
        start = model.encode_stochastic(torch.as_tensor(images), z_t, steps)  # type: ignore[attr-defined]
        source = "inverted"
    else:
        size, channels = model.image_size, model.channels  # type: ignore[attr-defined]
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn((1, channels, size, size), generator=generator).repeat(batch, 1, 1, 1)
        source = "fixed"
    unit = torch.as_tensor(direction.vector)
    outputs = []
    for alpha in np.asarray(alphas, dtype=np.float32):
        moved = z_t + float(alpha) * direction.distance * unit
        outputs.append(model.decode(moved, start, steps))  # type: ignore[attr-defined]
    stacked = torch.stack(outputs, dim=1)
    return stacked.numpy(), source  # type: ignore[return-value]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] (…, C, S, S) -> uint8 (…, S, S) for display (first channel)."""
    return np.clip((np.asarray(images)[..., 0, :, :] + 1.0) * 127.5, 0, 255).astype(np.uint8)
