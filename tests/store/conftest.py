"""Session fixtures for the store tests: a small synthetic CXR cohort and a tiny VAE trained on it by the
real training loop (a few steps: the latents need not be good, only deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedx.data.synth import generate_cohort
from embedx.training.config import load_config
from embedx.training.loop import train

COHORT_N = 300


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 images (32 px) of 150 subjects, 4 sites; returns the manifest path."""
    return generate_cohort(
        "cxr", COHORT_N, tmp_path_factory.mktemp("store-cohort"), size=32, strength=1.0, seed=0
    )


@pytest.fixture(scope="session")
def vae_run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = load_config(
        "vae",
        None,
        [
            "data.preprocess.size=32",
            "optim.batch_size=32",
            "optim.total_samples=64",
            "optim.eval_every_samples=64",
            "optim.checkpoint_every_samples=64",
            "optim.log_every_samples=32",
            "optim.warmup_samples=0",
            "eval.images=4",
            "eval.max_val_samples=32",
            "vae.latent_dim=16",
            "vae.base_channels=8",
            "vae.max_channels=32",
        ],
    )
    return train(config, cohort, tmp_path_factory.mktemp("runs") / "vae-tiny")


@pytest.fixture(scope="session")
def dae_run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = load_config(
        "dae",
        None,
        [
            "data.preprocess.size=32",
            "optim.batch_size=32",
            "optim.total_samples=32",
            "optim.eval_every_samples=32",
            "optim.checkpoint_every_samples=32",
            "optim.log_every_samples=32",
            "optim.warmup_samples=0",
            "eval.images=2",
            "eval.max_val_samples=8",
            "eval.latent_stats_samples=32",
            "dae.latent_dim=32",
            "dae.unet_channels=[16,32]",
            "dae.ddim_steps=4",
        ],
    )
    return train(config, cohort, tmp_path_factory.mktemp("runs") / "dae-tiny")
