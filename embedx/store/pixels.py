"""The `pixels` reference embedding: what plain pixels already reveal, with no training.

A probe on a model's latents says what that model kept; this says what its inputs carry. Each image is
preprocessed as a model would see it (`--pixel-size`, percentile scaling), then described by

- a PCA of the image average-pooled to `pool` x `pool` (the layout: anatomy, view, collimation), fitted on a
  random subsample of the cohort (`fit_rows`, so 220k images never sit in memory at once), and
- acquisition statistics of the full preprocessed image: intensity moments and quantiles, clipping,
  high-frequency and gradient energy, a noise estimate, and the image border's level and spread (where
  collimation, grids and detector noise show without anatomy).

The reference is wrapped as an encoder (`embed(images)` on a batch) so that `embedx encode` runs it through
the same loader, resume, multi-process and failure handling as a trained model. The fitted PCA is kept in
the store as plain arrays (never pickle) beside the latents, so an encode that resumes or a grown manifest
projects new rows with the same axes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedx.data.dataset import ImageDataset, make_loader
from embedx.data.manifest import Manifest
from embedx.data.preprocess import PreprocessConfig
from embedx.errors import EmbedxError
from embedx.store.encoder import Encoder

log = logging.getLogger(__name__)

STAT_NAMES = (
    "mean", "sd", "skewness", "kurtosis", "q01", "q05", "q50", "q95", "q99", "clipped_low", "clipped_high",
    "highfreq_energy", "gradient_energy", "noise_sigma", "border_mean", "border_sd",
)
_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def acquisition_stats(images: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) in [-1, 1] -> (B, len(STAT_NAMES)); the channel mean is described (a grey image)."""
    grey = images.float().mean(dim=1, keepdim=True)
    flat = grey.flatten(1)
    mean = flat.mean(1)
    centred = flat - mean[:, None]
    var = centred.pow(2).mean(1)
    sd = var.clamp_min(1e-12).sqrt()
    skew = centred.pow(3).mean(1) / sd.pow(3)
    kurt = centred.pow(4).mean(1) / var.clamp_min(1e-12).pow(2) - 3.0
    quantiles = torch.quantile(flat, torch.tensor([0.01, 0.05, 0.5, 0.95, 0.99], device=flat.device), dim=1).T
    clipped_low = (flat <= -0.999).float().mean(1)
    clipped_high = (flat >= 0.999).float().mean(1)
    lap = F.conv2d(grey, _LAPLACE.to(grey)[None, None])
    highfreq = lap.pow(2).flatten(1).mean(1) / var.clamp_min(1e-6)
    gx, gy = grey[..., :, 1:] - grey[..., :, :-1], grey[..., 1:, :] - grey[..., :-1, :]
    gradient = 0.5 * (gx.abs().flatten(1).mean(1) + gy.abs().flatten(1).mean(1))
    # Immerkaer (1996): sigma = sqrt(pi / 2) / (6 (W - 2)(H - 2)) * sum |I * M|
    residual = F.conv2d(grey, _IMMERKAER.to(grey)[None, None]).abs().flatten(1).mean(1)
    noise = residual * math.sqrt(math.pi / 2) / 6
    size = grey.shape[-1]
    edge = max(1, size // 16)
    frame = torch.ones_like(grey[0, 0], dtype=torch.bool)
    frame[edge:-edge, edge:-edge] = False
    border = grey[:, 0][:, frame]
    stats = [mean, sd, skew, kurt, *quantiles.unbind(1), clipped_low, clipped_high, highfreq, gradient, noise,
             border.mean(1), border.std(1)]
    return torch.stack(stats, dim=1)


class PixelFeatures(nn.Module):
    """The reference as a module: PCA of the pooled image, then the acquisition statistics."""

    def __init__(self, pool: int, mean: np.ndarray, components: np.ndarray) -> None:
        super().__init__()
        self.pool = int(pool)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("components", torch.as_tensor(components, dtype=torch.float32))

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), self.pool).flatten(1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        pcs = (self.pooled(images) - self.mean) @ self.components.T
        return torch.cat([pcs, acquisition_stats(images)], dim=1)


@dataclass
class PixelReference(Encoder):
    """Looks like a trained run to `embedx encode` (model, preprocess, kind, checkpoint hash, provenance)."""

    model: PixelFeatures
    preprocess: PreprocessConfig
    fit_rows: int
    explained_variance: float
    kind: ClassVar[str] = "pixels"

    @property
    def checkpoint_hash(self) -> str:
        digest = hashlib.sha256(self.preprocess.model_dump_json().encode())
        digest.update(str(self.model.pool).encode())
        for array in (self.model.mean, self.model.components):
            digest.update(array.cpu().numpy().astype(np.float32).tobytes())
        return digest.hexdigest()

    def arrays(self) -> dict[str, np.ndarray]:
        """What the store keeps to project later rows on the same axes (plain arrays, no pickle)."""
        return {"reference_mean": self.model.mean.cpu().numpy(),
                "reference_components": self.model.components.cpu().numpy()}

    def describe(self) -> dict[str, Any]:
        return {
            "what": "pixel reference: PCA of the preprocessed image average-pooled to pool x pool, then "
                    "acquisition statistics",
            "pool": self.model.pool, "components": int(self.model.components.shape[0]),
            "statistics": list(STAT_NAMES), "fit_rows": self.fit_rows,
            "explained_variance": round(self.explained_variance, 4),
        }


def pixel_preprocess(size: int, channels: int = 1) -> PreprocessConfig:
    return PreprocessConfig(size=size, channels=channels, intensity="percentile")


def fit_pixel_reference(
    manifest: Manifest,
    size: int = 128,
    pool: int = 32,
    components: int = 128,
    fit_rows: int = 10_000,
    seed: int = 0,
    workers: int = 0,
    batch_size: int = 64,
) -> PixelReference:
    """Fit the PCA on a seeded random subsample of readable rows."""
    from sklearn.decomposition import PCA

    if pool > size:
        raise EmbedxError(f"--pool ({pool}) cannot exceed --pixel-size ({size})")
    pre = pixel_preprocess(size)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(len(manifest))[: max(2, fit_rows)])
    width = pool * pool * pre.channels
    module = PixelFeatures(pool, np.zeros(width), np.zeros((0, width)))
    loader = make_loader(ImageDataset(manifest, pre, rows=rows, train=False), batch_size=batch_size,
                         shuffle=False, workers=workers)
    pooled = []
    with torch.no_grad():
        for batch in loader:
            if batch["row"].numel():
                pooled.append(module.pooled(batch["image"]).numpy())
    if not pooled:
        raise EmbedxError(f"{manifest.source}: none of the {rows.size} sampled images could be read")
    data = np.concatenate(pooled).astype(np.float64)
    k = int(min(components, data.shape[0] - 1, data.shape[1]))
    if k < 1:
        raise EmbedxError(f"the pixel reference needs at least 2 readable images, found {data.shape[0]}")
    pca = PCA(n_components=k, svd_solver="randomized" if k < 0.8 * min(data.shape) else "full",
              random_state=seed).fit(data)
    log.info("pixel reference: PCA of %d pooled images, %d components, %.1f %% of the variance",
             data.shape[0], k, 100 * pca.explained_variance_ratio_.sum())
    return PixelReference(PixelFeatures(pool, pca.mean_, pca.components_), pre, int(data.shape[0]),
                          float(pca.explained_variance_ratio_.sum()))


def reference_from_store(arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> PixelReference:
    """Rebuild the reference an earlier encode fitted, from the arrays and attrs it left in the store."""
    described = json.loads(str(attrs.get("config", "{}")))
    pre = PreprocessConfig.model_validate_json(str(attrs["preprocess"]))
    module = PixelFeatures(int(described["pool"]), arrays["reference_mean"], arrays["reference_components"])
    return PixelReference(module, pre, int(described.get("fit_rows", 0)),
                          float(described.get("explained_variance", float("nan"))))


def encode_pixels(
    manifest: str | Path | Manifest,
    store_path: str | Path,
    name: str = "pixels",
    *,
    size: int = 128,
    pool: int = 32,
    components: int = 128,
    fit_rows: int = 10_000,
    seed: int = 0,
    batch_size: int = 64,
    workers: int | None = None,
    cohort: str = "",
) -> Any:
    """Fit the reference (or reuse the one this store already holds under `name`), then encode with it."""
    from embedx.data.manifest import load_manifest
    from embedx.store.encode import encode
    from embedx.store.h5store import Store

    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, check_files=False)
    reference = None
    if Path(store_path).exists():
        with Store.open(store_path, "a") as store:  # a writer's open: repairs a store a full disk left
            if name in store.models():
                info = store.embedding_info(name)
                if info.get("kind") != "pixels":
                    raise EmbedxError(f"{store_path}: {name!r} holds {info.get('kind')} latents, not a pixel "
                                      "reference; choose another --name")
                reference = reference_from_store(store.model_arrays(name), info)
    if reference is not None and (reference.preprocess.size, reference.model.pool) != (size, pool):
        log.warning("%s: %r was fitted at --pixel-size %d, --pool %d; new rows are encoded the same way",
                    store_path, name, reference.preprocess.size, reference.model.pool)
    if reference is None:
        reference = fit_pixel_reference(man, size=size, pool=pool, components=components, fit_rows=fit_rows,
                                        seed=seed, workers=0 if workers is None else workers,
                                        batch_size=batch_size)
    return encode(reference, man, store_path, name, batch_size=batch_size, workers=workers, cohort=cohort)
