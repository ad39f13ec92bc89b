"""Training data order that can be resumed exactly, and the train/val datasets of a run.

The order of epoch `e` is a permutation drawn from (seed, e) alone, cut into global batches, and each
process takes its slice of every global batch. The position in the data is then just (epoch, batch), which
a checkpoint stores; resuming rebuilds the same permutation and starts at that batch, with no replay. The
permutation does not depend on the number of processes, so a run may even resume on another layout.
Random augmentation draws from (seed, epoch, row) for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from embedx.data.dataset import ImageDataset, collate_skip_failed
from embedx.data.manifest import Manifest
from embedx.data.splits import train_val_test_split
from embedx.errors import ConfigError
from embedx.training.config import TrainConfig


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class EpochBatchSampler:
    """Endless stream of this process's share of each global batch, as (epoch, index) pairs.

    Incomplete last batches of an epoch are dropped so that every step sees exactly `global_batch` images
    (sample counts and schedules stay exact).
    """

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int,
                 start_epoch: int = 0, start_batch: int = 0) -> None:
        if global_batch % world:
            raise ConfigError(f"optim.batch_size: the global batch {global_batch} must divide evenly "
                              f"across {world} processes")
        if n < global_batch:
            raise ConfigError(f"optim.batch_size: the training split has {n} images, fewer than one "
                              f"global batch ({global_batch})")
        self.n, self.global_batch, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.local = global_batch // world
        self.batches_per_epoch = n // global_batch
        self.start_epoch, self.start_batch = start_epoch, start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = self.start_epoch, self.start_batch
        while True:
            order = epoch_permutation(self.n, self.seed, epoch)
            for b in range(first, self.batches_per_epoch):
                chunk = order[b * self.global_batch : (b + 1) * self.global_batch]
                mine = chunk[self.rank * self.local : (self.rank + 1) * self.local]
                yield [(epoch, int(i)) for i in mine]
            epoch, first = epoch + 1, 0

    def advance(self, epoch: int, batch: int) -> tuple[int, int]:
        """The data position after one more global batch."""
        batch += 1
        return (epoch + 1, 0) if batch >= self.batches_per_epoch else (epoch, batch)


class TrainImages(ImageDataset):
    """An `ImageDataset` indexed by (epoch, index): augmentation randomness is a function of
    (seed, epoch, row), never of how many images a worker happened to read before (exact resume)."""

    _epoch = 0

    def _rng_for(self, row: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._epoch, row])

    def __getitem__(self, key: Any) -> dict[str, Any]:  # type: ignore[override]
        epoch, index = key
        self._epoch = int(epoch)
        return super().__getitem__(int(index))


@dataclass
class RunData:
    """The datasets of one run, built the same way on every process."""

    train: TrainImages
    val: ImageDataset | None
    classes: list[Any] | None
    label: str | None


def build_datasets(manifest: Manifest, config: TrainConfig) -> RunData:
    """Subject-grouped train/val split (stratified on the label for the CNN) and the two datasets."""
    data = config.data
    label = data.label if config.model == "cnn" else None
    if config.model == "cnn" and label is None:
        raise ConfigError("data.label: the CNN needs a categorical attribute to predict "
                          "(e.g. --set data.label=site)")
    table = manifest.table
    if label is not None:
        if label not in table.columns:
            raise ConfigError(f"data.label: {label!r} is not a column of the manifest "
                              f"(attributes: {', '.join(manifest.attributes)})")
        spec = manifest.schema.get(label)
        if spec is not None and spec.kind == "continuous":
            raise ConfigError(f"data.label: {label!r} is continuous; the CNN needs a categorical attribute")
    stratify = data.stratify or label
    if data.val_fraction > 0:
        split = train_val_test_split(table, (1.0 - data.val_fraction, data.val_fraction, 0.0),
                                     stratify=stratify, seed=data.split_seed)
        train_rows, val_rows = split.train, split.val
    else:
        train_rows, val_rows = np.arange(len(table)), np.arange(0)
    seed = config.optim.seed
    # Only without DataLoader workers: each worker would fill a cache of its own with its share of the
    # images (memory times the workers, most images still decoded once per worker).
    train = TrainImages(manifest, data.preprocess, rows=train_rows, label=label, train=True, seed=seed,
                        cache_mb=data.cache_mb if data.workers == 0 else 0.0)
    val = (ImageDataset(manifest, data.preprocess, rows=val_rows, label=label, train=False, seed=seed)
           if len(val_rows) else None)
    if label is not None and (train.classes is None or len(train.classes) < 2):
        raise ConfigError(f"data.label: {label!r} needs at least two classes to train a classifier")
    return RunData(train=train, val=val, classes=train.classes, label=label)


def train_loader(data: RunData, sampler: EpochBatchSampler, workers: int, seed: int) -> DataLoader:
    # An explicit generator: creating the iterator must not draw from the global torch RNG.
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(data.train, batch_sampler=sampler, num_workers=workers, collate_fn=collate_skip_failed,
                      pin_memory=torch.cuda.is_available(), generator=generator,
                      persistent_workers=workers > 0)


def shard_loader(dataset: ImageDataset, rows: Sequence[int], batch_size: int, workers: int) -> DataLoader:
    """In-order loader over some positions of `dataset` (evaluation, latent statistics)."""
    subset = torch.utils.data.Subset(dataset, list(rows))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_skip_failed, generator=torch.Generator().manual_seed(0))
