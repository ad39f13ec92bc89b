"""Exponential moving average of the weights (DiffAE evaluates and ships the EMA model).

The decay ramps up as 1 - step^(-2/3) (diffusers' EMA warm-up) and is capped at the configured value, so
a run of a few hundred steps averages over its last tens of steps instead of staying at the random init
that a fixed 0.9999 would keep for ~10^4 steps. Kept as our own class so that its state is plain tensors
that go into safetensors and resume bit-exactly.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, power: float = 2.0 / 3.0) -> None:
        self.decay, self.power, self.step = float(decay), float(power), 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        return min(self.decay, 1.0 - (self.step ** -self.power)) if self.step > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step += 1
        weight = 1.0 - self.current_decay()
        named = [(name, param) for name, param in model.named_parameters() if name in self.shadow]
        # One fused update for all tensors: a lerp per parameter is hundreds of kernel launches per step.
        torch._foreach_lerp_([self.shadow[name] for name, _ in named],
                             [param.detach().float() for _, param in named], weight)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"shadow.{k}": v for k, v in self.shadow.items()},
                "step": torch.tensor(self.step, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        shadow = {k.removeprefix("shadow."): v for k, v in state.items() if k.startswith("shadow.")}
        if set(shadow) != set(self.shadow):
            raise ValueError("the EMA state does not match the model's parameters")
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.step = int(state["step"])
