"""Each generative model through `train()`: the loss falls, the logs and eval PNGs appear, and
`load_trained` rebuilds the very model that was shipped."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from embedx.data.dataset import ImageDataset
from embedx.data.manifest import load_manifest
from embedx.models.registry import build_model
from embedx.training.checkpoint import load_trained, sha256_file
from embedx.training.loop import train

# Loss after 640 samples as a fraction of the first logged loss, at most. Measured: VAE ~0.35 (summed
# squared error falls fast from a random decoder), DAE ~0.15 (eps-MSE from ~1 to ~0.15); margins leave room.
MARGIN = {"vae": 0.6, "dae": 0.5}


def _images(cohort: Path, config, n: int = 8) -> torch.Tensor:
    dataset = ImageDataset(load_manifest(cohort), config.data.preprocess, rows=range(n))
    return torch.stack([dataset[i]["image"] for i in range(n)])


@pytest.mark.parametrize("kind", ["vae", pytest.param("dae", marks=pytest.mark.slow)])
def test_short_run_learns_logs_and_round_trips(cohort: Path, tiny_config, tmp_path: Path, kind: str) -> None:
    extra = ["optim.lr=2e-3", "optim.ema_decay=0.9"] if kind == "dae" else ["optim.lr=2e-3"]
    config = tiny_config(kind, *extra, total=640, batch=32, every=320)
    run = train(config, cohort, tmp_path / kind)

    metrics = pd.read_csv(run / "metrics.csv")
    losses = metrics[(metrics["split"] == "train") & (metrics["metric"] == "loss")]["value"].to_numpy()
    assert len(losses) == 20 and losses[-1] < MARGIN[kind] * losses[0], losses
    val = metrics[metrics["split"] == "val"]
    assert sorted(set(val["samples"])) == [320, 640] and "loss" in set(val["metric"])
    if kind == "dae":  # the z_sem-usage diagnostic is logged at every evaluation
        assert {"code_gap", "loss_shuffled_code", "loss_right_code"} <= set(val["metric"])
    for samples in (320, 640):
        png = run / "eval" / f"images-{samples:09d}.png"
        assert png.exists() and png.stat().st_size > 2_000
    assert list((run / "tb").glob("events.out.tfevents.*"))

    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == kind and info["samples_seen"] == 640 and info["ema"] == (kind == "dae")
    assert info["checkpoint_sha256"] == sha256_file(run / "model.safetensors")

    loaded = load_trained(run)
    assert loaded.kind == kind and not loaded.model.training
    assert loaded.preprocess == config.data.preprocess and loaded.checkpoint_hash == info["checkpoint_sha256"]
    images = _images(cohort, config)
    rebuilt = build_model(kind, config.model_section, 32, 1)
    rebuilt.load_state_dict(load_file(run / "model.safetensors"))
    rebuilt.eval()
    z = loaded.model.embed(images)
    assert z.shape == (8, config.model_section.latent_dim)
    torch.testing.assert_close(z, rebuilt.embed(images), rtol=0, atol=0)
    torch.testing.assert_close(load_trained(run).model.embed(images), z, rtol=0, atol=0)

    if kind == "dae":
        # z_sem statistics were computed over the training images and shipped with the weights.
        assert not torch.allclose(loaded.model.z_std, torch.ones_like(loaded.model.z_std))
        assert torch.isfinite(loaded.model.z_mean).all()
        # EMA on: the shipped weights are the average, not the last step's weights.
        final_ckpt = load_file(run / "checkpoints" / "step-000000020" / "model.safetensors")
        shipped = load_file(run / "model.safetensors")
        assert any(not torch.equal(final_ckpt[k], shipped[k]) for k in shipped if k in final_ckpt)
    else:
        # VAE: reconstruction error well below that of the untrained model on the same images.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            untrained = build_model(kind, config.model_section, 32, 1).eval()
        after = torch.mean((loaded.model.reconstruct(images) - images) ** 2)
        before = torch.mean((untrained.reconstruct(images) - images) ** 2)
        assert after < 0.5 * before, (float(after), float(before))


def test_a_run_that_reads_no_image_stops_with_the_reasons(cohort: Path, tiny_config, tmp_path: Path) -> None:
    """Every file there but unreadable (another format): the run stops after a few batches with a clear error
    and ships no model (it used to train on nothing and exit 0)."""
    from embedx.data.manifest import write_manifest
    from embedx.errors import EmbedxError

    man = load_manifest(cohort)
    table = man.table.copy()
    (tmp_path / "junk").mkdir()
    for i in range(len(table)):
        (tmp_path / "junk" / f"{i}.png").write_bytes(b"this is not an image")
    table["path"] = [f"junk/{i}.png" for i in range(len(table))]
    manifest = write_manifest(table, tmp_path / "wrong.csv", man.schema)
    with pytest.raises(EmbedxError, match="no training image could be read"):
        train(tiny_config("vae"), manifest, tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert len(pd.read_csv(tmp_path / "run" / "skipped.csv")) >= 8


def test_unreadable_validation_images_are_listed_with_the_training_ones(
    cohort: Path, tiny_config, tmp_path: Path
) -> None:
    from embedx.data.manifest import write_manifest
    from embedx.training.data import build_datasets

    man = load_manifest(cohort)
    config = tiny_config("vae")
    data = build_datasets(man, config)
    val_row = int(data.val.rows[0])
    table = man.table.copy()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    table.loc[val_row, "path"] = str(tmp_path / "broken.png")
    manifest = write_manifest(table, cohort.parent / "one-broken-val.csv", man.schema)
    run_dir = train(config, manifest, tmp_path / "run")
    skipped = pd.read_csv(run_dir / "skipped.csv")
    assert val_row + 1 in set(skipped["row"])  # a validation image: not in any training batch (rows from 1)
