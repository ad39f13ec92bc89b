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


def test_channels_last_learns_the_same_and_may_change_on_resume(cohort: Path, tiny_config,
                                                                 tmp_path: Path) -> None:
    """`optim.channels_last` changes the memory layout, not what is learnt: a VAE (EMA on) trained with it,
    then resumed without it, logs the losses of a plain run and ends as the same function (its latents of
    the same images agree), and its checkpoints load into a model built without it. (Raw weights are not
    compared: a conv bias that BatchNorm cancels gets a gradient of pure rounding noise, which Adam scales
    up to a full step, so such a bias drifts by ~1e-2 with no effect on any output.)"""
    from embedx.training.checkpoint import load_trained

    extra = ["optim.ema_decay=0.99"]
    plain = train(tiny_config("vae", *extra, total=2 * K, every=K), cohort, tmp_path / "plain")
    mixed = tmp_path / "mixed"
    train(tiny_config("vae", *extra, "optim.channels_last=true", total=K, every=K), cohort, mixed)
    resumed = train(tiny_config("vae", *extra, total=2 * K, every=K), cohort, mixed, resume=True)
    a, b = _train_rows(plain), _train_rows(resumed)
    assert len(a) == len(b) and b["step"].max() == 24
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-3, atol=1e-4)
    images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z_plain = load_trained(plain).model.embed(images)
    z_resumed = load_trained(resumed).model.embed(images)
    torch.testing.assert_close(z_resumed, z_plain, rtol=0, atol=1e-4)
    assert z_plain.abs().max() > 0.1  # latents that carry something, not two collapsed models
