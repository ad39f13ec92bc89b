"""Subject-aware splits: a subject's images never sit on both sides of a split.

Two images of one patient share anatomy, so a model (or probe) that saw one "recognises" the other; any
split that ignores subjects reports leakage as skill. Balancing on attributes (seed 001: manufacturer x
label) uses scikit-learn's `StratifiedGroupKFold`, which keeps groups whole while matching the strata
proportions fold by fold. Site-separated splits (seed 002: train on some acquisition sessions, test on
others) are the control that tells a site signature from a biological one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from embedx.errors import EmbedxError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainValTestSplit:
    """Row positions (into the table) of each side."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.train, self.val, self.test))


def _check_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise EmbedxError(
            f"{what} column(s) {', '.join(map(repr, missing))} not in the table "
            f"(columns: {', '.join(map(str, table.columns))})"
        )


def strata_labels(table: pd.DataFrame, stratify: str | Sequence[str] | None) -> np.ndarray:
    """One stratum code per row joining the stratify columns ('manufacturer=GE|label=1').

    A missing value is a stratum of its own rather than a dropped row.
    """
    if stratify is None:
        return np.zeros(len(table), dtype=np.int64)
    columns = [stratify] if isinstance(stratify, str) else list(stratify)
    _check_columns(table, columns, "stratify")
    parts = [table[c].astype(object).where(table[c].notna(), "<missing>").astype(str) for c in columns]
    joined = parts[0].radd(f"{columns[0]}=")
    for c, p in zip(columns[1:], parts[1:], strict=True):
        joined = joined + f"|{c}=" + p
    _, codes = np.unique(joined.to_numpy(dtype=str), return_inverse=True)
    return codes.astype(np.int64)


def _groups(table: pd.DataFrame, subject_col: str) -> np.ndarray:
    _check_columns(table, [subject_col], "subject")
    return table[subject_col].astype(str).to_numpy()


def _fold_assignment(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold index per row from StratifiedGroupKFold (shuffled, seeded)."""
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise EmbedxError(
            f"need at least {n_splits} subjects to split into {n_splits} folds, found {n_groups}"
        )
    folds = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        for k, (_, test_rows) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
            folds[test_rows] = k
    except ValueError as err:  # every stratum smaller than k
        raise EmbedxError(f"cannot make {n_splits} stratified folds: {err}") from err
    return folds


def _assign_sides(y: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Side index per row: whole subjects, greedily placed where the stratum shortfall is largest.

    The StratifiedGroupKFold idea with unequal targets: subjects (shuffled by `seed`, largest first) go one
    by one to the side whose per-stratum shares move closest to the target fractions; the row count is
    balanced as one more stratum. Unlike k-fold with n = 1/fraction folds, this works for any fractions and
    for strata smaller than the number of folds.
    """
    unique_groups, g_index = np.unique(groups, return_inverse=True)
    n_groups, n_strata = len(unique_groups), int(y.max()) + 1 if len(y) else 1
    counts = np.zeros((n_groups, n_strata + 1))
    np.add.at(counts, (g_index, y), 1.0)
    counts[:, -1] = counts[:, :-1].sum(axis=1)  # group size: balances the number of rows per side
    totals = counts.sum(axis=0)
    targets = np.asarray(fractions, dtype=float)[:, None]
    open_sides = np.flatnonzero(np.asarray(fractions) > 0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts[order, -1], kind="stable")]
    filled = np.zeros((len(fractions), n_strata + 1))
    side_of_group = np.empty(n_groups, dtype=np.int64)
    for g in order:
        before = (filled[open_sides] / totals - targets[open_sides]) ** 2
        after = ((filled[open_sides] + counts[g]) / totals - targets[open_sides]) ** 2
        side = open_sides[int(np.argmin((after - before).sum(axis=1)))]
        filled[side] += counts[g]
        side_of_group[g] = side
    return side_of_group[g_index]


def train_val_test_split(
    table: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    subject_col: str = "subject_id",
    stratify: str | Sequence[str] | None = None,
    seed: int = 0,
) -> TrainValTestSplit:
    """Split rows into train/val/test with every subject on one side, balanced on `stratify` columns.

    Fractions are met in units of whole subjects, so small cohorts land near, not exactly on, them.
    A zero fraction gives an empty side.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise EmbedxError(
            f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}"
        )
    groups = _groups(table, subject_col)
    y = strata_labels(table, stratify)
    n_groups = len(np.unique(groups))
    needed = sum(f > 0 for f in fractions)
    if n_groups < needed:
        raise EmbedxError(f"need at least {needed} subjects for a {needed}-way split, found {n_groups}")
    side = _assign_sides(y, groups, fractions, seed)
    rows = np.arange(len(table))
    return TrainValTestSplit(train=rows[side == 0], val=rows[side == 1], test=rows[side == 2])


def subject_kfold(
    table: pd.DataFrame,
    k: int,
    stratify: str | Sequence[str] | None = None,
    seed: int = 0,
    subject_col: str = "subject_id",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (train_rows, test_rows) for k folds; subjects whole, strata balanced (StratifiedGroupKFold)."""
    if k < 2:
        raise EmbedxError(f"k-fold needs k >= 2, got {k}")
    groups = _groups(table, subject_col)
    if stratify is None:
        # Nothing to balance: GroupKFold gives equal-size folds without StratifiedGroupKFold's per-subject
        # loop (seconds at 100k subjects).
        n_groups = len(np.unique(groups))
        if n_groups < k:
            raise EmbedxError(f"need at least {k} subjects to split into {k} folds, found {n_groups}")
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = np.empty(len(table), dtype=np.int64)
        for fold, (_, test_rows) in enumerate(splitter.split(np.zeros(len(table)), groups=groups)):
            folds[test_rows] = fold
    else:
        folds = _fold_assignment(strata_labels(table, stratify), groups, k, seed)
    rows = np.arange(len(table))
    for fold in range(k):
        yield rows[folds != fold], rows[folds == fold]


def site_split(
    table: pd.DataFrame,
    site_col: str,
    test_sites: Sequence[object] | str,
    subject_col: str = "subject_id",
) -> tuple[np.ndarray, np.ndarray]:
    """Train on every site but `test_sites`, test on those (seed 002's session-separated control).

    Rows with a missing site are in neither side. A subject imaged at both a train and a test site is kept
    on the test side only, so the split stays subject-disjoint.
    """
    _check_columns(table, [site_col], "site")
    test_sites = [test_sites] if isinstance(test_sites, str) else list(test_sites)
    if not test_sites:
        raise EmbedxError("site_split needs at least one test site")
    site = table[site_col]
    present = site.dropna()
    available = sorted({str(v) for v in present.unique()})
    unknown = [s for s in test_sites if str(s) not in available]
    if unknown:
        raise EmbedxError(
            f"test site(s) {', '.join(map(repr, unknown))} not found in column {site_col!r} "
            f"(sites: {', '.join(available)})"
        )
    wanted = {str(s) for s in test_sites}
    if wanted >= set(available):
        raise EmbedxError(f"every site of {site_col!r} is a test site; nothing is left to train on")
    has_site = site.notna().to_numpy()
    is_test = has_site & site.astype(str).isin(wanted).to_numpy()
    is_train = has_site & ~is_test
    if subject_col in table.columns:
        subjects = table[subject_col].astype(str).to_numpy()
        test_subjects = set(subjects[is_test])
        shared = is_train & np.isin(subjects, list(test_subjects))
        if shared.any():
            log.warning(
                "%d train-site row(s) belong to subjects also seen at a test site; left out of train",
                int(shared.sum()),
            )
            is_train &= ~shared
    rows = np.arange(len(table))
    return rows[is_train], rows[is_test]
