"""Images/s of one training step (forward + backward + Adam) of each model, batch 16, at 64/128/256 px.

    python bench/models.py                 # CPU table (all sizes; minutes on 2 cores)
    python bench/models.py --quick         # 64 px, few steps: checks that everything runs
    python bench/models.py --device cuda   # on a GPU: also bf16 autocast and channels_last

Default model configs (the CPU demo sizes); `vae+hp` is the VAE with the Hessian penalty on (k = 2: four extra
decoder passes). Run on an otherwise idle machine; torch threads = all cores unless OMP_NUM_THREADS is set.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

import torch

from embedx.models import build_model

VARIANTS: dict[str, tuple[str, dict]] = {
    "vae": ("vae", {}),
    "vae+hp": ("vae", {"hessian_weight": 5e-6}),
    "dae": ("dae", {}),
    "cnn": ("cnn", {}),
}


def _batch(kind: str, size: int, batch: int, device: torch.device, channels_last: bool) -> dict:
    x = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = {"image": x}
    if kind == "cnn":
        out["label"] = torch.randint(0, 2, (batch,), device=device)
    return out


@contextlib.contextmanager
def _autocast(device: torch.device, bf16: bool) -> Iterator[None]:
    if bf16:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def bench_one(name: str, size: int, batch: int, steps: int, device: torch.device, bf16: bool = False,
              channels_last: bool = False) -> tuple[float, int]:
    """(images/s, parameters) over `steps` timed steps after 2 warm-up steps."""
    kind, cfg = VARIANTS[name]
    torch.manual_seed(0)
    model = build_model(kind, cfg, size, 1, num_classes=2 if kind == "cnn" else None).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = _batch(kind, size, batch, device, channels_last)

    def step() -> None:
        with _autocast(device, bf16):
            loss, _ = model.training_loss(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return batch * steps / elapsed, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 px only, 2 timed steps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.steps = [64], 2
    device = torch.device(args.device)
    modes = [("fp32", False, False)]
    if device.type == "cuda":
        modes += [("bf16", True, False), ("fp32+cl", False, True), ("bf16+cl", True, True)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, {args.steps} timed steps; cl = channels_last")
    header = f"{'model':8} {'px':>4} {'params':>8} " + " ".join(f"{m[0]:>9}" for m in modes)
    print(header + "   (images/s, training step)")
    print("-" * len(header))
    for model_name in args.models:
        for size in args.sizes:
            cells, params = [], 0
            for _, bf16, cl in modes:
                try:
                    ips, params = bench_one(model_name, size, args.batch, args.steps, device, bf16, cl)
                    cells.append(f"{ips:9.1f}")
                except (RuntimeError, torch.OutOfMemoryError) as exc:  # report and go on with the table
                    cells.append(f"{'failed':>9}")
                    print(f"  {model_name} {size}px: {type(exc).__name__}: {str(exc)[:100]}")
            print(f"{model_name:8} {size:4d} {params / 1e6:7.2f}M " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
