"""The fused Adam / AdamW every training uses must be torch's Adam, step for step."""

from __future__ import annotations

import copy

import pytest
import torch

from embedx.training.optimizers import adam


@pytest.mark.parametrize("decoupled", [False, True])
def test_fused_adam_follows_the_plain_one(decoupled: bool) -> None:
    torch.manual_seed(0)

    def small_net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 3))

    plain_model, fused_model = small_net(), small_net()
    fused_model.load_state_dict(plain_model.state_dict())
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    plain = kind(plain_model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    fused = adam(fused_model.parameters(), lr=1e-2, weight_decay=0.1, decoupled=decoupled)
    assert type(fused) is kind and fused.defaults.get("fused") is True  # the CPU has the fused kernel
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    for _ in range(20):
        for model, optimizer in ((plain_model, plain), (fused_model, fused)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(plain_model.parameters(), fused_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # and it resumes from a state saved by either
    fused.load_state_dict(plain.state_dict())


def test_parameters_the_fused_kernel_cannot_take_get_the_plain_update() -> None:
    integer = torch.nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
    assert adam([torch.nn.Parameter(torch.zeros(2)), integer], lr=1e-3).defaults.get("fused") in (None, False)


def test_a_state_saved_in_channels_last_resumes_into_a_plain_layout() -> None:
    """`optim.channels_last` may change on resume: the moment buffers of a fused run in channels_last, loaded
    for a plain-layout run, must drive the same updates as the same values laid out plainly. (Loaded as they
    were saved, the resumed run went its own way within two steps.)"""
    from embedx.training.optimizers import load_state

    torch.manual_seed(1)

    def small_net() -> torch.nn.Module:
        conv = torch.nn.Conv2d
        return torch.nn.Sequential(conv(1, 16, 4, 2, 1), torch.nn.ReLU(), conv(16, 32, 4, 2, 1))

    net = small_net().to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 32, 32)
    first = adam(net.parameters(), lr=1e-3, weight_decay=0.01, decoupled=True)
    for _ in range(3):
        first.zero_grad()
        net(x.to(memory_format=torch.channels_last)).square().mean().backward()
        first.step()
    saved_weights = {k: v.contiguous() for k, v in net.state_dict().items()}
    saved_state = first.state_dict()
    assert any(not v["exp_avg"].is_contiguous() for v in saved_state["state"].values())
    plain_state = copy.deepcopy(saved_state)
    for buffers in plain_state["state"].values():
        for name in ("exp_avg", "exp_avg_sq"):
            buffers[name] = buffers[name].contiguous()

    def resumed(fused: bool) -> list[torch.Tensor]:
        model = small_net()
        model.load_state_dict(saved_weights)
        if fused:
            optimizer = adam(model.parameters(), lr=1e-3, weight_decay=0.01, decoupled=True)
            load_state(optimizer, copy.deepcopy(saved_state))  # as read afresh from a checkpoint
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
            optimizer.load_state_dict(copy.deepcopy(plain_state))
        for _ in range(3):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(resumed(fused=True), resumed(fused=False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
