"""GPU readiness in one run: how fast embedx trains and encodes on one GPU, and what memory it takes.

    python bench/gpu.py                  # on one H100/H200-class GPU: the whole table in under 10 minutes
    python bench/gpu.py --quick          # anywhere (CPU too): tiny sizes and few steps, checks that it runs
    python bench/gpu.py --budget-s 480   # stop starting new rows after this many seconds

On the device machine, which lacks some of embedx's dependencies, `bash bench/gpu_wheels.sh` first fetches
them as wheels; it prints the command to run there.

The rows, in the order they run (the costly torch.compile rows last, each skipped once the budget is spent):

1. **DAE training step** at 128 px (DiffAE's 128 px autoencoder: 5 levels, 2 blocks each, attention) and at
   256 px (`configs/chexpert_dae.yaml`, DiffAE's 256 px net), batch 64 (16 at 256 px), z_sem 512. The
   step is the loop's: forward, backward, gradient clipping, AdamW and the EMA update. fp32 and bf16
   autocast, each with and without `optim.channels_last`; then bf16 with `optim.compile` (compile time
   apart).
2. **The whole `embedx train dae` loop** at 128 px, bf16, on a synthetic cohort: data, logging, evaluation
   and a checkpoint included. The gap to row 1 is the loop's overhead.
3. **Encode**: `embedx encode` of that run over the cohort (decode, forward, HDF5 writes), against the bare
   semantic-encoder forward pass.
4. **3-D models** of step 9 (MONAI ResNet classifier and U-Net segmenter, bench/volumes3d.py's step) at 64^3
   and 128^3, fp32 and bf16.

Reference: DiffAE trains at about 42 img/s per V100 at 128 px (its maintainer: 72M samples in about 5 days
on 4 V100s);
embedx's goal is at least 3x that (126 img/s) per H100-class GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ itself, for volumes3d

from embedx.models import build_model
from embedx.training.config import load_config
from embedx.training.ema import EMA
from embedx.training.loop import LossModule

DIFFAE_V100_128PX = 42.0  # img/s per V100 at 128 px: 72M samples / (5 days x 4 V100s)
ROOT = Path(__file__).resolve().parent.parent

# DiffAE's nets as embedx's DAE config expresses them (the 256 px one is configs/chexpert_dae.yaml).
DAE_NETS = {
    128: ["dae.unet_channels=[128,128,256,384,512]", "dae.layers_per_block=2", "dae.attention=true",
          "dae.latent_dim=512", "dae.encoder_pool=mean"],
    256: [],
}
QUICK_NET = ["dae.unet_channels=[16,32]", "dae.layers_per_block=1", "dae.attention=false",
             "dae.latent_dim=32"]


class Clock:
    """Wall time since the start, and whether a row may still start within the budget."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, expected_s: float) -> bool:
        return self.elapsed() + expected_s <= self.budget_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def dae_batch(size: int, quick: bool) -> int:
    """Batch per GPU. DiffAE's 256 px runs spread batch 64 over several GPUs: at 64 per GPU its net's
    eager activations need ~185 GB (46 GB at 128 px, measured), more than one H200 holds."""
    return 4 if quick else (64 if size <= 128 else 16)


def _dae_config(size: int, quick: bool) -> object:
    file = ROOT / "configs" / "chexpert_dae.yaml"
    net = QUICK_NET if quick else DAE_NETS[size]
    return load_config("dae", file, [f"data.preprocess.size={size}", *net])


def timed(step: Callable[[], None], device: torch.device, warmup: int, min_steps: int,
          min_s: float) -> tuple[float, float]:
    """(seconds of the warm-up steps, seconds per step after them); runs until min_steps and min_s."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - start
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < min_s:
        step()
        steps += 1
        if steps % 5 == 0:
            _sync(device)
    _sync(device)
    return warm_s, (time.perf_counter() - start) / steps


def dae_step_row(size: int, batch: int, bf16: bool, channels_last: bool, compile_: bool,
                 device: torch.device, quick: bool) -> dict[str, float]:
    """The loop's training step of the DAE, alone: img/s, peak memory, and the warm-up (compile) time."""
    config = _dae_config(size, quick)
    torch.manual_seed(0)
    model = build_model("dae", config.model_section, size, 1, None).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMA(model, 0.9999)
    wrapped = LossModule(model)  # as the loop runs it, compiled the loop's way
    if compile_:
        wrapped.compile()
    x = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    batch_dict = {"image": x}

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = wrapped(batch_dict)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    _peak_reset(device)
    warm_s, per_step = timed(step, device, warmup=2 if quick else 3, min_steps=2 if quick else 10,
                             min_s=0.0 if quick else 4.0)
    return {"img_s": batch / per_step, "peak_gb": _peak_gb(device), "warm_s": warm_s,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def loop_and_encode_rows(size: int, quick: bool, device: torch.device, tmp: Path,
                         channels_last: bool) -> list[tuple[str, str, float, float]]:
    """The whole training loop at `size` px, then encode of its model vs the bare encoder forward."""
    from embedx.data.synth import generate_cohort
    from embedx.store.encode import encode
    from embedx.training.checkpoint import load_trained
    from embedx.training.loop import train

    n_images = 256 if quick else 2048
    batch = 8 if quick else 64
    samples = 32 if quick else 4096
    start = time.perf_counter()
    manifest = generate_cohort("cxr", n_images, tmp / "cohort", size=size, seed=0)
    print(f"  (synthetic cohort: {n_images} images at {size} px in {time.perf_counter() - start:.0f} s)")
    net = QUICK_NET if quick else DAE_NETS[size]
    config = load_config("dae", ROOT / "configs" / "chexpert_dae.yaml", [
        f"data.preprocess.size={size}", f"optim.batch_size={batch}", f"optim.total_samples={samples}",
        f"optim.eval_every_samples={samples}", f"optim.checkpoint_every_samples={samples}",
        f"optim.log_every_samples={batch * 8}", "optim.warmup_samples=0", "eval.images=4",
        "eval.max_val_samples=64", "eval.latent_stats_samples=256", f"data.workers={0 if quick else 4}",
        f"optim.channels_last={str(channels_last).lower()}", *net])
    start = time.perf_counter()
    run = train(config, manifest, tmp / "run")
    loop_s = time.perf_counter() - start
    rows = [("train loop", f"{size} px, bf16 if GPU, {samples} samples (eval + checkpoint incl.)",
             samples / loop_s, loop_s)]

    start = time.perf_counter()
    encode(run, manifest, tmp / "store.h5", batch_size=batch * 2)
    encode_s = time.perf_counter() - start
    rows.append(("encode", f"{size} px, {n_images} images, fp32 (HDF5 writes incl.)", n_images / encode_s,
                 encode_s))

    trained = load_trained(run, device=device)
    x = torch.rand(batch * 2, 1, size, size, device=device) * 2 - 1
    with torch.no_grad():
        _, per_step = timed(lambda: trained.model.embed(x), device, warmup=2, min_steps=3 if quick else 20,
                            min_s=0.0 if quick else 2.0)
    rows.append(("bare encoder", f"{size} px, batch {batch * 2}, fp32 forward", batch * 2 / per_step,
                 per_step))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps: checks that it runs")
    parser.add_argument("--budget-s", type=float, default=540.0, help="no new row starts after this")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", help="DAE image sizes (default 128 256)")
    parser.add_argument("--sections", default="1,2,4,1b", help="which sections run, e.g. 1,1b")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    device = torch.device(args.device)
    clock = Clock(args.budget_s)
    quick = args.quick
    sizes = [32] if quick else (args.sizes or [128, 256])
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    print(f"torch {torch.__version__} on {name}; budget {args.budget_s:.0f} s")
    print(f"reference: DiffAE ~{DIFFAE_V100_128PX:.0f} img/s per V100 at 128 px; goal >= "
          f"{3 * DIFFAE_V100_128PX:.0f} img/s per H100-class GPU\n")

    print("1. DAE training step (forward, backward, clip, AdamW, EMA); batch per GPU:",
          ", ".join(f"{s} px {dae_batch(s, quick)}" for s in sizes))
    print(f"{'px':>5} {'precision':<9} {'channels_last':<14} {'compile':<8} {'img/s':>8} {'peak GB':>8} "
          f"{'warm-up s':>10} {'params M':>9}")
    eager = [(False, False), (False, True)] + ([(True, False), (True, True)] if bf16_ok else [])
    compiled = [(True, False, True), (True, True, True)] if bf16_ok else [(False, False, True)]
    best: dict[int, tuple[float, bool]] = {}  # eager bf16 (fp32 without bf16): the loop's default
    best_compiled: dict[int, float] = {}

    def dae_row(size: int, bf16: bool, cl: bool, comp: bool) -> None:
        try:
            row = dae_step_row(size, dae_batch(size, quick), bf16, cl, comp, device, quick)
        except Exception as error:  # one failing row (a compile error, an OOM) must not cost the others
            print(f"{size:>5} {'bf16' if bf16 else 'fp32':<9} {cl!s:<14} {comp!s:<8} failed: {error!r:.300}")
            _peak_reset(device)
            return
        if comp:
            best_compiled[size] = max(best_compiled.get(size, 0.0), row["img_s"])
        elif bf16 or not bf16_ok:
            best[size] = max(best.get(size, (0.0, False)), (row["img_s"], cl))
        print(f"{size:>5} {'bf16' if bf16 else 'fp32':<9} {cl!s:<14} {comp!s:<8} {row['img_s']:>8.1f} "
              f"{row['peak_gb']:>8.2f} {row['warm_s']:>10.1f} {row['params_m']:>9.1f}", flush=True)

    for size in sizes if "1" in sections else []:
        for bf16, cl in eager:
            if clock.allows(20):
                dae_row(size, bf16, cl, False)
            else:
                print(f"{size:>5} {'bf16' if bf16 else 'fp32':<9} {cl!s:<14} skipped: budget spent")

    print("\n2-3. The whole loop, and encode vs the bare forward")
    loop_size = sizes[0]
    if "2" not in sections:
        print("  not asked for (--sections)")
    elif clock.allows(90):
        with tempfile.TemporaryDirectory() as tmp:
            cl = best.get(loop_size, (0.0, False))[1]
            try:
                rows = loop_and_encode_rows(loop_size, quick, device, Path(tmp), cl)
            except Exception as error:
                print(f"  failed: {error!r:.500}")
                rows = []
            for what, detail, rate, seconds in rows:
                print(f"  {what:<13} {rate:>9.1f} img/s  {seconds:>7.2f} s  {detail}", flush=True)
    else:
        print("  skipped: budget spent")

    print("\n4. 3-D models of step 9 (MONAI), bare training step")
    from volumes3d import bare_step

    grids = [(32, 32, 32)] if quick else [(64, 64, 64), (128, 128, 128)]
    for task in ("classify", "segment") if "4" in sections else []:
        for shape in grids:
            vol_batch = 2 if quick else (8 if shape[0] == 64 else 2)
            for bf16 in ([False, True] if bf16_ok else [False]):
                if not clock.allows(25):
                    print(f"  {task} {shape}: skipped: budget spent")
                    continue
                _peak_reset(device)
                try:
                    rate = bare_step(task, shape, vol_batch, 2 if quick else 10, device, bf16)
                except Exception as error:
                    print(f"  {task} {shape} {'bf16' if bf16 else 'fp32'}: failed: {error!r:.300}")
                    continue
                print(f"  {task:<9} {'x'.join(map(str, shape)):<12} batch {vol_batch:<3} "
                      f"{'bf16' if bf16 else 'fp32':<5} {rate:>8.1f} vol/s  peak {_peak_gb(device):.2f} GB",
                      flush=True)

    print("\n1b. DAE training step with torch.compile (warm-up s = compiling)")
    for size in sizes if "1b" in sections else []:
        for bf16, cl, comp in compiled:
            if clock.allows(150 if not quick else 60):
                dae_row(size, bf16, cl, comp)
            else:
                print(f"{size:>5} {'bf16' if bf16 else 'fp32':<9} {cl!s:<14} True     skipped: budget spent")

    for label, rate in (("best eager bf16", best.get(128, (0.0,))[0]),
                        ("best with torch.compile", best_compiled.get(128, 0.0))):
        if rate:
            print(f"\nDAE 128 px, {label}: {rate:.0f} img/s = {rate / DIFFAE_V100_128PX:.1f}x DiffAE's "
                  f"{DIFFAE_V100_128PX:.0f} img/s per V100 (goal 3x)")
    print(f"total {clock.elapsed():.0f} s")


if __name__ == "__main__":
    main()
