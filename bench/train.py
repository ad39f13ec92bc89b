"""Training-loop throughput: images/s of `embedx train` end to end (data loading, logging, evaluation and
checkpoints included), beside what a checkpoint and `load_trained` cost. bench/models.py has the raw
forward+backward speed of each model; the gap between the two is the loop's overhead.

    python bench/train.py            # 32 and 64 px, ~2,000 samples per model
    python bench/train.py --quick    # 32 px, ~500 samples per model
Run on an otherwise idle machine; thread count from OMP_NUM_THREADS (default: torch's).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")

import torch

from embedx.data.synth import generate_cohort
from embedx.training.checkpoint import load_trained
from embedx.training.config import load_config
from embedx.training.loop import train

MODELS = {
    "vae": [],
    "dae": ["dae.latent_dim=128", "dae.unet_channels=[16,32,64]", "dae.ddim_steps=10",
            "optim.ema_decay=0.995"],
    "cnn": ["data.label=site"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [32] if args.quick else [32, 64]
    samples = 512 if args.quick else 2048
    batch = 32
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, {samples} samples")
    print(f"{'model':<6}{'px':>5}{'loop img/s':>12}{'run s':>8}{'ckpt MB':>9}{'load s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            manifest = generate_cohort("cxr", 600, Path(tmp) / f"cohort{size}", size=size, seed=0)
            for kind, extra in MODELS.items():
                config = load_config(kind, None, [
                    f"data.preprocess.size={size}", f"optim.batch_size={batch}",
                    f"optim.total_samples={samples}", f"optim.eval_every_samples={samples}",
                    f"optim.checkpoint_every_samples={samples}", f"optim.log_every_samples={batch * 4}",
                    "optim.warmup_samples=0", "eval.images=4", "eval.max_val_samples=64",
                    "eval.latent_stats_samples=256", "optim.mixed_precision=no", *extra,
                ])
                out = Path(tmp) / f"{kind}{size}"
                start = time.perf_counter()
                run = train(config, manifest, out)
                wall = time.perf_counter() - start
                ckpt_mb = sum(f.stat().st_size for f in (run / "checkpoints").rglob("*") if f.is_file()) / 1e6
                start = time.perf_counter()
                load_trained(run)
                load_s = time.perf_counter() - start
                print(f"{kind:<6}{size:>5}{samples / wall:>12.1f}{wall:>8.1f}{ckpt_mb:>9.1f}{load_s:>8.2f}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
