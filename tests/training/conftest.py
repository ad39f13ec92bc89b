"""Shared fixtures: one small synthetic CXR cohort (32 px) per session, and a fast config factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from embedx.data.synth import generate_cohort
from embedx.training.config import TrainConfig, load_config


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 images of ~200 subjects, 4 sites with their documented signature (strength 1)."""
    return generate_cohort("cxr", 400, tmp_path_factory.mktemp("cohort"), size=32, strength=1.0, seed=0)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Nets this small gain nothing from a second thread, and one thread keeps them fast on a busy machine
    (two-thread torch jobs sharing 2 cores with others slow down many times over)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Small nets so that a CPU step at 32 px takes milliseconds.
TINY_MODEL = {
    "vae": ["vae.latent_dim=16", "vae.base_channels=8", "vae.max_channels=32"],
    "dae": ["dae.latent_dim=32", "dae.unet_channels=[16,32]", "dae.ddim_steps=4"],
    "cnn": ["cnn.filters=[8,16,32]", "cnn.hidden=32"],
}


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., TrainConfig]:
    def make(kind: str, *overrides: str, total: int = 320, batch: int = 16,
             every: int | None = None) -> TrainConfig:
        every = every or total
        return load_config(kind, None, [
            "data.preprocess.size=32", f"optim.batch_size={batch}", f"optim.total_samples={total}",
            f"optim.eval_every_samples={every}", f"optim.checkpoint_every_samples={every}",
            f"optim.log_every_samples={batch}", "optim.warmup_samples=0", "eval.images=4",
            "eval.max_val_samples=64", "eval.latent_stats_samples=64", *TINY_MODEL[kind], *overrides,
        ])

    return make
