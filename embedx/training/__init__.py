"""Training: typed configs, the one Accelerate loop for every model, resumable checkpoints, finished runs.

    from embedx.training import load_config, train, load_trained
    run = train(load_config("vae", "configs/demo_vae.yaml"), "cohort/manifest.csv", "runs/vae")
    model = load_trained(run).model

Names resolve on first use, so `import embedx.training` alone stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainConfig": "embedx.training.config",
    "load_config": "embedx.training.config",
    "default_config": "embedx.training.config",
    "train": "embedx.training.loop",
    "load_trained": "embedx.training.checkpoint",
    "TrainedRun": "embedx.training.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embedx.training' has no attribute {name!r}")
