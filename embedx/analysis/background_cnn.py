"""The step-2 CNN trained on background patches only (Dhar & Shamir used LeNet-5; here seed 000's CNN).

The linear probe on patch statistics (`embedx.analysis.background`) tests signatures one can name (noise
level, grid, offset); a CNN can also pick up textures nobody thought to measure, which is the seeds' point.
The patches of one image are stacked as channels (P, p, p), so the same network sees all corners at once.
Subject-grouped folds as for the probe; out-of-fold balanced accuracy with a subject-bootstrap CI. No
permutation test (it would mean training the CNN hundreds of times); the verdict is the CI against chance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from embedx.analysis._linear import grouped_folds
from embedx.analysis.stats import bootstrap_balanced_accuracy, percentile_ci
from embedx.errors import EmbedxError
from embedx.progress import progress_bar


def cnn_on_patches(
    patches: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int = 5,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 5e-3,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Train the seed-000 CNN on (n, P, p, p) patches with grouped CV; balanced accuracy, CI, chance."""

    y = np.asarray(y).astype(str)
    groups = np.asarray(groups).astype(str)
    classes = np.unique(y)
    if patches.shape[-1] < 8:
        raise EmbedxError(
            f"--cnn needs patches of at least 8 px (three 2x2 poolings), got {patches.shape[-1]}"
        )
    codes = np.searchsorted(classes, y)
    x_all = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
    y_all = torch.from_numpy(codes.astype(np.int64))
    splits = grouped_folds(y, groups, folds, seed)
    pred = np.empty(len(y), dtype=np.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few thousand tiny patches: one thread beats two that fight for the cores
    try:
        _train_folds(
            x_all,
            y_all,
            codes,
            splits,
            patches.shape,
            len(classes),
            pred,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
        )
    finally:
        torch.set_num_threads(threads)
    predicted = classes[pred]
    recalls = [float(np.mean(predicted[y == c] == c)) for c in classes]
    score = float(np.mean(recalls))
    reps = bootstrap_balanced_accuracy(y, predicted, groups, n_boot=n_bootstrap, seed=seed)
    ci = percentile_ci(reps) if n_bootstrap else (float("nan"), float("nan"))
    chance = 1.0 / len(classes)
    return {
        "model": "cnn (seed 000, 3 blocks) on stacked patches",
        "metric": "balanced_accuracy",
        "score": score,
        "ci": [float(ci[0]), float(ci[1])],
        "chance": chance,
        "encoded": bool(ci[0] > chance),
        "folds": len(splits),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
    }


def _train_folds(
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    codes: np.ndarray,
    splits: list,
    shape: tuple,
    n_classes: int,
    pred: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> None:
    """Fit one CNN per grouped fold and write its test-fold predictions into ``pred``."""
    from embedx.models.registry import build_model

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with progress_bar(len(splits) * epochs, "background patches: CNN", unit="epoch") as advance:
        for train, test in splits:
            model = build_model("cnn", None, image_size=shape[-1], channels=shape[1], num_classes=n_classes)
            optimiser = torch.optim.Adam(model.parameters(), lr=lr)
            # Balanced classes in the loss, as balanced accuracy is the score.
            counts = np.bincount(codes[train], minlength=n_classes).astype(np.float32)
            weight = torch.from_numpy(counts.sum() / np.maximum(counts, 1) / n_classes)
            xt, yt = x_all[train], y_all[train]
            model.train()
            for _ in range(epochs):
                order = torch.randperm(len(train), generator=generator)
                for start in range(0, len(train), batch_size):
                    idx = order[start : start + batch_size]
                    if len(idx) < 2:  # batch-norm needs two samples
                        continue
                    loss = F.cross_entropy(model(xt[idx]), yt[idx], weight=weight)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                advance()
            model.eval()
            with torch.no_grad():
                pred[test] = model(x_all[test]).argmax(1).numpy()
