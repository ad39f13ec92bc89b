"""The Hessian penalty (Peebles et al., ECCV 2020), portable and self-contained.

The penalty pushes a generator G towards a *diagonal* Hessian with respect to its input z, so that each latent
coordinate controls its own factor of variation. It never forms the Hessian: for Rademacher directions v
(entries ±1) the second directional derivative v^T H v is estimated by central finite differences,

    v^T H v ≈ [G(z + εv) − 2 G(z) + G(z − εv)] / ε²,

and because v^T H v = Σ_i H_ii + Σ_{i≠j} H_ij v_i v_j, its variance over v is 2 Σ_{i≠j} H_ij² — the diagonal
drops out, only off-diagonal terms are penalised. The unbiased sample variance over k directions estimates it
per output element; the result is reduced over outputs (max by default, as in the reference code
`hessian_penalty_pytorch.py` of the authors' repository).

Cost: 2k extra forward passes of G (2k + 1 if `G_z` is not given), all differentiable, so activation memory
grows about (2k + 1)-fold. G must be deterministic (no dropout, fixed noise, no train-mode batch norm):
otherwise the finite differences measure noise, amplified by 1/ε².
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["max", "mean"]


def rademacher(shape: tuple[int, ...], *, device: torch.device | None = None,
               dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> Tensor:
    """Random ±1 entries, each with probability 1/2."""
    bits = torch.randint(0, 2, shape, device=device, generator=generator)
    return (bits * 2 - 1).to(dtype)


def second_directional_derivatives(G: Callable[[Tensor], Tensor], z: Tensor, k: int = 2, epsilon: float = 0.1,
                                   G_z: Tensor | None = None,
                                   generator: torch.Generator | None = None) -> Tensor:
    """(k, *G(z).shape) finite-difference estimates of v^T H v, one per Rademacher direction v.

    Each direction is drawn independently for every sample in the batch (z's first dimension), as in the
    reference implementation.
    """
    if k < 2:
        raise ValueError(f"hessian penalty needs k >= 2 directions to take a variance, got k={k}")
    if epsilon <= 0:
        raise ValueError(f"hessian penalty needs epsilon > 0, got {epsilon}")
    if G_z is None:
        G_z = G(z)
    directions = epsilon * rademacher((k, *z.shape), device=z.device, dtype=z.dtype, generator=generator)
    estimates = [(G(z + v) - 2 * G_z + G(z - v)) / epsilon**2 for v in directions]
    return torch.stack(estimates)


def hessian_penalty(G: Callable[[Tensor], Tensor], z: Tensor, k: int = 2, epsilon: float = 0.1,
                    reduction: Reduction = "max", G_z: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
    """Scalar penalty: the variance over k directions of v^T H v, reduced over all outputs (and the batch).

    Args:
        G: the function whose Hessian should be diagonal, z -> tensor (batch first).
        z: its input, (B, D). Gradients flow to G's parameters and, if z requires grad, to z.
        k: number of Rademacher directions (>= 2); the reference uses 2.
        epsilon: finite-difference step; the reference uses 0.1. The estimate is exact for quadratic G.
        reduction: "max" (the reference's choice: penalise the worst output element) or "mean".
        G_z: G(z) if already computed (saves one forward pass).
        generator: optional torch.Generator for the directions (reproducible penalties in tests).

    Expected value for one output: 2 Σ_{i≠j} H_ij². Returns 0 (exactly, up to rounding) if H is diagonal.
    """
    sdd = second_directional_derivatives(G, z, k=k, epsilon=epsilon, G_z=G_z, generator=generator)
    variance = sdd.var(dim=0, unbiased=True)
    if reduction == "max":
        return variance.max()
    if reduction == "mean":
        return variance.mean()
    raise ValueError(f"unknown hessian penalty reduction {reduction!r}; use 'max' or 'mean'")


def _self_test(k: int = 4000, tol: float = 0.1) -> None:
    """Analytic check (the reference repository ships one like it).

    For G(z) = Σ_{i<j} c_ij z_i z_j (+ any diagonal terms) the Hessian is H_ij = c_ij off the diagonal, so the
    expected penalty is 2 Σ_{i≠j} H_ij² = 4 Σ_{i<j} c_ij². Finite differences are exact for quadratics, so the
    only error is the sampling error of the variance over k directions.
    """
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 3, generator=gen, dtype=torch.float64)

    def G(x: Tensor) -> Tensor:  # noqa: N802
        return (2.0 * x[:, 0] * x[:, 1] + 0.5 * x[:, 1] * x[:, 2] + 3.0 * x[:, 0] ** 2).unsqueeze(1)

    expected = 4 * (2.0**2 + 0.5**2)
    got = float(hessian_penalty(G, z, k=k, generator=gen))
    if abs(got - expected) > tol * expected:
        raise AssertionError(f"hessian penalty self-test: got {got:.4f}, expected {expected:.4f}")

    def G_diag(x: Tensor) -> Tensor:  # noqa: N802
        return x**2 + torch.sin(x)

    got_diag = float(hessian_penalty(G_diag, z, k=8, generator=gen))
    if got_diag > 1e-6:
        raise AssertionError(f"hessian penalty self-test: diagonal Hessian gave {got_diag:.2e}, expected 0")


if __name__ == "__main__":
    _self_test()
    print("hessian penalty self-test passed")
