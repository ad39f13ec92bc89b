"""The Accelerate set-up every training loop shares: mixed precision chosen for the hardware, processes
joined into one group on CPU as on GPU, and a clean state for several runs in one process."""

from __future__ import annotations

from typing import Any

import torch


def mixed_precision_mode(setting: str) -> str:
    """`auto` is bf16 on a GPU that has it, full precision otherwise."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(mixed_precision: str, seed: int) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed

    # Several runs in one process (tests, notebooks, one run per experiment condition): start clean.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # Without a GPU, say "CPU" explicitly: only then does Accelerate join the processes that
    # `accelerate launch --multi_gpu --num_processes N` starts into one gloo (MULTI_CPU) group. (`--cpu`
    # with N > 1 starts a single process unless mpirun is configured: accelerate issue #2741.)
    no_gpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    accelerator = Accelerator(mixed_precision=mixed_precision_mode(mixed_precision), cpu=no_gpu)
    set_seed(seed, device_specific=True)  # each process its own stream (DAE noise, t, augmentation)
    return accelerator
