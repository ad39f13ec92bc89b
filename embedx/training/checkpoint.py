"""Resumable checkpoints written atomically, and `load_trained` for the steps after training.

A checkpoint is a folder `checkpoints/step-<n>/`: model (and EMA) weights as safetensors, optimiser /
scheduler / scaler states and each process's RNG states as `torch.save` files that load with
`weights_only=True` (plain tensors, numbers and lists: no pickled code is ever executed on load),
`state.json` (step, samples seen, data position, pending log sums, version) and the resolved config. It is
written into a temporary folder, every file fsync'ed, then renamed into place: a run killed mid-write
leaves the previous checkpoint intact and `latest` still pointing at it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from embedx._version import __version__
from embedx.data.preprocess import PreprocessConfig
from embedx.errors import EmbedxError
from embedx.training.config import TrainConfig, read_config

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_FILE = "model.safetensors"
RUN_JSON = "run.json"
CONFIG_FILE = "config.yaml"


# ---------------------------------------------------------------- small file-system helpers


def fsync_path(path: Path) -> None:
    """Flush a file or a folder entry to disk (folders: so that a rename survives a crash)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the data files were synced already
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: equal on two processes iff their weights are equal."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: safetensors refuses shared or strided storage."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights_atomic(state: Mapping[str, torch.Tensor], path: Path,
                        metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(cpu_state(state), str(tmp), metadata=metadata)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def torch_load_safe(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load` restricted to tensors and plain containers (no arbitrary unpickling)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# ---------------------------------------------------------------- RNG states


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) generator states as tensors / lists (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_internal": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    internal = tuple(int(v) for v in state["python_internal"].tolist())
    random.setstate((int(state["python_version"]), internal, state["python_gauss"]))
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), int(state["numpy_has_gauss"]),
                         float(state["numpy_gauss"])))
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------- resumable checkpoints


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:09d}"


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """Create (fresh) the temporary folder a checkpoint is written into; main process only."""
    tmp = Path(run_dir) / CHECKPOINTS / f".tmp-step-{step:09d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_state(tmp: Path, rank: int, extra: Mapping[str, Any]) -> None:
    """Each process's own state: its RNG streams and its un-logged metric sums."""
    path = tmp / f"rank{rank}.pt"
    torch.save({"rng": capture_rng(), **extra}, path)
    fsync_path(path)


def write_main_state(tmp: Path, *, model_state: Mapping[str, torch.Tensor],
                     ema_state: Mapping[str, torch.Tensor] | None,
                     optimizer_state: dict[str, Any], scheduler_state: dict[str, Any],
                     scaler_state: dict[str, Any] | None, state: dict[str, Any], config: TrainConfig) -> None:
    save_file(cpu_state(model_state), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(cpu_state(ema_state), str(tmp / "ema.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    if scaler_state is not None:
        torch.save(scaler_state, tmp / "scaler.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "embedx_version": __version__}, indent=1))
    (tmp / CONFIG_FILE).write_text(config.to_yaml())
    for path in tmp.iterdir():
        fsync_path(path)


def commit_checkpoint(tmp: Path, run_dir: Path, step: int, keep: int) -> Path:
    """Rename the finished temporary folder into place, point `latest` at it, drop old ones."""
    fsync_path(tmp)
    final = checkpoint_dir(run_dir, step)
    if final.exists():  # re-written (a resumed run passing the same step): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    root = final.parent
    fsync_path(root)
    write_text_atomic(root / LATEST, final.name + "\n")
    finished = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in finished[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / "state.json").exists():
            return candidate
    finished = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
    return finished[-1] if finished else None


@dataclass
class Checkpoint:
    """What `read_checkpoint` returns; the loop puts each part back where it came from."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    ranks: dict[int, dict[str, Any]] = field(default_factory=dict)


def read_checkpoint(path: Path, rank: int, map_location: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        model = load_file(str(path / "model.safetensors"))
        ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").exists() else None
        optimizer = torch_load_safe(path / "optimizer.pt", map_location)
        scheduler = torch_load_safe(path / "scheduler.pt")
        scaler = torch_load_safe(path / "scaler.pt") if (path / "scaler.pt").exists() else None
        rank_file = path / f"rank{rank}.pt"
        ranks = {rank: torch_load_safe(rank_file)} if rank_file.exists() else {}
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        raise EmbedxError(f"{path}: cannot read the checkpoint ({err})") from err
    return Checkpoint(path, state, model, ema, optimizer, scheduler, scaler, ranks)


# ---------------------------------------------------------------- finished runs


@dataclass
class TrainedRun:
    """A finished run, loaded for encoding: the model in eval mode and how its inputs were made."""

    run_dir: Path
    model: nn.Module
    config: TrainConfig
    kind: str
    checkpoint_hash: str
    preprocess: PreprocessConfig
    classes: list[Any] | None
    info: dict[str, Any]


def write_run_json(run_dir: Path, info: dict[str, Any]) -> Path:
    path = Path(run_dir) / RUN_JSON
    write_text_atomic(path, json.dumps(info, indent=2, default=str) + "\n")
    return path


def load_trained(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """Rebuild the model of a finished run from `config.yaml` + `run.json` + `model.safetensors`.

    The weights' sha256 is checked against `run.json`, so a store's provenance hash always names the
    weights that produced it.
    """
    from embedx.models.registry import build_model

    run_dir = Path(run_dir)
    info_path, weights = run_dir / RUN_JSON, run_dir / MODEL_FILE
    for needed in (info_path, weights, run_dir / CONFIG_FILE):
        if not needed.exists():
            raise EmbedxError(f"{run_dir}: not a finished training run ({needed.name} is missing)")
    info = json.loads(info_path.read_text())
    config = read_config(run_dir / CONFIG_FILE)
    digest = sha256_file(weights)
    if info.get("checkpoint_sha256") not in (None, digest):
        raise EmbedxError(f"{weights}: sha256 {digest[:12]}… does not match run.json "
                          f"({str(info['checkpoint_sha256'])[:12]}…); the file was changed after training")
    classes = info.get("classes")
    pre = config.data.preprocess
    model = build_model(config.model, config.model_section, pre.size, pre.channels,
                        len(classes) if classes else None)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EmbedxError(f"{weights}: weights do not fit the configured {config.model} "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device).eval()
    return TrainedRun(run_dir=run_dir, model=model, config=config, kind=config.model, checkpoint_hash=digest,
                      preprocess=pre, classes=classes, info=info)
