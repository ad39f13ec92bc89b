"""`embedx experiment shift`: seed 001's train-on-one-manufacturer / test-on-each study, in 2-D.

Seed 001 inserted synthetic spheres of easy, medium and hard difficulty into head CTs, trained detectors on
GE only, on Siemens only and on both, and tested every model on each manufacturer: single-manufacturer
models lost specificity on the other manufacturer, more so as the lesions got harder. This runs the same
design on any manifest with a binary target: one detector (seed 000's 3-block CNN) per training group (each
value of `--by`, and all groups mixed), per difficulty tier, per replicate, each scored on the held-out
subjects of every group. Cells are mean ± sd over replicates, as in the seed's tables, with a 95 %
subject-bootstrap interval; the finding itself is read from paired contrasts (own-group model minus another
group's, on the same test subjects; `shift_contrasts`), not from cells of different test groups.

Where this differs from the seed, and why:
- Images are 2-D (a NIfTI volume gives its centre slice, or a slice stack as channels through the
  preprocessing options), so it runs on chest X-rays and on a CPU; the seed's 3-D ResNet needs a GPU.
- The design (held-out subjects, tiers, cells, intervals) is `shift_design`'s, shared with the 3-D
  run (`shift_volumes`: MONAI's 3-D ResNet and U-Net, as the seed did).
- Models are trained for a fixed number of epochs rather than picked among many by validation, so a bad
  run counts; `--replicates` gives the spread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedx.analysis.background_cnn import fit_seed000_cnn
from embedx.analysis.shift_contrasts import paired_contrasts
from embedx.analysis.shift_design import (
    ALL,
    THRESHOLD,
    gaps,
    nothing_trained,
    per_replicate,
    plan_design,
    summarise,
    tested_subjects,
    training_counts,
)
from embedx.data.dataset import ImageDataset, make_loader
from embedx.data.manifest import Manifest, load_manifest
from embedx.data.preprocess import PreprocessConfig
from embedx.errors import EmbedxError
from embedx.privacy import scrub_path
from embedx.progress import progress_bar

log = logging.getLogger(__name__)

METRICS = ("auroc", "accuracy", "sensitivity", "specificity")


@dataclass(frozen=True)
class ShiftSettings:
    size: int = 64
    replicates: int = 3
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    test_fraction: float = 0.3
    seed: int = 0
    workers: int = 0
    bootstrap: int = 1000


def _load(manifest: Manifest, rows: np.ndarray, pre: PreprocessConfig, workers: int
          ) -> tuple[torch.Tensor, np.ndarray, list[tuple[int, str]]]:
    """Preprocessed images of `rows`, the rows that could be read, and the (row, reason) of those that not."""
    dataset = ImageDataset(manifest, pre, rows=rows, train=False)
    images, kept, failed = [], [], []
    with progress_bar(len(rows), "shift: reading images", unit="img") as advance:
        for batch in make_loader(dataset, batch_size=64, shuffle=False, workers=workers):
            failed.extend(batch["failed"])
            if batch["row"].numel():
                images.append(batch["image"])
                kept.extend(batch["row"].tolist())
            advance(int(batch["row"].numel()) + len(batch["failed"]))
    if not images:
        raise EmbedxError(f"{manifest.source}: none of the {len(rows)} images could be read")
    return torch.cat(images), np.asarray(kept, dtype=np.int64), failed


def _scores(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = [torch.softmax(model(x[i : i + 256]), dim=1)[:, 1] for i in range(0, len(x), 256)]
    return torch.cat(out).cpu().numpy() if out else np.empty(0)


def shift_experiment(
    manifest: str | Path | Manifest,
    by: str,
    target: str,
    *,
    difficulty: str | None = "auto",
    tiers: Sequence[str] | None = None,
    positive: str | None = None,
    train_on: Sequence[str] | None = None,
    preprocess: PreprocessConfig | None = None,
    settings: ShiftSettings | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train a detector per (tier, training group, replicate) and score it on every group's test subjects.

    `difficulty="auto"` uses `<target>_difficulty` when the manifest has it (the synthetic cohorts do).
    """
    cfg = settings or ShiftSettings()
    if cfg.replicates < 1 or cfg.epochs < 1:
        raise EmbedxError("--replicates and --epochs must be at least 1")
    if cfg.bootstrap < 0:
        raise EmbedxError(f"--bootstrap must be 0 (no intervals) or more, got {cfg.bootstrap}")
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, check_files=False)
    design = plan_design(man, by, target, difficulty=difficulty, tiers=tiers, positive=positive,
                         test_fraction=cfg.test_fraction, seed=cfg.seed, train_on=train_on)
    pre = preprocess or PreprocessConfig(size=cfg.size)
    images, kept, failed = _load(man, design.rows, pre, cfg.workers)
    position = {int(r): i for i, r in enumerate(design.rows)}  # manifest row -> position in the design
    order = np.array([position[int(r)] for r in kept], dtype=np.int64)
    x = torch.empty((len(design.table), *images.shape[1:]), dtype=images.dtype)
    readable = np.zeros(len(design.table), dtype=bool)
    x[order], readable[order] = images, True
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x = x.to(dev)

    records, skipped, counts = [], [], {}
    conditions = [(t, g) for t in design.tier_names for g in design.training_groups]
    with progress_bar(len(conditions) * cfg.replicates * cfg.epochs, "shift: training detectors",
                      unit="epoch") as advance:
        for tier, train_group in conditions:
            train, reason = training_counts(design, readable, tier, train_group)
            counts.setdefault(tier, {})[train_group] = {"train_pos": int((train & design.label).sum()),
                                                        "train_neg": int((train & ~design.label).sum())}
            if reason is not None:
                skipped.append({"tier": tier, "train": train_group, "reason": reason})
                advance(cfg.replicates * cfg.epochs)
                continue
            train_idx = torch.from_numpy(np.flatnonzero(train)).to(dev)
            y_train = torch.from_numpy(design.label[train].astype(np.int64)).to(dev)
            test_rows = np.flatnonzero(readable & design.in_tier(tier) & design.is_test)
            for replicate in range(cfg.replicates):
                seed = cfg.seed * 1000 + replicate
                torch.manual_seed(seed)
                model = fit_seed000_cnn(x[train_idx], y_train, 2, epochs=cfg.epochs,
                                        batch_size=cfg.batch_size, lr=cfg.lr, on_epoch=advance,
                                        generator=torch.Generator().manual_seed(seed))
                score = _scores(model, x[torch.from_numpy(test_rows).to(dev)])
                records.append({"tier": tier, "train": train_group, "replicate": replicate, "rows": test_rows,
                                "score": score})

    if not records:
        raise nothing_trained(skipped, len(failed), len(design.rows))
    summary = summarise(design, records, METRICS, n_boot=cfg.bootstrap, seed=cfg.seed)
    return {
        "experiment": "shift", "dims": 2, "task": "classify",
        "by": by, "target": target, "positive": design.positive_value, "difficulty_column": design.difficulty,
        "tiers": design.tier_names, "groups": design.groups, "train_groups": design.train_groups,
        "metrics": list(METRICS), "headline": "auroc",
        "settings": {**cfg.__dict__, "preprocess": pre.model_dump(), "device": str(dev),
                     "model": "cnn (seed 000, 3 blocks)", "threshold": THRESHOLD},
        "n_subjects_test": tested_subjects(design, records),
        "train_counts": counts,
        "results": per_replicate(design, records, METRICS),
        "summary": summary,
        # the seed's claim, tested: own model vs another group's, on the same test subjects (shift_contrasts)
        "contrasts": paired_contrasts(design, records, METRICS, n_boot=cfg.bootstrap, seed=cfg.seed),
        # superseded: own group vs the others' subjects, confounded with how hard each group's images are
        "gaps": [g for m in METRICS for g in gaps(summary, design.groups, m)],
        "skipped": skipped,
        # shift.json is shared: a failure names its manifest row, never its path (folders carry names);
        # {"row": N, "line": L} as `embedx data check` names rows (N from 1), never a 0-based index
        "failed": [{**man.row_ref(int(r)), "reason": scrub_path(reason, man.absolute_path(int(r)))}
                   for r, reason in failed],
    }


__all__ = ["ALL", "METRICS", "ShiftSettings", "shift_experiment"]
