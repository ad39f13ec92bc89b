"""Resume continues exactly: k steps + resume to 2k == an uninterrupted 2k run (CPU, fixed seed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from embedx.errors import ConfigError, EmbedxError
from embedx.training.checkpoint import latest_checkpoint
from embedx.training.loop import train


def _train_rows(run_dir: Path) -> pd.DataFrame:
    table = pd.read_csv(run_dir / "metrics.csv")
    return table[table["split"] == "train"].reset_index(drop=True)


def _assert_same_run(a_dir: Path, b_dir: Path, steps: int) -> None:
    a, b = _train_rows(a_dir), _train_rows(b_dir)
    assert len(a) == len(b) and a["step"].max() == steps
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-6)
    wa, wb = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)
    # The run did learn in between (guards against comparing two frozen models).
    losses = a[a["metric"] == "loss"]["value"]
    assert losses.iloc[-1] < losses.iloc[0]


# ~360 training images, batch 16: 22 steps per epoch, so 24 steps cross an epoch boundary.
K = 12 * 16


def test_resume_after_crash_matches_uninterrupted(cohort: Path, tiny_config, tmp_path: Path) -> None:
    """A VAE run killed right after its step-12 checkpoint (later files and log rows left behind, as a
    crash would) resumes to the same losses and weights. Augmentation (flip), warm-up and a cosine schedule
    are on, so the data order, per-(epoch, row) augmentation, RNG, optimiser and scheduler must all return."""
    config = tiny_config("vae", "data.preprocess.flip=true", "optim.schedule=cosine",
                         "optim.warmup_samples=48", total=2 * K, every=K)
    full = train(config, cohort, tmp_path / "full")
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-000000024")
    (crashed / "checkpoints" / "latest").write_text("step-000000012\n")
    for name in ("model.safetensors", "run.json"):
        (crashed / name).unlink()
    assert latest_checkpoint(crashed).name == "step-000000012"
    resumed = train(config, cohort, crashed, resume=True)
    _assert_same_run(full, resumed, 24)


@pytest.mark.slow
def test_resume_extends_a_finished_run(cohort: Path, tiny_config, tmp_path: Path) -> None:
    """A DAE (EMA on) trained to k samples, then resumed with total 2k, equals a straight 2k run."""
    extra = ["optim.ema_decay=0.99", "optim.lr=5e-4"]
    full = train(tiny_config("dae", *extra, total=2 * K, every=K), cohort, tmp_path / "full")
    part = tmp_path / "part"
    train(tiny_config("dae", *extra, total=K, every=K), cohort, part)
    assert latest_checkpoint(part).name == "step-000000012"
    resumed = train(tiny_config("dae", *extra, total=2 * K, every=K), cohort, part, resume=True)
    _assert_same_run(full, resumed, 24)


def test_resume_refuses_changed_config(cohort: Path, tiny_config, tmp_path: Path) -> None:
    run = train(tiny_config("vae", total=32, batch=16), cohort, tmp_path / "run")
    with pytest.raises(EmbedxError, match="--resume"):
        train(tiny_config("vae", total=64, batch=16), cohort, run)  # exists, no --resume
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        train(tiny_config("vae", "optim.lr=0.1", total=64, batch=16), cohort, run, resume=True)
