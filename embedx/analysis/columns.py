"""Attribute columns prepared once for many selections: categorical ones as integer codes, continuous ones
ranked, so that each selection's counts and rank statistics are a pass over integer arrays
(`embedx.analysis.enrichment.CohortTests`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special


@dataclass(frozen=True)
class CodedColumn:
    """A categorical column as sorted integer codes (-1 where missing) and the values they stand for."""

    codes: np.ndarray
    uniques: np.ndarray

    @classmethod
    def of(cls, values: pd.Series) -> CodedColumn:
        codes, uniques = pd.factorize(values, sort=True)  # missing values get -1
        return cls(np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object))

    def subset(self, rows: np.ndarray) -> CodedColumn:
        """These rows only, listing only the values they hold (as factorising them afresh would)."""
        codes = self.codes[rows]
        used = np.unique(codes[codes >= 0])
        remap = np.full(len(self.uniques) + 1, -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        return CodedColumn(remap[codes], self.uniques[used])


@dataclass(frozen=True)
class RankedColumn:
    """A continuous column ranked once, so that every selection's Mann-Whitney U and Kolmogorov-Smirnov
    statistic cost one pass over the rows instead of a sort of a million values (scipy sorts per call)."""

    values: np.ndarray  # float64, NaN where missing
    ranks: np.ndarray  # average ranks (1-based) among the present values, NaN where missing
    order: np.ndarray  # the present rows by value
    group_end: np.ndarray  # per position of `order`: the last of its run of tied values
    tie_term: float  # sum of t^3 - t over tie groups: the variance's tie correction

    @classmethod
    def of(cls, values: pd.Series | np.ndarray) -> RankedColumn:
        x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
        present = np.flatnonzero(np.isfinite(x))
        by_value = np.argsort(x[present], kind="stable")
        ordered = x[present][by_value]
        new_group = np.r_[True, ordered[1:] != ordered[:-1]] if ordered.size else np.zeros(0, bool)
        group = np.cumsum(new_group) - 1
        counts = np.bincount(group).astype(float) if ordered.size else np.zeros(0)
        starts = np.r_[0.0, np.cumsum(counts)[:-1]] if counts.size else counts
        ranks = np.full(x.size, np.nan)
        ranks[present[by_value]] = (starts + (counts + 1.0) / 2.0)[group]
        group_end = np.r_[new_group[1:], True] if ordered.size else new_group
        return cls(np.where(np.isfinite(x), x, np.nan), ranks, present[by_value], group_end,
                   float((counts**3 - counts).sum()))

    def subset(self, rows: np.ndarray) -> RankedColumn:
        return RankedColumn.of(self.values[rows])

    def mann_whitney(self, inside: np.ndarray, n1: int, n2: int) -> tuple[float, float]:
        """(U of the selection, two-sided asymptotic p with continuity correction), as
        `scipy.stats.mannwhitneyu(inside, outside, method="asymptotic")` gives them."""
        u1 = float(self.ranks[inside].sum()) - n1 * (n1 + 1) / 2.0
        u = max(u1, n1 * n2 - u1)
        n = n1 + n2
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.sqrt(n1 * n2 / 12.0 * ((n + 1) - self.tie_term / (n * (n - 1))))
            z = (u - n1 * n2 / 2.0 - 0.5) / s
        return u1, float(np.clip(2.0 * special.ndtr(-z), 0.0, 1.0))

    def ks_statistic(self, selected: np.ndarray, n1: int, n2: int) -> float:
        """The two-sample Kolmogorov-Smirnov D of selected vs other present rows (`scipy.stats.ks_2samp`)."""
        chosen = selected[self.order]
        cdf_in = np.cumsum(chosen)[self.group_end] / n1
        cdf_out = np.cumsum(~chosen)[self.group_end] / n2
        return float(np.abs(cdf_in - cdf_out).max())
