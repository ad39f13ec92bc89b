"""`embedx experiment shift`: seed 001's train-on-one-manufacturer / test-on-each study, in 2-D.

Seed 001 inserted synthetic spheres of easy, medium and hard difficulty into head CTs, trained detectors on
GE only, on Siemens only and on both, and tested every model on each manufacturer: single-manufacturer
models lost specificity on the other manufacturer, more so as the lesions got harder. This runs the same
design on any manifest with a binary target: one detector (seed 000's 3-block CNN) per training group (each
value of `--by`, and all groups mixed), per difficulty tier, per replicate, each scored on the held-out
subjects of every group. Figures are mean ± sd over replicates, as in the seed's tables.

Where this differs from the seed, and why:
- Images are 2-D (a NIfTI volume gives its centre slice, or a slice stack as channels through the
  preprocessing options), so it runs on chest X-rays and on a CPU; the seed's 3-D ResNet needs a GPU.
- Test subjects are held out once for every condition (whole subjects, stratified on group × label), so all
  models of a tier are scored on the same images, and no subject is ever on both sides.
- A tier is the negatives plus the positives of one difficulty (the seed mixed easy positives into its
  harder sets); one difficulty per tier isolates its effect. Without a difficulty column there is one tier.
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
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from embedx.analysis.background_cnn import fit_seed000_cnn
from embedx.analysis.labels import positive_class
from embedx.data.dataset import ImageDataset, make_loader
from embedx.data.manifest import Manifest, load_manifest
from embedx.data.preprocess import PreprocessConfig
from embedx.data.splits import train_val_test_split
from embedx.errors import EmbedxError
from embedx.privacy import scrub_path
from embedx.progress import progress_bar

log = logging.getLogger(__name__)

ALL = "all"  # the mixed training group / the whole test set
TIER_ORDER = ("easy", "medium", "hard")
MIN_PER_CLASS = 5  # training positives and negatives a group needs to get a model


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


def _tiers(table: pd.DataFrame, positive: np.ndarray, column: str | None, wanted: Sequence[str] | None
           ) -> tuple[list[str], np.ndarray]:
    """The tier names and each row's tier ("" for negatives, which belong to every tier)."""
    if column is None:
        return [ALL], np.where(positive, ALL, "")
    if column not in table.columns:
        raise EmbedxError(f"difficulty column {column!r} is not in the manifest")
    values = table[column].fillna("").astype(str).str.strip().to_numpy()
    values = np.where(positive, values, "")
    unlabelled = positive & (values == "")
    if unlabelled.any():
        raise EmbedxError(f"{int(unlabelled.sum())} positive row(s) have no {column!r} (first: row "
                          f"{int(np.flatnonzero(unlabelled)[0])}); give every positive a difficulty")
    present = sorted(set(values[positive]), key=lambda t: (TIER_ORDER.index(t) if t in TIER_ORDER else 9, t))
    if wanted:
        unknown = [t for t in wanted if t not in present]
        if unknown:
            raise EmbedxError(f"--tiers {', '.join(unknown)} not found in {column!r} "
                              f"(values: {', '.join(present)})")
        present = list(wanted)
    return present, values


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


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """AUROC and, at P(positive) >= 0.5 as in the seed, accuracy, sensitivity and specificity."""
    pred = p >= 0.5
    pos, neg = y == 1, y == 0
    return {
        "auroc": float(roc_auc_score(y, p)) if pos.any() and neg.any() else None,
        "accuracy": float(np.mean(pred == pos)) if len(y) else None,
        "sensitivity": float(np.mean(pred[pos])) if pos.any() else None,
        "specificity": float(np.mean(~pred[neg])) if neg.any() else None,
    }


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    got = [v for v in values if v is not None]
    if not got:
        return None, None
    return float(np.mean(got)), float(np.std(got, ddof=1)) if len(got) > 1 else 0.0


def shift_experiment(
    manifest: str | Path | Manifest,
    by: str,
    target: str,
    *,
    difficulty: str | None = "auto",
    tiers: Sequence[str] | None = None,
    positive: str | None = None,
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
    if not 0.05 <= cfg.test_fraction <= 0.8:
        raise EmbedxError(f"--test-fraction must lie in [0.05, 0.8], got {cfg.test_fraction}")
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, check_files=False)
    for column, flag in ((by, "--by"), (target, "--target")):
        if column not in man.table.columns:
            raise EmbedxError(f"{flag} {column!r} is not a column of {man.source} "
                              f"(attributes: {', '.join(man.attributes)})")
    table = man.table
    usable = table[by].notna() & table[target].notna()
    if (~usable).any():
        log.info("%d row(s) with no %s or %s left out", int((~usable).sum()), by, target)
    rows = np.flatnonzero(usable.to_numpy())
    table = table.iloc[rows].reset_index(drop=True)
    label, _, positive_value = positive_class(table[target].to_numpy(), target, positive)
    if difficulty == "auto":
        difficulty = f"{target}_difficulty" if f"{target}_difficulty" in table.columns else None
    tier_names, tier_of = _tiers(table, label, difficulty, tiers)
    group = table[by].astype(str).to_numpy()
    groups = sorted(set(group))
    if len(groups) < 2:
        raise EmbedxError(f"--by {by!r} has a single value ({groups[0]}); a shift needs at least two groups")

    strata = pd.DataFrame({"g": group, "y": label.astype(int), "t": tier_of})
    split = train_val_test_split(
        pd.concat([strata, table[["subject_id"]]], axis=1),
        fractions=(1.0 - cfg.test_fraction, 0.0, cfg.test_fraction), stratify=["g", "y", "t"], seed=cfg.seed,
    )
    pre = preprocess or PreprocessConfig(size=cfg.size)
    images, kept, failed = _load(man, rows, pre, cfg.workers)
    position = {int(r): i for i, r in enumerate(rows)}  # manifest row -> position in `table`
    order = np.array([position[int(r)] for r in kept], dtype=np.int64)
    x = torch.empty((len(table), *images.shape[1:]), dtype=images.dtype)
    readable = np.zeros(len(table), dtype=bool)
    x[order], readable[order] = images, True
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x = x.to(dev)
    is_test = np.zeros(len(table), dtype=bool)
    is_test[split.test] = True

    results, skipped, counts = [], [], {}
    train_groups = [*groups, ALL]
    conditions = [(t, g) for t in tier_names for g in train_groups]
    with progress_bar(len(conditions) * cfg.replicates * cfg.epochs, "shift: training detectors",
                      unit="epoch") as advance:
        for tier, train_group in conditions:
            in_tier = readable & ((tier_of == "") | (tier_of == tier))
            train = in_tier & ~is_test & ((group == train_group) | (train_group == ALL))
            n_pos, n_neg = int((train & label).sum()), int((train & ~label).sum())
            counts.setdefault(tier, {})[train_group] = {"train_pos": n_pos, "train_neg": n_neg}
            if min(n_pos, n_neg) < MIN_PER_CLASS:
                skipped.append({"tier": tier, "train": train_group,
                                "reason": f"{n_pos} positives / {n_neg} negatives in training "
                                          f"(at least {MIN_PER_CLASS} of each needed)"})
                advance(cfg.replicates * cfg.epochs)
                continue
            train_idx = torch.from_numpy(np.flatnonzero(train)).to(dev)
            y_train = torch.from_numpy(label[train].astype(np.int64)).to(dev)
            for replicate in range(cfg.replicates):
                seed = cfg.seed * 1000 + replicate
                torch.manual_seed(seed)
                model = fit_seed000_cnn(x[train_idx], y_train, 2, epochs=cfg.epochs,
                                        batch_size=cfg.batch_size, lr=cfg.lr, on_epoch=advance,
                                        generator=torch.Generator().manual_seed(seed))
                for test_group in train_groups:
                    test = in_tier & is_test & ((group == test_group) | (test_group == ALL))
                    p = _scores(model, x[torch.from_numpy(np.flatnonzero(test)).to(dev)])
                    results.append({"tier": tier, "train": train_group, "test": test_group,
                                    "replicate": replicate, "n_test": int(test.sum()),
                                    "n_test_pos": int((test & label).sum()), **_metrics(label[test], p)})

    summary = _summarise(results)
    return {
        "experiment": "shift",
        "by": by, "target": target, "positive": positive_value, "difficulty_column": difficulty,
        "tiers": tier_names, "groups": groups, "train_groups": train_groups,
        "settings": {**cfg.__dict__, "preprocess": pre.model_dump(), "device": str(dev),
                     "model": "cnn (seed 000, 3 blocks)", "threshold": 0.5},
        "n_subjects_test": int(table["subject_id"].iloc[split.test].nunique()),
        "train_counts": counts,
        "results": results,
        "summary": summary,
        "gaps": _gaps(summary, groups),
        "skipped": skipped,
        # shift.json is shared: a failure names its manifest row, never its path (folders carry names)
        "failed": [{"row": int(r), "reason": scrub_path(reason, man.absolute_path(int(r)))}
                   for r, reason in failed],
    }


def _summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    frame = pd.DataFrame(results)
    out = []
    if frame.empty:
        return out
    for (tier, train, test), part in frame.groupby(["tier", "train", "test"], sort=False):
        row: dict[str, Any] = {"tier": tier, "train": train, "test": test,
                               "n_test": int(part["n_test"].iloc[0]),
                               "n_test_pos": int(part["n_test_pos"].iloc[0]), "replicates": len(part)}
        for metric in ("auroc", "accuracy", "sensitivity", "specificity"):
            values = [None if pd.isna(v) else float(v) for v in part[metric]]
            row[f"{metric}_mean"], row[f"{metric}_sd"] = _mean_sd(values)
        out.append(row)
    return out


def _gaps(summary: list[dict[str, Any]], groups: list[str]) -> list[dict[str, Any]]:
    """Per tier and single-group model: AUROC on its own group's test subjects minus the mean on the others'.

    A positive gap is the seed's finding (a model fits its own manufacturer best); the mixed model's spread
    across test groups is given for comparison.
    """
    lookup = {(r["tier"], r["train"], r["test"]): r["auroc_mean"] for r in summary}
    out = []
    for tier in dict.fromkeys(r["tier"] for r in summary):
        for g in groups:
            own = lookup.get((tier, g, g))
            others = [lookup.get((tier, g, o)) for o in groups if o != g]
            others = [v for v in others if v is not None]
            if own is None or not others:
                continue
            out.append({"tier": tier, "train": g, "auroc_own": own, "auroc_others": float(np.mean(others)),
                        "gap": own - float(np.mean(others))})
        mixed = [lookup.get((tier, ALL, g)) for g in groups]
        mixed = [v for v in mixed if v is not None]
        if mixed:
            out.append({"tier": tier, "train": ALL, "auroc_min": float(min(mixed)),
                        "auroc_max": float(max(mixed)), "gap": float(max(mixed) - min(mixed))})
    return out
