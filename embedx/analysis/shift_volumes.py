"""`embedx experiment shift --dims 3`: seed 001's study as it was done, on whole volumes.

Per difficulty tier, per training group (each value of `--by`, and all mixed) and per replicate, a MONAI
3-D network is trained on the group's training subjects and scored on the held-out subjects of every group
(`shift_design` owns that design and its statistics):

- `--task classify`: the seed's 3-D ResNet says whether a volume holds a lesion: accuracy, sensitivity,
  specificity (at P >= 0.5) and AUROC per cell.
- `--task segment`: a 3-D U-Net trained with MONAI's Dice loss outlines the lesion: MONAI's Dice metric per
  positive volume (mean, and per lesion size: radius below / from 19 mm, between the seed's small 13-17 mm
  and large 21-26 mm spheres), and, from the predicted lesion volume, the same detection figures (a volume
  is called positive when the prediction covers at least `min_lesion_ml`; AUROC ranks the predicted volume).

The run is resumable: every finished model's test scores go to `progress.jsonl` in the output folder, and
the model in training is checkpointed after each epoch; run the same command again and it continues. A
changed request is refused rather than mixed in (`restart=True` starts over).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedx.analysis.shift_contrasts import paired_contrasts
from embedx.analysis.shift_design import (
    THRESHOLD,
    Design,
    gaps,
    nothing_trained,
    per_replicate,
    plan_design,
    summarise,
    tested_subjects,
    training_counts,
)
from embedx.data.manifest import Manifest, load_manifest
from embedx.data.volumes import VolumeGrid, Volumes, load_volumes
from embedx.errors import EmbedxError
from embedx.models.volume_nets import build_volume_net, check_volume_net
from embedx.progress import progress_bar
from embedx.training.accel import make_accelerator
from embedx.training.volume_fit import AUGMENTS, FitSettings, fit_volume_model, predict_volumes

log = logging.getLogger(__name__)

CLASSIFY_METRICS = ("auroc", "accuracy", "sensitivity", "specificity")
SEGMENT_METRICS = ("dice", "dice_small", "dice_large", *CLASSIFY_METRICS)
SMALL_RADIUS_MM = 19.0  # between the seed's small (13-17 mm) and large (21-26 mm) spheres
SEED_LR = {"classify": 5e-5, "segment": 1e-4}  # seed 001's Adam learning rates
PROGRESS = "progress.jsonl"


@dataclass(frozen=True)
class VolumeShiftSettings:
    task: str = "classify"
    grid: VolumeGrid = field(default_factory=VolumeGrid)
    width: float = 1.0  # channels relative to the seed's networks
    replicates: int = 3
    epochs: int = 20
    batch_size: int = 8
    lr: float | None = None  # None: the seed's for the task
    test_fraction: float = 0.3
    augment: str = "flip"
    min_lesion_ml: float = 1.0
    mixed_precision: str = "auto"
    bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in ("classify", "segment"):
            raise EmbedxError(f"--task {self.task!r}: 3-D runs classify or segment")
        if self.replicates < 1 or self.epochs < 1 or self.batch_size < 1:
            raise EmbedxError("--replicates, --epochs and --batch-size must be at least 1")
        if self.bootstrap < 0:
            raise EmbedxError(f"--bootstrap must be 0 (no intervals) or more, got {self.bootstrap}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise EmbedxError(f"--mixed-precision {self.mixed_precision!r}: use auto, no, bf16 or fp16")
        if self.augment not in AUGMENTS:
            raise EmbedxError(f"--augment {self.augment!r}: use {', '.join(AUGMENTS)}")
        if self.min_lesion_ml <= 0 or (self.lr is not None and self.lr <= 0):
            raise EmbedxError("--min-lesion-ml and --lr must be positive")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else SEED_LR[self.task]


def _fingerprint(man: Manifest, by: str, target: str, design: Design, cfg: VolumeShiftSettings) -> str:
    """What a stored model's scores depend on: the manifest's rows, the labels and the training settings.

    Not `--tiers` or `--train-on`: a model depends on its own tier and group only (the held-out subjects are
    drawn from every tier), so runs that split the work (one tier or group at a time) can reuse a folder.
    """
    content = man.table.to_csv(index=False).encode()
    request = json.dumps(
        {
            "by": by,
            "target": target,
            "positive": design.positive_value,
            "difficulty": design.difficulty,
            "settings": _settings_dict(cfg),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(content + b"\0" + request.encode()).hexdigest()[:16]


def _settings_dict(cfg: VolumeShiftSettings) -> dict[str, Any]:
    out = asdict(cfg)
    out.pop("bootstrap")  # summarising, not training: may change on a resumed run
    out["lr"] = cfg.learning_rate
    return out


def _read_progress(path: Path, fingerprint: str, restart: bool) -> dict[str, dict[str, Any]]:
    if restart:  # models half-trained by the discarded run must not be resumed either
        path.unlink(missing_ok=True)
        shutil.rmtree(path.parent / "checkpoints", ignore_errors=True)
    if not path.exists():
        return {}
    done: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash: that model is trained again
            continue
        if rec.get("fingerprint") != fingerprint:
            raise EmbedxError(
                f"{path.parent} holds a shift run of another manifest or settings; use another "
                "--out, or --restart to discard it"
            )
        done[rec["key"]] = rec
    if done:
        log.info("resuming: %d trained model(s) found in %s", len(done), path)
    return done


def _rows_sha(train: np.ndarray, test: np.ndarray) -> str:
    """Which volumes a model was trained and tested on (they change when a broken file is fixed)."""
    return hashlib.sha1(np.asarray(train, np.int64).tobytes() + b"|" + np.asarray(test, np.int64).tobytes()
                        ).hexdigest()[:16]


def _key(tier: str, train: str, replicate: int) -> str:
    return f"{tier}\x1f{train}\x1f{replicate}"


def _checkpoint_path(out: Path, fingerprint: str, key: str) -> Path:
    # named by hash: group values are the user's and may be anything
    return out / "checkpoints" / f"{hashlib.sha1(f'{fingerprint}{key}'.encode()).hexdigest()[:16]}.pt"


def _score(
    probs: torch.Tensor, masks: torch.Tensor | None, voxel_ml: np.ndarray, task: str
) -> dict[str, list[float]]:
    """Per test volume: P(lesion) (classify); or predicted lesion volume in mL and Dice (segment)."""
    if task == "classify":
        return {"score": probs.numpy().astype(float).tolist()}
    from monai.metrics import DiceMetric

    predicted = (probs >= THRESHOLD).float()
    volume_ml = predicted.flatten(1).sum(1).numpy() * voxel_ml
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    dice = metric(predicted, masks.float()).reshape(-1).numpy()  # type: ignore[union-attr]
    return {
        "score": volume_ml.astype(float).tolist(),
        "dice": [None if np.isnan(d) else float(d) for d in dice],
    }


def shift_volumes(
    manifest: str | Path | Manifest,
    by: str,
    target: str,
    out: str | Path,
    *,
    difficulty: str | None = "auto",
    tiers: Sequence[str] | None = None,
    positive: str | None = None,
    settings: VolumeShiftSettings | None = None,
    train_on: Sequence[str] | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Run the 3-D study; `out` keeps the progress that makes it resumable (see the module docstring)."""
    cfg = settings or VolumeShiftSettings()
    segment = cfg.task == "segment"
    check_volume_net(cfg.task, cfg.width, cfg.grid.shape)  # before any volume is read
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, check_files=False)
    design = plan_design(
        man,
        by,
        target,
        difficulty=difficulty,
        tiers=tiers,
        positive=positive,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        train_on=train_on,
    )
    if segment:
        _check_masks(man, design)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(man, by, target, design, cfg)
    done = _read_progress(out / PROGRESS, fingerprint, restart)

    volumes = load_volumes(man, design.rows, cfg.grid, masks=segment)
    position = {int(r): i for i, r in enumerate(design.rows)}
    index_of = np.full(len(design.table), -1, dtype=np.int64)  # design position -> row of `volumes`
    for i, r in enumerate(volumes.rows):
        index_of[position[int(r)]] = i
    readable = index_of >= 0
    radius = np.full(len(design.table), np.nan)
    radius[readable] = volumes.lesion_radius_mm[index_of[readable]]

    accelerator = make_accelerator(cfg.mixed_precision, cfg.seed)
    main = accelerator.is_main_process
    records, skipped, counts = [], [], {}
    conditions = [(t, g) for t in design.tier_names for g in design.training_groups]
    bar = progress_bar(len(conditions) * cfg.replicates * cfg.epochs, f"shift 3-D {cfg.task}", unit="epoch")
    with bar as advance:
        for tier, train_group in conditions:
            train, reason = training_counts(design, readable, tier, train_group)
            counts.setdefault(tier, {})[train_group] = {
                "train_pos": int((train & design.label).sum()),
                "train_neg": int((train & ~design.label).sum()),
            }
            if reason is not None:
                skipped.append({"tier": tier, "train": train_group, "reason": reason})
                advance(cfg.replicates * cfg.epochs)
                continue
            test_rows = np.flatnonzero(readable & design.in_tier(tier) & design.is_test)
            data_sha = _rows_sha(np.flatnonzero(train), test_rows)
            for replicate in range(cfg.replicates):
                key = _key(tier, train_group, replicate)
                if key in done and done[key].get("data_sha") != data_sha:
                    # the readable volumes changed (a broken file fixed or broken since): train it again, so
                    # that every replicate of a cell is trained and tested on the same volumes
                    log.warning("%s / %s, replicate %d: the readable volumes changed since it was trained; "
                                "training it again", tier, train_group, replicate)
                    del done[key]
                if key not in done:
                    done[key] = _train_and_score(
                        volumes,
                        index_of,
                        design,
                        train,
                        test_rows,
                        cfg,
                        replicate,
                        key,
                        fingerprint,
                        out,
                        accelerator,
                        advance,
                    )
                    done[key]["data_sha"] = data_sha
                    if main:
                        with open(out / PROGRESS, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(done[key]) + "\n")
                        _checkpoint_path(out, fingerprint, key).unlink(missing_ok=True)
                else:
                    advance(cfg.epochs)
                rec = done[key]
                entry = {
                    "tier": tier,
                    "train": train_group,
                    "replicate": replicate,
                    "rows": rec["rows"],
                    "score": rec["score"],
                }
                if segment:
                    r_mm = radius[np.asarray(rec["rows"], dtype=np.int64)]
                    entry.update(
                        dice=np.array([np.nan if d is None else d for d in rec["dice"]]),
                        small=r_mm < SMALL_RADIUS_MM,
                        large=r_mm >= SMALL_RADIUS_MM,
                    )
                records.append(entry)
    accelerator.end_training()
    if not records:
        raise nothing_trained(skipped, len(volumes.failed), len(design.rows))

    metrics = SEGMENT_METRICS if segment else CLASSIFY_METRICS
    threshold = cfg.min_lesion_ml if segment else THRESHOLD
    summary = summarise(design, records, metrics, n_boot=cfg.bootstrap, seed=cfg.seed, threshold=threshold)
    headline = "dice" if segment else "auroc"
    return {
        "experiment": "shift",
        "dims": 3,
        "task": cfg.task,
        "by": by,
        "target": target,
        "positive": design.positive_value,
        "difficulty_column": design.difficulty,
        "tiers": design.tier_names,
        "groups": design.groups,
        "train_groups": design.train_groups,
        "metrics": list(metrics),
        "headline": headline,
        "settings": {
            **_settings_dict(cfg),
            "bootstrap": cfg.bootstrap,
            "device": str(accelerator.device),
            "processes": accelerator.num_processes,
            "precision": accelerator.mixed_precision,
            "model": ("MONAI 3-D ResNet (seed 001)" if not segment else "MONAI 3-D U-Net (seed 001)"),
            "threshold": threshold,
            "threshold_means": "P(lesion)" if not segment else "predicted lesion volume, mL",
            "size_bins": {
                "small": f"radius < {SMALL_RADIUS_MM:g} mm",
                "large": f"radius >= {SMALL_RADIUS_MM:g} mm",
            }
            if segment
            else None,
        },
        "n_subjects_test": tested_subjects(design, records),
        "train_counts": counts,
        "results": per_replicate(design, records, metrics, threshold=threshold),
        "summary": summary,
        # the seed's claim, tested: own model vs another group's, on the same test subjects (shift_contrasts)
        "contrasts": paired_contrasts(
            design, records, metrics, n_boot=cfg.bootstrap, seed=cfg.seed, threshold=threshold
        ),
        # superseded: own group vs the others' subjects, confounded with how hard each group's images are
        "gaps": [
            g
            for m in dict.fromkeys([headline, "accuracy", "sensitivity", "specificity"])
            for g in gaps(summary, design.groups, m)
        ],
        "skipped": skipped,
        # shift.json is shared: a failure names its manifest row, never its path (folders carry names);
        # {"row": N, "line": L} as `embedx data check` names rows (N from 1), never a 0-based index
        "failed": [{**man.row_ref(int(r)), "reason": reason} for r, reason in volumes.failed],
    }


def _check_masks(man: Manifest, design: Design) -> None:
    from embedx.data.volumes import MASK_COLUMN

    if MASK_COLUMN not in design.table.columns:
        raise EmbedxError(
            f"{man.source}: --task segment needs a {MASK_COLUMN!r} column (a NIfTI mask per "
            "positive volume; `embedx data lesions` writes one)"
        )
    masks = design.table[MASK_COLUMN].fillna("").astype(str).str.strip()
    missing = design.label & (masks == "").to_numpy()
    if missing.any():
        first = int(design.rows[np.flatnonzero(missing)[0]])
        raise EmbedxError(
            f"{man.source}: {int(missing.sum())} positive row(s) have no {MASK_COLUMN} "
            f"(first: {man.where(first)}); segmentation needs every lesion outlined"
        )


def _train_and_score(
    volumes: Volumes,
    index_of: np.ndarray,
    design: Design,
    train: np.ndarray,
    test_rows: np.ndarray,
    cfg: VolumeShiftSettings,
    replicate: int,
    key: str,
    fingerprint: str,
    out: Path,
    accelerator: Any,
    advance: Any,
) -> dict[str, Any]:
    """One model: built from its seed, trained (resuming its checkpoint), scored on the tier's test rows."""
    seed = cfg.seed * 1000 + replicate
    torch.manual_seed(seed)
    model = build_volume_net(cfg.task, cfg.width, cfg.grid.shape)
    idx = torch.from_numpy(index_of[np.flatnonzero(train)])
    if cfg.task == "classify":
        target = torch.from_numpy(design.label[np.flatnonzero(train)].astype(np.int64))
    else:
        target = volumes.masks[idx]  # type: ignore[index]
    checkpoint = _checkpoint_path(out, fingerprint, key)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    fit_settings = FitSettings(
        task=cfg.task,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.learning_rate,
        seed=seed,
        augment=cfg.augment,
    )
    model = fit_volume_model(
        model,
        volumes.x[idx],
        target,
        fit_settings,
        accelerator=accelerator,
        checkpoint=checkpoint,
        on_epoch=advance,
    )
    test_idx = torch.from_numpy(index_of[test_rows])
    probs = predict_volumes(model, volumes.x[test_idx], cfg.task, accelerator=accelerator)
    masks = volumes.masks[test_idx] if cfg.task == "segment" else None  # type: ignore[index]
    scored = _score(probs, masks, volumes.voxel_ml[index_of[test_rows]], cfg.task)
    return {"key": key, "fingerprint": fingerprint, "rows": test_rows.tolist(), **scored}
