"""Training: typed configs, the one Accelerate loop for every model, resumable checkpoints, finished runs.

    from embedx.training import load_config, train, load_trained
    run = train(load_config("vae", "configs/demo_vae.yaml"), "cohort/manifest.csv", "runs/vae")
    model = load_trained(run).model

Names resolve on first use, so `import embedx.training` alone stays cheap.
"""

from __future__ import annotations

from embedx._lazy import lazy_getattr

_EXPORTS = {
    "TrainConfig": "embedx.training.config",
    "load_config": "embedx.training.config",
    "default_config": "embedx.training.config",
    "train": "embedx.training.loop",
    "load_trained": "embedx.training.checkpoint",
    "TrainedRun": "embedx.training.checkpoint",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
