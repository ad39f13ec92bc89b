"""Volumes/s of seed 001's 3-D networks (MONAI ResNet classifier, U-Net segmenter) at the seed's width.

    python bench/volumes3d.py                  # CPU: 64^3, batch 8 (a few minutes on 2 cores)
    python bench/volumes3d.py --quick          # 32^3, few steps: checks that everything runs
    python bench/volumes3d.py --device cuda    # GPU: 64^3, 128^3 and the seed's 256x256x32, fp32 and bf16

Three figures per network and grid: the bare training step (forward + backward + Adam), the whole
training loop `embedx experiment shift --dims 3` runs (Accelerate, flips drawn per volume, cosine LR,
per-epoch checkpoint skipped), and inference (`predict_volumes`). Peak GPU memory where there is one.
"""

from __future__ import annotations

import argparse
import time

import torch

from embedx.models.volume_nets import resnet3d, unet3d
from embedx.training.accel import make_accelerator
from embedx.training.volume_fit import FitSettings, fit_volume_model, predict_volumes


def _target(task: str, n: int, shape: tuple[int, int, int]) -> torch.Tensor:
    if task == "classify":
        return torch.randint(0, 2, (n,))
    return (torch.rand(n, 1, *shape) > 0.97).to(torch.uint8)


def bare_step(
    task: str, shape: tuple[int, int, int], batch: int, steps: int, device: torch.device, bf16: bool
) -> float:
    torch.manual_seed(0)
    net = (resnet3d() if task == "classify" else unet3d()).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.rand(batch, 1, *shape, device=device)
    y = _target(task, batch, shape).to(device)
    loss_fn = torch.nn.CrossEntropyLoss() if task == "classify" else torch.nn.BCEWithLogitsLoss()
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = loss_fn(out.float(), y if task == "classify" else y.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def loop_and_inference(
    task: str, shape: tuple[int, int, int], batch: int, n: int, mixed: str
) -> tuple[float, float]:
    torch.manual_seed(0)
    net = resnet3d() if task == "classify" else unet3d()
    x = torch.rand(n, 1, *shape).to(torch.float16)
    y = _target(task, n, shape)
    accelerator = make_accelerator(mixed, 0)
    settings = FitSettings(task=task, epochs=1, batch_size=batch, lr=1e-4, seed=0, augment="flip")
    start = time.perf_counter()
    net = fit_volume_model(net, x, y, settings, accelerator=accelerator)
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    train = (n // batch) * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    predict_volumes(net, x, task, accelerator=accelerator, batch_size=batch)
    return train, n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        grids, batch, steps, n = [(32, 32, 32)], 4, 2, 8
    elif device.type == "cuda":
        grids, batch, steps, n = [(64, 64, 64), (128, 128, 128), (256, 256, 32)], 8, 10, 64
    else:
        grids, batch, steps, n = [(64, 64, 64)], 8, 4, 32
    precisions = [False, True] if device.type == "cuda" else [False]
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, batch {batch}, seed widths "
        "(ResNet 32-256 channels, U-Net 8-128)"
    )
    print(
        f"{'network':<10} {'grid':<12} {'precision':<9} {'bare step vol/s':>16} {'loop vol/s':>11} "
        f"{'inference vol/s':>16} {'peak GB':>8}"
    )
    for task in ("classify", "segment"):
        for shape in grids:
            for bf16 in precisions:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                bare = bare_step(task, shape, batch, steps, device, bf16)
                loop, infer = loop_and_inference(task, shape, batch, n, "bf16" if bf16 else "no")
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
                name = "ResNet" if task == "classify" else "U-Net"
                print(
                    f"{name:<10} {'x'.join(map(str, shape)):<12} {'bf16' if bf16 else 'fp32':<9} "
                    f"{bare:>16.1f} {loop:>11.1f} {infer:>16.1f} {peak:>8.2f}"
                )


if __name__ == "__main__":
    main()
