"""Data parallel on CPU: two processes under `accelerate launch` train one VAE and end with identical weights
(each process records a hash of its own weights in every checkpoint).

The launch line is `--multi_gpu --num_processes 2` (torchrun) on this GPU-less machine; the loop then joins
the processes in a gloo group. `accelerate launch --cpu --num_processes 2` starts only one process in
accelerate 1.x unless mpirun is configured (huggingface/accelerate#2741), so it cannot be the recipe.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from embedx.models.registry import build_model
from embedx.training.checkpoint import state_hash
from embedx.training.config import read_config

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_identical_replicas(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EMBEDX_NO_PROGRESS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "embedx", "train", "vae", "--manifest", str(cohort), "--out", str(run),
        "--set", "data.preprocess.size=32", "--set", "optim.batch_size=16",
        "--set", "optim.total_samples=128",
        "--set", "optim.eval_every_samples=128", "--set", "optim.checkpoint_every_samples=64",
        "--set", "optim.log_every_samples=16", "--set", "vae.latent_dim=16", "--set", "vae.base_channels=8",
        "--set", "vae.max_channels=32",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines().count(str(run.resolve())) == 1  # printed by the main process only

    info = json.loads((run / "run.json").read_text())
    assert info["num_processes"] == 2 and info["samples_seen"] == 128
    config = read_config(run / "config.yaml")
    parameters = [n for n, _ in build_model("vae", config.vae, 32, 1).named_parameters()]
    for step in (4, 8):  # checkpoints every 64 samples = 4 global steps of 16 (8 per process)
        folder = run / "checkpoints" / f"step-{step:09d}"
        hashes = [torch.load(folder / f"rank{r}.pt", weights_only=True)["weights_sha256"] for r in (0, 1)]
        assert hashes[0] == hashes[1]
        saved = json.loads((folder / "state.json").read_text())
        assert saved["weights_sha256_per_process"] == hashes
        weights = load_file(folder / "model.safetensors")
        assert state_hash({name: weights[name] for name in parameters}) == hashes[0]
    metrics = pd.read_csv(run / "metrics.csv")
    losses = metrics.query("split == 'train' and metric == 'loss'")["value"]
    assert len(losses) == 8 and losses.iloc[-1] < losses.iloc[0]
