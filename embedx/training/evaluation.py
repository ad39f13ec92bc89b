"""What an evaluation measures and draws, and the DAE's z_sem statistics at the end of a run.

Evaluation uses the weights the run would ship (the EMA average where EMA is on) and its own seeded random
stream (`fork_rng`), so the validation loss is comparable from one evaluation to the next and evaluating
never changes what training draws next (which exact resume relies on). Validation images are split across
processes and the sums reduced; the PNGs are drawn by the main process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedx.data.dataset import ImageDataset
from embedx.progress import progress_bar
from embedx.training.config import TrainConfig
from embedx.training.data import RunData, shard_loader
from embedx.training.figures import save_confusion_matrix, save_image_grid


def _batches(dataset: ImageDataset, rows: range | list[int], batch_size: int, workers: int,
             device: torch.device, failed: dict[int, str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of the readable images; an unreadable one is skipped and recorded in `failed` (row: reason)."""
    for batch in shard_loader(dataset, list(rows), batch_size, workers):
        if failed is not None:
            for row, reason in batch.get("failed", []):
                failed.setdefault(int(row), reason)
        if len(batch["row"]) == 0:
            continue
        out = {"image": batch["image"].to(device)}
        if "label" in batch:
            out["label"] = batch["label"].to(device)
        yield out


def _validation(model: nn.Module, data: RunData, config: TrainConfig, accelerator: Any,
                failed: dict[int, str] | None = None) -> dict[str, float]:
    """Mean validation loss and its parts; CNN: accuracy, balanced accuracy and the confusion matrix;
    DAE: the z_sem-usage gap (loss with z_sem shuffled across the batch minus with the right one)."""
    assert data.val is not None
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    n = min(len(data.val), config.eval.max_val_samples)
    local_batch = max(2, config.optim.batch_size // world)
    sums: dict[str, float] = {}
    count = 0
    k = len(data.classes) if data.classes else 0
    confusion = torch.zeros((k, k), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(config.optim.seed + 104729 + rank)
    for batch in _batches(data.val, range(rank, n, world), local_batch, 0, device, failed):
        size = batch["image"].shape[0]
        loss, parts = model.training_loss(batch)
        values = {**parts, "loss": float(loss)}
        if config.model == "cnn":
            predicted = model(batch["image"]).argmax(1)
            confusion += torch.bincount(batch["label"] * k + predicted, minlength=k * k).reshape(k, k)
        if config.model == "dae" and size >= 2:
            values.update(model.code_usage(batch, generator))
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + float(value) * size
        count += size
    parts_list: list[tuple[dict[str, float], int, list[list[int]]]] = [(sums, count, confusion.tolist())]
    if world > 1:
        from accelerate.utils import gather_object

        parts_list = gather_object(parts_list)
    total: dict[str, float] = {}
    total_count = 0
    matrix = np.zeros((k, k), dtype=np.int64)
    for part_sums, part_count, part_confusion in parts_list:
        for key, value in part_sums.items():
            total[key] = total.get(key, 0.0) + value
        total_count += part_count
        if k:
            matrix += np.asarray(part_confusion, dtype=np.int64)
    out = {key: value / max(total_count, 1) for key, value in total.items()}
    if k:
        out.pop("accuracy", None)
        support = matrix.sum(axis=1)
        recall = np.diag(matrix)[support > 0] / support[support > 0]
        out["accuracy"] = float(np.trace(matrix) / max(matrix.sum(), 1))
        out["balanced_accuracy"] = float(recall.mean()) if recall.size else float("nan")
        out["_confusion"] = matrix  # type: ignore[assignment]
    return out


def _eval_images(data: RunData, count: int) -> torch.Tensor | None:
    """The first readable `count` validation images (training images when there is no validation split)."""
    images = []
    source = data.val if data.val is not None else data.train
    for i in range(len(source)):
        item = source[i] if source is data.val else source[(0, i)]
        if "image" in item:
            images.append(item["image"])
        if len(images) == count:
            break
    return torch.stack(images) if len(images) >= 2 else None


@torch.no_grad()
def evaluate(model: nn.Module, data: RunData, config: TrainConfig, run_dir: Path, *, step: int,
             samples: int, accelerator: Any, failed: dict[int, str] | None = None) -> dict[str, float]:
    """Validation metrics (all processes) and the eval PNG (main process); returns the metrics.

    Unreadable validation images are recorded in `failed` (row: reason), so the run's skipped.csv lists them
    with the training ones."""
    was_training = model.training
    model.eval()
    device = accelerator.device
    devices = [device.index or 0] if device.type == "cuda" else []
    values: dict[str, float] = {}
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.optim.seed + 7919 + accelerator.process_index)
        if data.val is not None:
            values = _validation(model, data, config, accelerator, failed)
        if accelerator.is_main_process:
            folder = Path(run_dir) / "eval"
            title = f"{config.model} after {samples:,} samples (step {step})"
            matrix = values.pop("_confusion", None)
            if config.model == "cnn":
                if matrix is not None:
                    save_confusion_matrix(matrix, data.classes or [], folder / f"confusion-{samples:09d}.png",
                                          f"{title}: validation, label {data.label!r}")
            else:
                images = _eval_images(data, config.eval.images)
                if images is not None:
                    generator = torch.Generator(device=device).manual_seed(config.optim.seed)
                    rows = model.eval_images(images.to(device), generator)
                    save_image_grid(rows, folder / f"images-{samples:09d}.png", title)
        values.pop("_confusion", None)
    model.train(was_training)
    return values


@torch.no_grad()
def compute_latent_stats(model: nn.Module, data: RunData, config: TrainConfig,
                         device: torch.device) -> torch.Tensor:
    """z_sem of (a seeded sample of at most `eval.latent_stats_samples`) training images, unaugmented."""
    rows = data.train.rows
    cap = config.eval.latent_stats_samples
    if len(rows) > cap:
        rows = np.sort(np.random.default_rng(config.optim.seed).choice(rows, cap, replace=False))
    dataset = ImageDataset(data.train.manifest, config.data.preprocess, rows=rows, train=False,
                           seed=config.optim.seed)
    was_training = model.training
    model.eval()
    codes = []
    batch_size = max(2, config.optim.batch_size)
    with progress_bar(len(dataset), "z_sem statistics", unit="img") as advance:
        for batch in _batches(dataset, range(len(dataset)), batch_size, config.data.workers, device):
            codes.append(model.encode(batch["image"]).float().cpu())
            advance(batch["image"].shape[0])
    model.train(was_training)
    return torch.cat(codes)
