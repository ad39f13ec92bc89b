"""Attribute columns prepared once for many selections: categorical ones as integer codes with their counts,
continuous ones sorted and ranked, so that a selection's counts and rank statistics cost work in proportion
to the selection, not to the cohort (`embedx.analysis.enrichment.CohortTests`). A lasso of 85k rows on a
million-row map is tested in a few tens of milliseconds, where passes over every row took 0.14 s.

Every method takes the selection as sorted row indices (`chosen`), never as a boolean mask over the cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special


@dataclass(frozen=True)
class CodedColumn:
    """A categorical column as sorted integer codes (-1 where missing), the values they stand for, and the
    cohort's count of each (so that the rest's counts are the cohort's minus the selection's)."""

    codes: np.ndarray
    uniques: np.ndarray
    counts: np.ndarray  # rows holding each value
    missing: int  # rows with no value

    @classmethod
    def of(cls, values: pd.Series) -> CodedColumn:
        codes, uniques = pd.factorize(values, sort=True)  # missing values get -1
        return cls.from_codes(np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object))

    @classmethod
    def from_codes(cls, codes: np.ndarray, uniques: np.ndarray) -> CodedColumn:
        present = codes[codes >= 0]
        counts = np.bincount(present, minlength=len(uniques))
        return cls(codes, uniques, counts, int(codes.size - present.size))

    def subset(self, rows: np.ndarray) -> CodedColumn:
        """These rows only, listing only the values they hold (as factorising them afresh would)."""
        codes = self.codes[rows]
        used = np.unique(codes[codes >= 0])
        remap = np.full(len(self.uniques) + 1, -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        return CodedColumn.from_codes(remap[codes], self.uniques[used])

    def selected_counts(self, chosen: np.ndarray) -> tuple[np.ndarray, int]:
        """(rows of each value among `chosen`, chosen rows with no value)."""
        picked = self.codes[chosen]
        present = picked[picked >= 0]
        return np.bincount(present, minlength=len(self.uniques)), int(picked.size - present.size)


@dataclass(frozen=True)
class RankedColumn:
    """A continuous column sorted and ranked once. A selection becomes the sorted positions of its rows in
    value order; from them come its Mann-Whitney U, both medians and the Kolmogorov-Smirnov statistic
    without touching the other rows (scipy sorts the whole cohort per call)."""

    values: np.ndarray  # float64 per row, NaN where missing (±inf too: no finite value to rank)
    position: np.ndarray  # per row: its place in value order among the present rows, -1 where missing
    sorted_values: np.ndarray  # the present values in value order
    sorted_ranks: np.ndarray  # per position: the average rank (1-based) of its value
    group_first: np.ndarray  # per position: the first position of its run of tied values
    group_last: np.ndarray  # per position: the last position of its run of tied values
    tie_term: float  # sum of t^3 - t over tie groups: the variance's tie correction

    @classmethod
    def of(cls, values: pd.Series | np.ndarray) -> RankedColumn:
        x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
        present = np.flatnonzero(np.isfinite(x))
        by_value = np.argsort(x[present], kind="stable")
        ordered = x[present][by_value]
        new_group = np.r_[True, ordered[1:] != ordered[:-1]] if ordered.size else np.zeros(0, bool)
        group = np.cumsum(new_group) - 1
        counts = np.bincount(group) if ordered.size else np.zeros(0, dtype=np.int64)
        starts = np.r_[0, np.cumsum(counts)[:-1]] if counts.size else counts
        position = np.full(x.size, -1, dtype=np.int64)
        position[present[by_value]] = np.arange(present.size)
        index = np.int32 if present.size < 2**31 else np.int64  # half the memory at a million rows
        return cls(
            values=np.where(np.isfinite(x), x, np.nan),
            position=position.astype(index),
            sorted_values=ordered,
            sorted_ranks=(starts + (counts + 1.0) / 2.0)[group],
            group_first=starts[group].astype(index),
            group_last=(starts + counts - 1)[group].astype(index),
            tie_term=float((counts.astype(float) ** 3 - counts).sum()),
        )

    @property
    def n_present(self) -> int:
        return int(self.sorted_values.size)

    @property
    def n_missing(self) -> int:
        return int(self.values.size - self.sorted_values.size)

    def subset(self, rows: np.ndarray) -> RankedColumn:
        return RankedColumn.of(self.values[rows])

    def positions_of(self, chosen: np.ndarray) -> np.ndarray:
        """The sorted value-order positions of the chosen rows that have a value."""
        found = self.position[chosen]
        found = found[found >= 0]
        if _large(found.size, self.n_present):  # marking every position beats sorting most of them
            marked = np.zeros(self.n_present, dtype=bool)
            marked[found] = True
            return np.flatnonzero(marked)
        return np.sort(found).astype(np.int64)

    def median_inside(self, positions: np.ndarray) -> float:
        """`np.median` of the selected values (sorted positions give sorted values)."""
        return _median_at(self.sorted_values, positions)

    def median_outside(self, positions: np.ndarray) -> float:
        """`np.median` of the present values not selected, found from the selected positions alone."""
        m = self.n_present - positions.size
        # before selected position j lie q[j] unselected values; the k-th unselected value (0-based) has
        # every selected position with q <= k before it, so it sits at k + (their number)
        q = positions - np.arange(positions.size)
        k = np.array([m // 2] if m % 2 else [m // 2 - 1, m // 2])
        return _median_at(self.sorted_values, k + np.searchsorted(q, k, side="right"))

    def mann_whitney(self, positions: np.ndarray, n2: int) -> tuple[float, float]:
        """(U of the selection, two-sided asymptotic p with continuity correction), as
        `scipy.stats.mannwhitneyu(inside, outside, method="asymptotic")` gives them."""
        n1 = positions.size
        u1 = float(self.sorted_ranks[positions].sum()) - n1 * (n1 + 1) / 2.0
        u = max(u1, n1 * n2 - u1)
        n = n1 + n2
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.sqrt(n1 * n2 / 12.0 * ((n + 1) - self.tie_term / (n * (n - 1))))
            z = (u - n1 * n2 / 2.0 - 0.5) / s
        return u1, float(np.clip(2.0 * special.ndtr(-z), 0.0, 1.0))

    def ks_statistic(self, positions: np.ndarray, n2: int) -> float:
        """The two-sample Kolmogorov-Smirnov D of selected vs other present rows (`scipy.stats.ks_2samp`).

        D is the largest gap between the two empirical CDFs at the ends of tie groups. Between two groups
        that hold a selected value the selection's CDF is flat and the rest's rises, so the gap is largest
        at the end of a group holding a selected value and smallest just before the next such group (or at
        the last position): those ends are the only candidates.
        """
        n1 = positions.size
        if _large(n1, self.n_present):  # most rows selected: one pass over every tie group's end
            marked = np.zeros(self.n_present, dtype=np.int64)
            marked[positions] = 1
            ends = np.flatnonzero(self.group_last == np.arange(self.n_present))
            inside = np.cumsum(marked)[ends]
        else:
            before = self.group_first[positions].astype(np.int64) - 1
            ends = np.sort(np.concatenate([self.group_last[positions], before[before >= 0],
                                           [self.n_present - 1]]))
            inside = np.searchsorted(positions, ends, side="right")
        outside = ends + 1 - inside
        return float(np.abs(inside / n1 - outside / n2).max())


def _large(selected: int, present: int) -> bool:
    """Whether a selection is large enough that a pass over every position costs less than working on its
    own positions (sorting them, searching among them): above an eighth of the present rows."""
    return 8 * selected > present


def _median_at(ordered: np.ndarray, positions: np.ndarray) -> float:
    """The median of `ordered[positions]` (positions sorted): the middle one, or the mean of the middle two,
    as `np.median` gives it."""
    m = positions.size
    if m == 0:
        return float("nan")
    middle = positions[[m // 2]] if m % 2 else positions[[m // 2 - 1, m // 2]]
    return float(np.mean(ordered[middle]))
