"""The PNGs an evaluation writes: image grids (reconstructions, samples) and a confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch


def _tile(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> one row (H, B*W) grey or (H, B*W, 3) colour, in [0, 1]."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    if x.ndim == 3:
        x = x[:, None]
    x = x[:, :3] if x.shape[1] == 3 else x[:, :1]
    row = torch.cat(list(x), dim=-1)  # (C, H, B*W)
    array = row.permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def save_image_grid(rows: Mapping[str, torch.Tensor], path: Path, title: str) -> Path:
    """One labelled row per entry (input, reconstruction, samples ...), images side by side."""
    tiles = {name: _tile(t) for name, t in rows.items() if t is not None and t.numel()}
    width = max(t.shape[1] for t in tiles.values())
    height = sum(t.shape[0] for t in tiles.values())
    scale = max(1.0, 96 / max(t.shape[0] for t in tiles.values()))
    fig, axes = plt.subplots(len(tiles), 1, squeeze=False,
                             figsize=(max(4.0, width * scale / 100 + 1.5), height * scale / 100 + 0.6))
    for ax, (name, tile) in zip(axes[:, 0], tiles.items(), strict=True):
        ax.imshow(tile, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_confusion_matrix(matrix: np.ndarray, classes: Sequence[Any], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (true class per row) with counts in the cells."""
    matrix = np.asarray(matrix, dtype=np.int64)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(2.0 + 0.6 * k, 1.6 + 0.6 * k))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    labels = [str(c) for c in classes]
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
