"""One training loop for the VAE, the DAE and the CNN, on HF Accelerate (one CPU to many GPU nodes).

The loop owns what every model shares: the global batch split across processes, schedules in samples,
mixed precision, gradient clipping, EMA, evaluation, logging and exactly-resumable checkpoints. The model
supplies `training_loss(batch)`; the model never sees an optimiser. Run it as `embedx train ...`, alone or
under `accelerate launch`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedx._version import __version__
from embedx.data.manifest import load_manifest
from embedx.errors import ConfigError, EmbedxError
from embedx.models.registry import build_model
from embedx.progress import progress_bar
from embedx.training import checkpoint as ckpt
from embedx.training.accel import make_accelerator
from embedx.training.config import TrainConfig, config_differences, save_config
from embedx.training.data import EpochBatchSampler, RunData, build_datasets, train_loader
from embedx.training.ema import EMA
from embedx.training.evaluation import compute_latent_stats, evaluate
from embedx.training.metrics import MetricsLog
from embedx.training.optimizers import adam, load_state

log = logging.getLogger(__name__)

NO_IMAGE_STEPS = 8  # batches without one readable image after which a run stops instead of shipping noise

# Keys that may change when a run is resumed: how long it runs and how often it reports, not what it learns.
RESUMABLE_CHANGES = ("optim.total_samples", "optim.eval_every_samples", "optim.checkpoint_every_samples",
                     "optim.log_every_samples", "optim.keep_checkpoints", "optim.channels_last",
                     "optim.compile", "data.workers", "data.cache_mb", "eval.")


class LossModule(nn.Module):
    """`forward` = `model.training_loss`: DDP synchronises gradients only through `forward`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.training_loss(batch)


def _make_accelerator(config: TrainConfig) -> Any:
    return make_accelerator(config.optim.mixed_precision, config.optim.seed)


def _resolve_run_dir(out_dir: str | Path | None, kind: str, accelerator: Any) -> Path:
    from accelerate.utils import broadcast_object_list

    if out_dir is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        holder = [str(Path("runs") / f"{kind}-{stamp}")]
        if accelerator.num_processes > 1:
            broadcast_object_list(holder)  # the main process's name, everywhere
        out_dir = holder[0]
    return Path(out_dir).resolve()


def _check_resume_config(saved: TrainConfig, config: TrainConfig, run_dir: Path) -> None:
    changed = [key for key in config_differences(saved, config)
               if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_CHANGES)]
    if changed:
        raise ConfigError(f"{run_dir}: cannot resume with a different config; changed: {', '.join(changed)} "
                          "(only the length, the reporting intervals, the speed options optim.channels_last "
                          "and optim.compile, data.workers and data.cache_mb may change)")


def _crossed(samples: int, batch: int, every: int) -> bool:
    return samples // every > (samples - batch) // every


def _lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    batch = config.optim.batch_size
    warmup = math.ceil(config.optim.warmup_samples / batch)
    cosine = config.optim.schedule == "cosine"

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cosine:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, Any]:
    out = dict(batch)
    for key in ("image", "label"):
        if key in out and isinstance(out[key], torch.Tensor):
            out[key] = out[key].to(device, non_blocking=True)
    if channels_last and out.get("image") is not None and out["image"].ndim == 4:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


class _Sums:
    """Per-process running sums of the training metrics between two log rows.

    The sums stay on the model's device as float64 0-d tensors and are read once per log row: reading a
    metric each step (`float(loss)`) would make the CPU wait for the GPU every step. float64 keeps them
    equal to the Python-float sums of earlier versions, so a resumed run logs the same values."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.values: dict[str, torch.Tensor | float] = dict((state or {}).get("values", {}))
        self.count = int((state or {}).get("count", 0))

    def add(self, metrics: dict[str, torch.Tensor | float]) -> None:
        for key, value in metrics.items():
            value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
            self.values[key] = self.values.get(key, 0.0) + value

    def add_step(self) -> None:
        self.count += 1

    def state(self) -> dict[str, Any]:
        return {"values": {k: float(v) for k, v in self.values.items()}, "count": self.count}

    def reduce(self, accelerator: Any) -> dict[str, float]:
        """Mean over steps and processes; resets the sums."""
        keys = sorted(self.values)
        device = accelerator.device
        packed = torch.stack([torch.as_tensor(self.values[k], dtype=torch.float64).to(device) for k in keys]
                             + [torch.tensor(float(self.count), dtype=torch.float64, device=device)])
        if accelerator.num_processes > 1:
            packed = accelerator.reduce(packed, reduction="sum")
        count = max(float(packed[-1]), 1.0)
        self.values, self.count = {}, 0
        return {k: float(v) / count for k, v in zip(keys, packed[:-1].tolist(), strict=True)}


def _save_checkpoint(accelerator: Any, run_dir: Path, step: int, *, model: nn.Module, ema: EMA | None,
                     optimizer: Any, scheduler: Any, state: dict[str, Any], sums: _Sums,
                     config: TrainConfig) -> None:
    """Every process writes its RNG and log sums into the temporary folder; the main one the rest, then
    renames the folder into place."""
    tmp = Path(run_dir) / ckpt.CHECKPOINTS / f".tmp-step-{step:09d}"
    if accelerator.is_main_process:
        ckpt.begin_checkpoint(run_dir, step)
    accelerator.wait_for_everyone()
    # Parameters only: DDP keeps them identical, while BatchNorm running statistics are per process until the
    # next forward broadcasts rank 0's (the main process's are the ones saved).
    digest = ckpt.state_hash(dict(model.named_parameters()))
    ckpt.write_rank_state(tmp, accelerator.process_index, {"sums": sums.state(), "weights_sha256": digest})
    hashes = [digest]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        hashes = gather_object([digest])
        # DDP must keep every replica identical; say so loudly if it did not.
        if len(set(hashes)) > 1 and accelerator.is_main_process:
            log.error("model replicas diverged at step %d: weight hashes per process %s", step, hashes)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        scaler = getattr(accelerator, "scaler", None)
        ckpt.write_main_state(
            tmp, model_state=model.state_dict(), ema_state=ema.state_dict() if ema else None,
            optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
            scaler_state=scaler.state_dict() if scaler is not None else None,
            state={**state, "world_size": accelerator.num_processes, "weights_sha256_per_process": hashes},
            config=config)
        ckpt.commit_checkpoint(tmp, run_dir, step, config.optim.keep_checkpoints)
    accelerator.wait_for_everyone()


def _final_model(model: nn.Module, ema: EMA | None) -> nn.Module:
    """The weights a run ships: the EMA average where EMA is on (buffers from the live model)."""
    if ema is None:
        return model
    final = copy.deepcopy(model)
    ema.copy_to(final)
    return final


def train(config: TrainConfig, manifest_path: str | Path, out_dir: str | Path | None = None,
          resume: bool = False) -> Path:
    """Train `config.model` on the manifest; returns the run folder (see docs/architecture.md)."""
    accelerator = _make_accelerator(config)
    run_dir = _resolve_run_dir(out_dir, config.model, accelerator)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    opt = config.optim

    # ---- where we start from
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise EmbedxError(f"{run_dir} already holds a run ({latest.name}); pass --resume to continue it "
                          "or choose another --out")
    if resume and latest is None:
        log.warning("%s: no checkpoint to resume from; starting a new run", run_dir)
    if latest is not None:
        _check_resume_config(ckpt.read_config(latest / ckpt.CONFIG_FILE), config, run_dir)

    # ---- data and model (identical on every process: same split, same init from the shared seed)
    manifest = load_manifest(manifest_path)
    data: RunData = build_datasets(manifest, config)  # label problems stop here, before any file is written
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / ckpt.CONFIG_FILE)
    accelerator.wait_for_everyone()
    pre = config.data.preprocess
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opt.seed)
        model = build_model(config.model, config.model_section, pre.size, pre.channels,
                            len(data.classes) if data.classes else None)
    if opt.channels_last:  # 4-D weights only; the checkpoints stay plain (saved contiguous)
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, opt.ema_decay) if opt.ema_decay is not None else None
    optimizer = adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, decoupled=True)
    total_steps = math.ceil(opt.total_samples / opt.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))

    step, epoch, batch_in_epoch = 0, 0, 0
    sums = _Sums()
    restored = None
    if latest is not None:
        restored = ckpt.read_checkpoint(latest, rank, map_location="cpu")
        model.load_state_dict(restored.model)
        if ema is not None and restored.ema is not None:
            ema.load_state_dict(restored.ema)
        step = int(restored.state["step"])
        epoch, batch_in_epoch = int(restored.state["epoch"]), int(restored.state["batch_in_epoch"])
        if restored.state.get("n_train") != len(data.train):
            raise EmbedxError(f"{run_dir}: the manifest's training split changed since the checkpoint "
                              f"({restored.state.get('n_train')} -> {len(data.train)} images)")
        if rank in restored.ranks:
            sums = _Sums(restored.ranks[rank].get("sums"))
        log.info("resuming %s at step %d (%d samples)", run_dir, step, step * opt.batch_size)

    wrapped = LossModule(model)
    if opt.compile:  # in place: the parameters' names, and so the checkpoints, stay those of `model`
        wrapped.compile()
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    if restored is not None:
        load_state(optimizer, restored.optimizer)
        scheduler.load_state_dict(restored.scheduler)
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and restored.scaler is not None:
            scaler.load_state_dict(restored.scaler)
    if ema is not None:
        ema.shadow = {k: v.to(accelerator.device) for k, v in ema.shadow.items()}

    sampler = EpochBatchSampler(len(data.train), opt.batch_size, rank, world, opt.seed, epoch, batch_in_epoch)
    batches = iter(train_loader(data, sampler, config.data.workers, opt.seed))
    if restored is not None:
        if rank in restored.ranks:
            ckpt.restore_rng(restored.ranks[rank]["rng"])
        else:  # resumed on more processes than saved it: a fresh, seeded stream for the new ones
            torch.manual_seed(opt.seed * 1000 + rank + step)
    metrics = MetricsLog(run_dir, enabled=main, resume_step=step if restored is not None else None)
    failed: dict[int, str] = {}
    images_used = 0  # readable training images seen, over all processes
    device = accelerator.device

    def data_state() -> dict[str, Any]:
        return {"step": step, "samples_seen": step * opt.batch_size, "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "n_train": len(data.train)}

    def run_eval() -> None:
        final = _final_model(accelerator.unwrap_model(wrapped).model, ema)
        values = evaluate(final, data, config, run_dir, step=step, samples=step * opt.batch_size,
                          accelerator=accelerator, failed=failed)
        metrics.log(step, step * opt.batch_size, "val", values)

    bar = progress_bar(opt.total_samples, f"train {config.model}", unit="img") if main else nullcontext(None)
    with bar as advance:
        if advance is not None and step:
            advance(min(step * opt.batch_size, opt.total_samples))
        while step < total_steps:
            batch = next(batches)
            epoch, batch_in_epoch = sampler.advance(epoch, batch_in_epoch)
            for row, reason in batch.get("failed", []):
                failed.setdefault(int(row), reason)
            usable = torch.tensor([len(batch["row"])])  # on the host: no device round trip per step
            if world > 1:
                usable = accelerator.gather(usable.to(device)).cpu()
            images_used += int(usable.sum())
            if images_used == 0 and step + 1 >= min(total_steps, NO_IMAGE_STEPS):
                _refuse_unreadable(run_dir, failed, manifest, step + 1)
            wrapped.train()
            if bool((usable > 0).all()):
                loss, parts = wrapped(_to_device(batch, device, opt.channels_last))
                accelerator.backward(loss)
                if opt.grad_clip is not None:
                    accelerator.clip_grad_norm_(wrapped.parameters(), opt.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(accelerator.unwrap_model(wrapped).model)
                sums.add({**parts, "loss": loss.detach()})
                sums.add_step()
            scheduler.step()
            step += 1
            samples = step * opt.batch_size
            last = step == total_steps
            if advance is not None:
                advance(min(opt.batch_size, opt.total_samples - (step - 1) * opt.batch_size))
            if _crossed(samples, opt.batch_size, opt.log_every_samples) or last:
                values = sums.reduce(accelerator)
                if values:
                    metrics.log(step, samples, "train", {**values, "lr": scheduler.get_last_lr()[0]})
                    if advance is not None:
                        advance(0, description=f"train {config.model} loss {values['loss']:.4g}")
            if _crossed(samples, opt.batch_size, opt.eval_every_samples) or last:
                run_eval()
            if _crossed(samples, opt.batch_size, opt.checkpoint_every_samples) or last:
                _save_checkpoint(accelerator, run_dir, step, model=accelerator.unwrap_model(wrapped).model,
                                 ema=ema, optimizer=optimizer, scheduler=scheduler, state=data_state(),
                                 sums=sums, config=config)
    metrics.close()
    del batches  # stops DataLoader workers (the sampler is endless, so they would otherwise linger)

    # ---- the shipped model: final (EMA) weights, DAE latent statistics, run.json
    failed_all = _gather_failed(accelerator, failed)
    if main:
        final = _final_model(accelerator.unwrap_model(wrapped).model, ema)
        if config.model == "dae":
            z = compute_latent_stats(final, data, config, device)
            final.update_latent_stats(z)
        weights = run_dir / ckpt.MODEL_FILE
        ckpt.save_weights_atomic(final.state_dict(), weights, metadata={"kind": config.model,
                                                                        "embedx_version": __version__})
        _write_skipped(run_dir, failed_all, manifest)
        ckpt.write_run_json(run_dir, {
            "kind": config.model,
            "embedx_version": __version__,
            "checkpoint_sha256": ckpt.sha256_file(weights),
            "classes": data.classes,
            "label": data.label,
            "samples_seen": step * opt.batch_size,
            "steps": step,
            "ema": ema is not None,
            "mixed_precision": accelerator.mixed_precision,
            "num_processes": world,
            # rows of each split, less those found unreadable during the run (a file never drawn is counted)
            "n_train": _readable(data.train, failed_all),
            "n_val": _readable(data.val, failed_all),
            "skipped_images": len(failed_all),
            "preprocess": pre.model_dump(mode="json"),
            "manifest": str(Path(manifest_path).resolve()),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def _refuse_unreadable(run_dir: Path, failed: dict[int, str], manifest: Any, steps: int) -> None:
    """Stop a run that has not read one image: it would otherwise ship an untrained model and exit 0."""
    _write_skipped(run_dir, failed, manifest)
    first = "; ".join(f"{manifest.where(r)}: {reason}" for r, reason in sorted(failed.items())[:3])
    raise EmbedxError(
        f"no training image could be read in the first {steps} batches ({len(failed)} unreadable, listed in "
        f"{run_dir / 'skipped.csv'}); check the manifest's paths and formats. First: {first or 'none'}"
    )


def _gather_failed(accelerator: Any, failed: dict[int, str]) -> dict[int, str]:
    if accelerator.num_processes == 1:
        return failed
    from accelerate.utils import gather_object

    merged: dict[int, str] = {}
    for part in gather_object([failed]):
        merged.update(part)
    return merged


def _readable(dataset: Any, failed: dict[int, str]) -> int:
    """Images of a split (None: no split) less the ones found unreadable."""
    if dataset is None:
        return 0
    return len(dataset) - len(set(map(int, dataset.rows)) & failed.keys())


def _write_skipped(run_dir: Path, failed: dict[int, str], manifest: Any) -> None:
    """List unreadable images (row, line, path, reason) so that one bad file in ten thousand is visible.

    `row` and `line` are those `embedx data check` prints (data row from 1, CSV line), so the user finds the
    file where the CSV says; `line` is left out for a Parquet manifest."""
    path = run_dir / "skipped.csv"
    if not failed:
        path.unlink(missing_ok=True)
        return
    import pandas as pd

    rows = sorted(failed)
    table = pd.DataFrame([manifest.row_ref(r) for r in rows])
    table["path"] = [str(manifest.table["path"].iloc[r]) for r in rows]
    table["reason"] = [failed[r] for r in rows]
    table.to_csv(path, index=False)
    log.warning("%d unreadable image(s) skipped; listed in %s", len(rows), path)

