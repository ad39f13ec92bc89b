"""The step-2 CNN trained on background patches only (Dhar & Shamir used LeNet-5; here seed 000's CNN).

The linear probe on patch statistics (`embedx.analysis.background`) tests signatures one can name (noise
level, grid, offset); a CNN can also pick up textures nobody thought to measure, which is the seeds' point.
The patches of one image are stacked as channels (P, p, p), so the same network sees all corners at once.
Subject-grouped folds as for the probe; out-of-fold balanced accuracy with a subject-bootstrap CI. No
permutation test (it would mean training the CNN hundreds of times); the verdict is the CI against chance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from embedx.analysis.folds import stratified_splits
from embedx.analysis.recall_floor import recall_floor
from embedx.analysis.stats import bootstrap_balanced_accuracy, count_dropped, percentile_ci
from embedx.errors import EmbedxError
from embedx.progress import progress_bar
from embedx.training.optimizers import adam


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
    splits = stratified_splits(y, groups, folds, seed)
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
    ci = recall_floor(score, ci, y, predicted, groups)[0]  # a recall at 0 or 1 resamples to no width
    chance = 1.0 / len(classes)
    return {
        "model": "cnn (seed 000, 3 blocks) on stacked patches",
        "metric": "balanced_accuracy",
        "score": score,
        "ci": [float(ci[0]), float(ci[1])],
        "chance": chance,
        "encoded": bool(ci[0] > chance),
        "bootstrap": {"resamples": n_bootstrap, "dropped": count_dropped(reps), "unit": "subject"},
        "folds": len(splits),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
    }


def fit_seed000_cnn(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    on_epoch: Callable[[], None] | None = None,
) -> torch.nn.Module:
    """Seed 000's 3-block CNN fitted with Adam and a class-balanced cross-entropy; returned in eval mode.

    Balanced classes in the loss because the controls score balanced accuracy and AUROC, and a group with a
    rare label must not be learnt as "always negative". Batches of one are skipped (batch-norm needs two).
    """
    from embedx.models.registry import build_model

    model = build_model("cnn", None, image_size=x.shape[-1], channels=x.shape[1], num_classes=n_classes)
    model = model.to(x.device)
    optimiser = adam(model.parameters(), lr=lr)
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = (counts.sum() / counts.clamp(min=1) / n_classes).to(x.device)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx], weight=weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if on_epoch is not None:
            on_epoch()
    return model.eval()


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
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with progress_bar(len(splits) * epochs, "background patches: CNN", unit="epoch") as advance:
        for train, test in splits:
            model = fit_seed000_cnn(x_all[train], y_all[train], n_classes, epochs=epochs,
                                    batch_size=batch_size, lr=lr, generator=generator, on_epoch=advance)
            with torch.no_grad():
                pred[test] = model(x_all[test]).argmax(1).numpy()
