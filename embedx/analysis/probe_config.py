"""`ProbeConfig`: every knob of a probe, in a module of its own.

Why apart from `probe_core`: the refit bootstrap (`refit_bootstrap`) needs the configuration to refit a
probe, and `probe_core` needs the refit bootstrap; with the configuration here, both import it downwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from embedx.analysis.linear_probe import C_GRID, LinearProbe
from embedx.analysis.permutation import LAMBDAS
from embedx.errors import EmbedxError

__all__ = ["ProbeConfig"]


@dataclass(frozen=True)
class ProbeConfig:
    """Every knob of a probe; recorded in each result so that a number can be reproduced."""

    folds: int = 5
    inner_folds: int = 2  # grouped inner CV for C; 2 keeps tuning at a third of the probe cost
    c_grid: tuple[float, ...] = C_GRID
    kernel: Literal["linear", "rbf"] = "linear"
    n_permutations: int = 1000
    n_bootstrap: int = 2000
    alpha: float = 0.05
    max_train_rows: int = 20_000
    tune_max_rows: int = 1_500
    permutation_max_rows: int = 10_000
    rbf_exact_max_rows: int = 10_000
    nystroem_components: int = 500
    ridge_lambdas: tuple[float, ...] = LAMBDAS
    # the interval's widening for what fixed predictions miss (`cv_width`): permuted labellings, rows
    width_permutations: int = 20
    width_max_rows: int = 1_000
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise EmbedxError(f"probe folds must be at least 2, got {self.folds}")
        if self.kernel not in ("linear", "rbf"):
            raise EmbedxError(f"probe kernel must be 'linear' or 'rbf', got {self.kernel!r}")
        if self.n_permutations < 0 or self.n_bootstrap < 0 or self.width_permutations < 0:
            raise EmbedxError("numbers of permutations and bootstrap resamples cannot be negative")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise EmbedxError(f"probe C grid must hold positive values, got {self.c_grid}")

    def estimator(self, task: str) -> LinearProbe:
        return LinearProbe(
            task=task,
            kernel=self.kernel,
            c_grid=tuple(self.c_grid),
            inner_folds=self.inner_folds,
            tune_max_rows=self.tune_max_rows,
            max_train_rows=self.max_train_rows,
            rbf_exact_max_rows=self.rbf_exact_max_rows,
            nystroem_components=self.nystroem_components,
            seed=self.seed,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
