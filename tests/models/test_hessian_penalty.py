"""Known answers for the Hessian penalty: zero for a diagonal Hessian, 2·Σ_{i≠j} H_ij² in expectation."""

from __future__ import annotations

import pytest
import torch

from embedx.models.hessian import _self_test, hessian_penalty


def test_reference_self_test_passes() -> None:
    _self_test()


def test_zero_for_diagonal_hessian() -> None:
    z = torch.randn(8, 5, dtype=torch.float64)
    # every output depends on one input only: each output's Hessian is diagonal
    pen = hessian_penalty(lambda v: v**2 + torch.sin(3 * v), z, k=6)
    assert float(pen) < 1e-9


def test_positive_for_cross_terms_and_matches_expectation() -> None:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 2, dtype=torch.float64, generator=gen)
    pen = hessian_penalty(lambda v: (v[:, 0] * v[:, 1]).unsqueeze(1), z, k=4000, generator=gen)
    # H_12 = H_21 = 1 -> E[var] = 2 * (1 + 1) = 4; finite differences are exact for a quadratic
    assert 3.6 < float(pen) < 4.4


@pytest.mark.parametrize("c", [0.5, 3.0])
def test_scales_with_the_square_of_the_cross_term(c: float) -> None:
    z = torch.randn(4, 3, dtype=torch.float64)

    def g(scale: float):
        return lambda v: scale * (v[:, 0] * v[:, 2]).unsqueeze(1)

    base = hessian_penalty(g(1.0), z, k=64, reduction="mean", generator=torch.Generator().manual_seed(5))
    scaled = hessian_penalty(g(c), z, k=64, reduction="mean", generator=torch.Generator().manual_seed(5))
    assert float(base) > 0
    assert float(scaled) == pytest.approx(c**2 * float(base), rel=1e-9)


def test_epsilon_does_not_matter_for_quadratics_and_max_bounds_mean() -> None:
    z = torch.randn(6, 4, dtype=torch.float64)

    def f(v: torch.Tensor) -> torch.Tensor:
        return torch.stack([v[:, 0] * v[:, 1], 2 * v[:, 2] * v[:, 3], v[:, 0] ** 2], dim=1)

    vals = [float(hessian_penalty(f, z, k=8, epsilon=e, generator=torch.Generator().manual_seed(2)))
            for e in (0.01, 0.1, 1.0)]
    assert vals == pytest.approx([vals[0]] * 3, rel=1e-6)
    g = torch.Generator().manual_seed(3)
    mx = hessian_penalty(f, z, k=8, reduction="max", generator=g)
    g = torch.Generator().manual_seed(3)
    mean = hessian_penalty(f, z, k=8, reduction="mean", generator=g)
    assert float(mx) >= float(mean) > 0


def test_gradient_flows_to_generator_parameters() -> None:
    lin = torch.nn.Linear(3, 3)
    z = torch.randn(4, 3)
    pen = hessian_penalty(lambda v: lin(v) * lin(v).roll(1, dims=1), z, k=2)
    pen.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_bad_arguments_are_refused() -> None:
    z = torch.randn(2, 2)
    with pytest.raises(ValueError, match="k >= 2"):
        hessian_penalty(lambda v: v, z, k=1)
    with pytest.raises(ValueError, match="reduction"):
        hessian_penalty(lambda v: v, z, reduction="median")  # type: ignore[arg-type]
