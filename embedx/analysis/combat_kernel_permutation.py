"""The site's permutation test after harmonising by it, when the probe is an RBF kernel (`combat`).

Why its own statistic: the probes' permutation test fits a linear ridge; after ComBat has removed each
site's mean and scale, a linear ridge sees almost nothing of a site that lives in feature interactions, which
is exactly what the RBF probe is there to find (its p was 0.22-0.5 in 6 of 6 such cohorts). The ridge here
reads random Fourier features of the same kernel instead, on the same label-free folds and subject
permutations as every probe. The harmonised matrices used the observed site labels, so the p is
conservative; under ComBat's own null (shift / scale only) p < 0.05 came out in 22 of 450 RBF cohorts
(/tmp/review-controls2/sim.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from embedx.analysis.folds import subject_codes
from embedx.analysis.labels import label_strings, merge_small_classes
from embedx.analysis.permutation import probe_permutation_test
from embedx.analysis.probe_core import MIN_MIXING, ProbeConfig
from embedx.analysis.probe_result import ProbeResult

KERNEL_FEATURES = 256  # random Fourier features of the RBF kernel: the batch's permutation statistic


class KernelFeatures:
    """`matrix[rows][i]` standardised, as random Fourier features of exp(-|x-y|^2 / d) (the probe's RBF)."""

    def __init__(self, matrix: np.ndarray, rows: np.ndarray, seed: int) -> None:
        self.matrix, self.rows, d = matrix, rows, matrix.shape[1]
        rng = np.random.default_rng(seed)
        self.W = rng.normal(0.0, np.sqrt(2.0 / d), (d, KERNEL_FEATURES))
        self.b = rng.uniform(0.0, 2 * np.pi, KERNEL_FEATURES)

    def __getitem__(self, i: Any) -> np.ndarray:
        part = self.matrix[self.rows[i]]
        std = part.std(axis=0)
        part = (part - part.mean(axis=0)) / np.where(std > 0, std, 1.0)
        return np.cos(part @ self.W + self.b).astype(np.float32)


def batch_permutation(
    result: ProbeResult, X: np.ndarray, y: np.ndarray, groups: np.ndarray, fold: np.ndarray,
    harmonised: Callable[[int], np.ndarray], cfg: ProbeConfig,
) -> ProbeResult:
    """The batch's permutation test after harmonising by it, on the kernel's features (module doc)."""
    if result.skipped or not cfg.n_permutations:
        return result
    labels = merge_small_classes(label_strings(y), groups, cfg.folds)[0]  # the probe's own classes
    rows = np.flatnonzero([v is not None for v in labels])
    _, codes = np.unique(labels[rows].astype(str), return_inverse=True)
    codes, subjects = codes.reshape(-1), subject_codes(groups[rows])
    with threadpool_limits(limits=1):  # its serial 256 x 256 eigh ran 17x slower on threaded BLAS (2 cores)
        permutation = probe_permutation_test(
            X[rows], codes, subjects, int(codes.max()) + 1, False, cfg, fold[rows],
            lambda f: KernelFeatures(harmonised(int(f)), rows, cfg.seed + 4),  # type: ignore[arg-type,return-value]
        )
    permutation["features"] = f"{KERNEL_FEATURES} random Fourier features of the RBF kernel (gamma 1/d)"
    mixing = permutation.get("mixing")
    low = mixing is not None and mixing < MIN_MIXING
    untestable = f"the permutations barely move this label (mixing {mixing:.2f})" if low else None
    return result.replace(p_value=permutation.pop("p_value"), permutation=permutation, untestable=untestable)
