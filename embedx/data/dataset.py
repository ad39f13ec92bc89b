"""The torch Dataset over a manifest, and the DataLoader that training and encoding share.

A corrupt image must not end a ten-hour run: `__getitem__` turns a read failure into `{"row", "error"}`,
and `collate_skip_failed` drops those items from the batch and lists them in `batch["failed"]`, so the
caller can count and report them. `row` there is the 0-based table position; anything shown to the user
names it with `Manifest.where` / `Manifest.row_ref` ("row N (line L)", N from 1, as `embedx data check`).
A failed file is remembered (`embedx.data.failures`): it is not decoded again in the same process, and it
is warned about once, not once per epoch.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from embedx.data import failures
from embedx.data.manifest import Manifest
from embedx.data.preprocess import PreprocessConfig, augment, deterministic, load_image
from embedx.errors import ImageReadError, ManifestError

log = logging.getLogger(__name__)


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before strings, each in natural order, so mixed-type label columns still sort."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


class ImageCache:
    """Preprocessed images kept in memory for a cohort that fits in `budget_mb` as a whole.

    Training reads every image once per epoch; on a small cohort (a pilot study, the demo) decoding and
    resizing the same file again each epoch costs a CPU-trained model up to a fifth of its time. A cohort
    that does not fit is not cached at all: with random order, a partial cache would hit too rarely to
    pay for its memory. Images are cached before augmentation and copied out, so each draw is augmented
    afresh and a cached run trains on exactly the arrays an uncached one reads. A file changed on disk
    during the run is not read again.
    """

    def __init__(self, n_images: int, config: PreprocessConfig, budget_mb: float) -> None:
        image_bytes = config.channels * config.size * config.size * 4
        self.enabled = deterministic(config) and n_images * image_bytes <= budget_mb * 2**20
        self._images: dict[int, np.ndarray] = {}

    def get(self, index: int) -> np.ndarray | None:
        return self._images.get(index)

    def put(self, index: int, image: np.ndarray) -> None:
        if self.enabled:
            self._images[index] = image


class ImageDataset(Dataset):
    """Images of `manifest` (optionally only `rows`), preprocessed; with `label`, its target per image.

    `rows` are positions in `manifest.table`; rows whose label is missing are excluded (and logged).
    Categorical and binary labels become class indices into `self.classes`; continuous ones floats.
    `cache_mb` > 0 keeps the preprocessed images in memory when all of them fit (see `ImageCache`); each
    DataLoader worker then holds its own copy.
    """

    def __init__(
        self,
        manifest: Manifest,
        preprocess: PreprocessConfig,
        rows: Sequence[int] | np.ndarray | None = None,
        label: str | None = None,
        train: bool = False,
        seed: int = 0,
        cache_mb: float = 0.0,
    ) -> None:
        self.manifest = manifest
        self.config = preprocess
        self.train = train
        self.seed = int(seed)
        self.label = label
        n = len(manifest.table)
        selected = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if selected.size and (selected.min() < 0 or selected.max() >= n):
            raise ManifestError(f"row indices must lie in 0..{n - 1} (the manifest has {n} rows)")
        self.classes: list[Any] | None = None
        self.label_kind: str | None = None
        self._targets: np.ndarray | None = None
        if label is not None:
            selected = self._prepare_label(label, selected)
        self.rows = selected
        self._paths = [str(manifest.absolute_path(int(r))) for r in self.rows]
        self._rng: np.random.Generator | None = None
        self._cache = ImageCache(len(self.rows), preprocess, cache_mb)
        self._warned = failures.WarnedFlags(len(self.rows))  # before any worker forks: shared with them

    def _prepare_label(self, label: str, selected: np.ndarray) -> np.ndarray:
        if label not in self.manifest.table.columns or label not in self.manifest.schema:
            available = ", ".join(self.manifest.attributes) or "none"
            raise ManifestError(
                f"label {label!r} is not an attribute of the manifest (attributes: {available})"
            )
        spec = self.manifest.schema[label]
        values = self.manifest.table[label].iloc[selected]
        keep = values.notna().to_numpy()
        if (~keep).any():
            log.info(
                "label %r missing for %d of %d rows; those rows are left out",
                label,
                int((~keep).sum()),
                len(keep),
            )
        selected, values = selected[keep], values[keep]
        self.label_kind = spec.kind
        if spec.kind == "continuous":
            self._targets = pd.to_numeric(values).to_numpy(dtype=np.float32)
        else:
            # Classes come from the whole manifest, so train/val/test datasets agree on the indices.
            self.classes = sorted(self.manifest.table[label].dropna().unique().tolist(), key=_sort_key)
            index = {c: i for i, c in enumerate(self.classes)}
            self._targets = np.array([index[v] for v in values.tolist()], dtype=np.int64)
        return selected

    def __len__(self) -> int:
        return len(self.rows)

    def _rng_for(self, row: int) -> np.random.Generator:
        """Evaluation: one fixed stream per row (same slices every time). Training: a per-process stream
        seeded from `seed` and the DataLoader's per-worker seed, so runs repeat for a seed yet each worker
        and each epoch draws differently."""
        if not self.train:
            return np.random.default_rng([self.seed, row])
        if self._rng is None:
            info = get_worker_info()
            worker_seed = 0 if info is None else int(info.seed) % (2**63)
            self._rng = np.random.default_rng([self.seed, worker_seed])
        return self._rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.rows[index])
        rng = self._rng_for(row)
        image = self._cache.get(index)
        if image is None:
            path = self._paths[index]
            reason = failures.known_reason(path)  # failed before in this process: not read (or warned) again
            if reason is None:
                try:
                    image = load_image(path, self.config, rng=rng,
                                       train=self.train and not self._cache.enabled)
                except ImageReadError as err:  # a bad file is skipped; a bad config (ConfigError) still stops
                    reason = err.reason
                    failures.remember(path, reason)
                    if self._warned.first(index):  # once per file, whichever worker meets it first
                        log.warning("skipping unreadable image, %s: %s: %s (not read again in this "
                                    "process)", self.manifest.where(row), path, reason)
            if image is None:
                return {"row": row, "error": f"{path}: {reason}"}
            self._cache.put(index, image)
        if self._cache.enabled:  # a copy: the cached array itself never leaves the cache
            image = augment(image.copy(), self.config, rng=rng, train=self.train)
        item: dict[str, Any] = {"image": torch.from_numpy(image), "row": row}
        if self._targets is not None:
            target = self._targets[index]
            item["label"] = torch.tensor(
                target, dtype=torch.long if self.classes is not None else torch.float32
            )
        return item


def collate_skip_failed(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable items; list the unreadable ones as `batch["failed"] = [(row, reason), ...]`.

    When every item of a batch failed, `batch["row"]` is empty and `batch["image"]` has shape (0,):
    callers skip such a batch (and still record its failures).
    """
    good = [it for it in items if "error" not in it]
    failed = [(int(it["row"]), str(it["error"])) for it in items if "error" in it]
    batch: dict[str, Any] = {
        "row": torch.tensor([it["row"] for it in good], dtype=torch.long),
        "image": torch.stack([it["image"] for it in good]) if good else torch.empty(0),
        "failed": failed,
    }
    if good and "label" in good[0]:
        batch["label"] = torch.stack([it["label"] for it in good])
    return batch


def _seed_worker(worker_id: int) -> None:
    """Seed numpy's and Python's global RNGs from torch's per-worker seed (libraries that use them)."""
    import random

    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


class _WorkerInit:
    """Seed the worker, and lower its CPU priority when the model runs on the same cores.

    On a CPU-only machine every decoding worker competes with torch's intra-op threads; a descheduled
    OpenMP thread stalls all of them at the next barrier, so an equal-priority worker costs the forward pass
    far more than the CPU time it uses (measured: encode at 0.40 of the bare forward with one worker on two
    cores). A niced worker decodes in the gaps instead. Picklable, so it works with spawn too.
    """

    def __init__(self, nice: int) -> None:
        self.nice = int(nice)

    def __call__(self, worker_id: int) -> None:
        _seed_worker(worker_id)
        if self.nice > 0 and hasattr(os, "nice"):
            with contextlib.suppress(OSError):  # not permitted: decode at normal priority
                os.nice(self.nice)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0, drop_last: bool = False,
    worker_nice: int = 0, prefetch_batches: int = 2,
) -> DataLoader:
    """DataLoader with the skip-failed collate, a seeded shuffle, seeded workers, persistent workers when
    there are any, and pinned memory when a GPU is there to receive the batches.

    `worker_nice` > 0 lowers the workers' priority (for a model that runs on the CPU, see `_WorkerInit`);
    `prefetch_batches` is how many batches each worker keeps ready.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    extra: dict[str, Any] = {"prefetch_factor": max(1, int(prefetch_batches))} if workers > 0 else {}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_skip_failed,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_WorkerInit(worker_nice),
        persistent_workers=workers > 0,
        **extra,
    )
