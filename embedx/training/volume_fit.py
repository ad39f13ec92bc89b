"""Supervised 3-D training on Accelerate, for seed 001's classifier and U-Net.

It keeps the contracts of `embedx train`'s loop, on the same parts: the Accelerate set-up (`accel`: bf16
on a GPU, CPU processes joined into one group), the global batch split across processes by the loop's
`EpochBatchSampler` (the epoch's order a function of (seed, epoch) alone), and augmentation drawn from
(seed, epoch, row), so a run resumed from its per-epoch checkpoint continues exactly where it stopped. What
differs is the data (whole volumes cached in memory rather than images streamed from a manifest) and the
loss (cross-entropy, or MONAI's Dice loss).

A checkpoint (model, optimiser, epochs done) is written atomically after every epoch by the main process
and removed by the caller once the model's scores are safely recorded.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedx.errors import EmbedxError
from embedx.training.checkpoint import fsync_path, torch_load_safe
from embedx.training.data import EpochBatchSampler
from embedx.training.optimizers import adam, load_state

log = logging.getLogger(__name__)

AUGMENTS = ("none", "flip", "affine")


@dataclass(frozen=True)
class FitSettings:
    task: str  # classify | segment
    epochs: int
    batch_size: int  # global, over all processes
    lr: float
    seed: int
    augment: str = "flip"


def _augmenter(augment: str, segment: bool) -> Any:
    """MONAI's random flips (left-right in RAS) and, with `affine`, small rotations, shifts and zooms."""
    if augment not in AUGMENTS:
        raise EmbedxError(f"--augment {augment!r}: use {', '.join(AUGMENTS)}")
    if augment == "none":
        return None
    from monai.transforms import Compose, RandAffined, RandFlipd

    keys = ["image", "label"] if segment else ["image"]
    parts: list[Any] = [RandFlipd(keys=keys, prob=0.5, spatial_axis=0)]
    if augment == "affine":
        parts.append(
            RandAffined(
                keys=keys,
                prob=0.5,
                rotate_range=(0.15, 0.15, 0.15),
                scale_range=(0.05,) * 3,
                translate_range=(3, 3, 3),
                padding_mode="border",
                mode=("bilinear", "nearest") if segment else "bilinear",
            )
        )
    return Compose(parts)


def _batch(
    x: torch.Tensor,
    target: torch.Tensor,
    rows: list[int],
    epoch: int,
    settings: FitSettings,
    augment: Any,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    from monai.data import get_track_meta, set_track_meta

    segment = settings.task == "segment"
    images, labels = [], []
    tracking = get_track_meta()
    set_track_meta(False)  # plain tensors: MONAI's metadata costs more than the flips themselves
    try:
        for row in rows:
            image = x[row].float()
            label = target[row].float() if segment else target[row]
            if augment is not None:
                draw = int(np.random.default_rng([settings.seed, epoch, row]).integers(2**31 - 1))
                augment.set_random_state(seed=draw)
                item = augment({"image": image, "label": label} if segment else {"image": image})
                image = torch.as_tensor(item["image"])
                label = torch.as_tensor(item["label"]) if segment else label
            images.append(image)
            labels.append(label)
    finally:
        set_track_meta(tracking)
    return torch.stack(images).to(device), torch.stack(labels).to(device)


def _save(path: Path, model: nn.Module, optimizer: Any, epochs_done: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epochs_done": epochs_done}, tmp
    )
    fsync_path(tmp)
    os.replace(tmp, path)


def fit_volume_model(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    settings: FitSettings,
    *,
    accelerator: Any,
    checkpoint: Path | None = None,
    on_epoch: Callable[[int], Any] | None = None,
) -> nn.Module:
    """Train `model` on volumes `x` (n, 1, D, H, W) with class labels or masks `target`; returns it unwrapped.

    With `checkpoint`, an existing file is resumed from and the state is saved after each epoch.
    """
    from monai.losses import DiceLoss

    n, world, rank = len(x), accelerator.num_processes, accelerator.process_index
    batch = min(settings.batch_size, n)
    batch -= batch % world
    if batch < world:
        raise EmbedxError(f"{n} training volumes cannot fill one batch across {world} processes")
    sampler_start, optimizer = 0, adam(model.parameters(), lr=settings.lr)
    if checkpoint is not None and checkpoint.exists():
        state = torch_load_safe(checkpoint)
        model.load_state_dict(state["model"])
        load_state(optimizer, state["optimizer"])
        sampler_start = int(state["epochs_done"])
        log.info("resuming %s after epoch %d", checkpoint.name, sampler_start)
        if on_epoch is not None:
            on_epoch(sampler_start)
    loss_fn: Callable[..., torch.Tensor] = (
        nn.CrossEntropyLoss() if settings.task == "classify" else DiceLoss(sigmoid=True, batch=True)
    )
    sampler = EpochBatchSampler(n, batch, rank, world, settings.seed, sampler_start, 0)
    # Cosine decay to zero over the run: a short run ends settled rather than mid-step (a function of the
    # epoch alone, so a resumed run follows the same schedule).
    total = settings.epochs * sampler.batches_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))
    )
    if sampler_start:
        with warnings.catch_warnings():  # fast-forwarding the schedule steps it before any optimiser step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(sampler_start * sampler.batches_per_epoch):
                schedule.step()
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    batches = iter(sampler)
    augment = _augmenter(settings.augment, settings.task == "segment")
    for epoch in range(sampler_start, settings.epochs):
        wrapped.train()
        for _ in range(sampler.batches_per_epoch):
            rows = [int(i) for _, i in next(batches)]
            images, labels = _batch(x, target, rows, epoch, settings, augment, accelerator.device)
            with accelerator.autocast():
                out = wrapped(images)
            loss = loss_fn(out.float(), labels)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
        if checkpoint is not None:
            if accelerator.is_main_process:
                _save(checkpoint, accelerator.unwrap_model(wrapped), optimizer, epoch + 1)
            accelerator.wait_for_everyone()
        if on_epoch is not None:
            on_epoch(1)
    model = accelerator.unwrap_model(wrapped)
    accelerator.free_memory()
    return model.eval()


def predict_volumes(
    model: nn.Module, x: torch.Tensor, task: str, *, accelerator: Any, batch_size: int = 8
) -> torch.Tensor:
    """P(positive) per volume (classify) or the per-voxel lesion probability map (segment), on the CPU."""
    out = []
    with torch.no_grad(), accelerator.autocast():
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size].to(accelerator.device).float()).float()
            probs = torch.softmax(logits, dim=1)[:, 1] if task == "classify" else torch.sigmoid(logits)
            out.append(probs.cpu())
    return torch.cat(out) if out else torch.empty(0)
