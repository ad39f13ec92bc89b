"""Which attribute values are over-represented in a set of samples (a cluster, a lasso selection).

A cluster or a selection on the map means little until one can say *what it is*: "72 % from site south,
against 33 % in the rest of the cohort". This module turns a boolean selection into that statement, with a
test per value so that a user auditing 220k images is not fooled by the hundreds of values that differ by
chance:

* categorical / binary attributes: one 2x2 table per value (value vs other values, selected vs rest).
  Fisher's exact test where any expected count is below 5, otherwise the chi-square test with Yates'
  correction (Fisher's and chi-square's p agree there, and chi-square is vectorised). Effect sizes: the
  fold enrichment (share in the selection / share in the rest), the odds ratio with a Woolf 95 % CI
  (Haldane +0.5 when a cell is empty), and per attribute Cramér's V of the value x selected table.
* continuous attributes: Mann-Whitney U (location) and the Kolmogorov-Smirnov statistic (shape), with
  medians inside and outside and their difference.
* all p-values of one call are corrected together with Benjamini-Hochberg (`q_value`); each attribute's
  own test (`attribute_p`: the value x selected table, Kruskal-Wallis on subject shares, or Mann-Whitney)
  is corrected across the attributes (`attribute_q`), so that an attribute's Cramér's V can be shown only
  where its association passes the correction. Callers that test several selections at once (clusters)
  pass ``correct=False`` and correct across everything themselves (`attribute_bh`).

Images of one patient are not independent (same anatomy, usually same site), so image-level tests would be
too confident: given ``groups`` (subject ids), the subject is the unit of every test. A categorical attribute
that is constant within each subject (site, sex, a per-patient finding) is tested on every subject's share
of its images inside the selection (`embedx.analysis.subject_shares`): the 2 x 2 table of subjects when each
is wholly in or out, Mann-Whitney / Kruskal-Wallis on the shares when some are split, so a patient with 8
images split across clusters counts once but with all 8 (one drawn image found a 10 %-of-subjects value
23 % of the time where the shares find it 90 %). Attributes that vary within a subject and continuous ones
are tested on one image per subject (a seeded draw); `units_tested` says how many subjects. Cramér's V
comes from the same units as the test (on images a patient with 8 images in a cluster counts 8 times and
inflates it: a review saw a median top V of 0.20 in clusters of cohorts with no effect at all). The counts,
shares and fold enrichment always describe all selected images.

Missing values are left out per attribute and counted (`missing_selected`, `missing_rest`), never filled.
Everything is numpy/scipy on integer codes, so a 220k-row cohort with a dozen attributes is well under
half a second per call (the dashboard calls this on every lasso).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from embedx.analysis.columns import CodedColumn, RankedColumn
from embedx.analysis.labels import value_text
from embedx.analysis.subject_shares import SubjectShareTests, subject_values
from embedx.data.schema import AttributeSpec, infer_kind
from embedx.errors import EmbedxError

COLUMNS = [
    "attribute",
    "kind",
    "value",
    "n_selected",
    "selected_total",
    "n_rest",
    "rest_total",
    "pct_selected",
    "pct_rest",
    "fold",
    "odds_ratio",
    "or_ci_low",
    "or_ci_high",
    "test",
    "statistic",
    "p_value",
    "q_value",
    "significant",
    "direction",
    "cramers_v",
    "attribute_p",
    "attribute_q",
    "median_selected",
    "median_rest",
    "median_shift",
    "ks_statistic",
    "missing_selected",
    "missing_rest",
    "units_tested",
]

# Below this expected count in any cell the chi-square approximation is poor: use Fisher's exact test.
_MIN_EXPECTED = 5.0


def bh_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN p-values stay NaN and do not count as tests."""
    p = np.asarray(p_values, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return q


def attribute_bh(frame: pd.DataFrame, by: Sequence[str] = ("attribute",)) -> np.ndarray:
    """BH q of every attribute's own test (`attribute_p`), one test per ``by`` group (an attribute, or a
    cluster x attribute when several selections are pooled), spread back over that group's rows."""
    if frame.empty:
        return np.empty(0)
    group = frame.groupby(list(by), sort=False).ngroup().to_numpy()
    # first non-missing p of each group: a value absent from the drawn units has none of its own
    p = pd.Series(frame["attribute_p"].to_numpy(dtype=float)).groupby(group).first()
    return bh_adjust(p.to_numpy())[group]


# Fields that come from the test (subject-level when groups are given); the rest describe all rows.
_TEST_FIELDS = (
    "statistic",
    "p_value",
    "odds_ratio",
    "or_ci_low",
    "or_ci_high",
    "cramers_v",
    "attribute_p",
    "ks_statistic",
)


def one_per_subject(groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Sorted row indices holding one randomly drawn row per subject (the independent units)."""
    codes = pd.factorize(np.asarray(groups))[0]  # hashing: much faster than sorting 220k strings
    order = np.random.default_rng(seed).permutation(len(codes))
    _, first = np.unique(codes[order], return_index=True)
    return np.sort(order[first])


def _kind_of(name: str, values: pd.Series, schema: Mapping[str, AttributeSpec] | None) -> str:
    if schema is not None and name in schema:
        return schema[name].kind
    return infer_kind(values)


def _two_by_two_p(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """p-values for many 2x2 tables [[a, b], [c, d]] at once: chi-square (Yates) or Fisher where sparse."""
    a, b, c, d = (np.asarray(x, dtype=float) for x in (a, b, c, d))
    n = a + b + c + d
    row1, row2, col1, col2 = a + b, c + d, a + c, b + d
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_min = np.minimum.reduce([row1 * col1, row1 * col2, row2 * col1, row2 * col2]) / n
        diff = np.maximum(np.abs(a * d - b * c) - n / 2.0, 0.0)
        chi2 = n * diff**2 / (row1 * row2 * col1 * col2)
    p = stats.chi2.sf(chi2, 1)
    degenerate = (row1 == 0) | (row2 == 0) | (col1 == 0) | (col2 == 0)
    p[degenerate] = 1.0
    chi2[degenerate] = 0.0
    test = np.where(expected_min < _MIN_EXPECTED, "fisher", "chi2").astype(object)
    for i in np.flatnonzero((expected_min < _MIN_EXPECTED) & ~degenerate):
        table = np.array([[a[i], b[i]], [c[i], d[i]]], dtype=np.int64)
        result = stats.fisher_exact(table)
        p[i] = result.pvalue
        chi2[i] = result.statistic  # Fisher's statistic is the sample odds ratio
    test[degenerate] = "none"
    return p, chi2, test


Prepared = CodedColumn | RankedColumn


def _categorical_rows(name: str, kind: str, coded: CodedColumn, chosen: np.ndarray) -> list[dict]:
    uniques = coded.uniques
    k = len(uniques)
    if k == 0:
        return []
    picked, missing_sel = coded.selected_counts(chosen)
    missing_rest = coded.missing - missing_sel
    in_sel = picked.astype(float)
    in_rest = coded.counts.astype(float) - in_sel
    n_sel, n_rest = in_sel.sum(), in_rest.sum()
    # Per-attribute association: chi-square of the k x 2 table, Cramér's V = sqrt(chi2 / n) for 2 columns.
    cramers_v, attribute_p = np.nan, np.nan
    if k >= 2 and n_sel > 0 and n_rest > 0:
        table = np.stack([in_sel, in_rest], axis=1)
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        chi2_attr = float(((table - expected) ** 2 / expected).sum())
        cramers_v = float(np.sqrt(chi2_attr / table.sum()))
        attribute_p = float(stats.chi2.sf(chi2_attr, k - 1))
    a, b = in_sel, n_sel - in_sel  # selected: this value / other values
    c, d = in_rest, n_rest - in_rest  # rest: this value / other values
    p, statistic, test = _two_by_two_p(a, b, c, d)
    if k == 1:  # one value only: nothing to compare against
        p[:] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        pct_sel = a / n_sel if n_sel else np.full(k, np.nan)
        pct_rest = c / n_rest if n_rest else np.full(k, np.nan)
        fold = pct_sel / pct_rest
        zero = (a == 0) | (b == 0) | (c == 0) | (d == 0)
        ha, hb, hc, hd = (x + 0.5 * zero for x in (a, b, c, d))
        odds = (ha * hd) / (hb * hc)
        se = np.sqrt(1 / ha + 1 / hb + 1 / hc + 1 / hd)
        or_low, or_high = np.exp(np.log(odds) - 1.96 * se), np.exp(np.log(odds) + 1.96 * se)
    rows = []
    for i, value in enumerate(uniques):
        rows.append(
            {
                "attribute": name,
                "kind": kind,
                "value": value_text(value),
                "n_selected": int(a[i]),
                "selected_total": int(n_sel),
                "n_rest": int(c[i]),
                "rest_total": int(n_rest),
                "pct_selected": float(pct_sel[i]),
                "pct_rest": float(pct_rest[i]),
                "fold": float(fold[i]),
                "odds_ratio": float(odds[i]),
                "or_ci_low": float(or_low[i]),
                "or_ci_high": float(or_high[i]),
                "test": str(test[i]),
                "statistic": float(statistic[i]),
                "p_value": float(p[i]),
                "direction": "over" if pct_sel[i] > pct_rest[i] else "under",
                "cramers_v": cramers_v,
                "attribute_p": attribute_p,
                "missing_selected": missing_sel,
                "missing_rest": missing_rest,
            }
        )
    return rows


def _continuous_row(name: str, kind: str, ranked: RankedColumn, chosen: np.ndarray) -> list[dict]:
    positions = ranked.positions_of(chosen)
    n1 = int(positions.size)
    n2 = ranked.n_present - n1
    missing_sel = int(chosen.size) - n1
    row = {
        "attribute": name,
        "kind": "continuous",
        "value": "",
        "n_selected": n1,
        "selected_total": n1,
        "n_rest": n2,
        "rest_total": n2,
        "missing_selected": missing_sel,
        "missing_rest": ranked.n_missing - missing_sel,
        "test": "mannwhitney",
        "p_value": np.nan,
        "statistic": np.nan,
    }
    if n1 == 0 or n2 == 0:
        return [row | {"test": "none"}]
    med_in, med_out = ranked.median_inside(positions), ranked.median_outside(positions)
    u1, p = ranked.mann_whitney(positions, n2)
    # Rank-biserial correlation: an effect size on the same footing as Cramér's V (0 none, 1 complete).
    rank_biserial = float(2.0 * u1 / (n1 * n2) - 1.0)
    row.update(
        {
            "statistic": u1,
            "p_value": p,
            "median_selected": med_in,
            "median_rest": med_out,
            "median_shift": med_in - med_out,
            "ks_statistic": ranked.ks_statistic(positions, n2),
            "cramers_v": abs(rank_biserial),
            "attribute_p": p,
            "direction": "over" if med_in > med_out else "under",
        }
    )
    return [row]


class CohortTests:
    """`enrichment` of many selections of one cohort: the columns are coded and ranked, and the subjects
    drawn, once; then each selection costs work in proportion to its own rows. Clusters test every cluster
    with one of these, and the explorer keeps one per cohort for its lassos (tens of milliseconds at a
    million rows, where sorting the continuous columns afresh per selection took most of a second)."""

    def __init__(
        self,
        attributes: pd.DataFrame,
        schema: Mapping[str, AttributeSpec] | None = None,
        *,
        columns: Sequence[str] | None = None,
        groups: np.ndarray | Sequence[str] | None = None,
        seed: int = 0,
        units: np.ndarray | None = None,
    ) -> None:
        self.n = len(attributes)
        names = list(columns) if columns is not None else list(attributes.columns)
        unknown = [n for n in names if n not in attributes.columns]
        if unknown:
            raise EmbedxError(
                f"unknown attribute(s) {', '.join(unknown)}; the store has {', '.join(attributes.columns)}"
            )
        if units is not None:
            units = np.asarray(units, dtype=np.int64)
            if units.ndim != 1 or (units.size and (units.min() < 0 or units.max() >= self.n)):
                raise EmbedxError(f"units must be row indices below {self.n} (one row per subject)")
            if np.unique(units).size != units.size:
                raise EmbedxError("units must list each row once (one row per subject)")
        elif groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (self.n,):
                raise EmbedxError(
                    f"groups has shape {groups.shape}, expected ({self.n},) — one subject id per row"
                )
            units = one_per_subject(groups, seed)
        self.units = units
        # subject-constant categorical columns are tested on every subject's share of selected images
        self._shares: SubjectShareTests | None = None
        if groups is not None:
            subject, subject_names = pd.factorize(np.asarray(groups))
            self._shares = SubjectShareTests(subject, len(subject_names))
        # row -> its place among the units (-1: not the subject's drawn image), so that a selection's units
        # are found from its rows alone
        self._unit_of_row: np.ndarray | None = None
        if units is not None:
            self._unit_of_row = np.full(self.n, -1, dtype=np.int64)
            self._unit_of_row[units] = np.arange(units.size)
        self._columns: list[tuple[str, str, Prepared, Prepared | None]] = []
        self._subject_value: dict[str, np.ndarray] = {}
        for name in names:
            values = attributes[name]
            kind = _kind_of(name, values, schema)
            prepared = RankedColumn.of(values) if kind == "continuous" else CodedColumn.of(values)
            self._columns.append((name, kind, prepared, None if units is None else prepared.subset(units)))
            if self._shares is not None and isinstance(prepared, CodedColumn):
                per_subject = subject_values(prepared.codes, self._shares.subject, self._shares.n_subjects)
                if per_subject is not None:
                    self._subject_value[name] = per_subject

    def table(self, selected: np.ndarray | Sequence[bool], *, alpha: float = 0.05,
              correct: bool = True) -> pd.DataFrame:
        """The enrichment table of one selection (a boolean mask over the cohort's rows)."""
        mask = np.asarray(selected, dtype=bool)
        if mask.ndim != 1 or mask.shape[0] != self.n:
            raise EmbedxError(
                f"selection mask has shape {mask.shape}, expected ({self.n},) — one flag per store row"
            )
        if not mask.any() or mask.all():
            return pd.DataFrame(columns=COLUMNS)
        chosen = np.flatnonzero(mask)
        chosen_units = None
        if self._unit_of_row is not None:
            chosen_units = self._unit_of_row[chosen]
            chosen_units = chosen_units[chosen_units >= 0]
        rows: list[dict] = []
        share = self._shares.shares(chosen) if self._subject_value and self._shares is not None else None
        for name, kind, prepared, per_unit in self._columns:
            compute = _continuous_row if kind == "continuous" else _categorical_rows
            found = compute(name, kind, prepared, chosen)  # type: ignore[arg-type]
            tested = None
            if name in self._subject_value and share is not None and self._shares is not None:
                tested = self._shares.rows(name, kind, self._subject_value[name], prepared.uniques,  # type: ignore[union-attr]
                                           share, _categorical_rows)  # None: too many subjects to permute
            if tested is not None and self._shares is not None:
                for r in found:
                    t = tested.get(r["value"], {})
                    for key in _TEST_FIELDS:
                        r[key] = t.get(key, np.nan)
                    r["test"] = t.get("test", "none")
                    r["units_tested"] = self._shares.n_subjects
            elif per_unit is not None:
                tested = {r["value"]: r for r in compute(name, kind, per_unit, chosen_units)}  # type: ignore[arg-type]
                for r in found:
                    t = tested.get(r["value"], {})
                    for key in _TEST_FIELDS:
                        r[key] = t.get(key, np.nan)
                    r["test"] = t.get("test", "none")
                    r["units_tested"] = len(self.units)  # type: ignore[arg-type]
            else:
                for r in found:
                    r["units_tested"] = int(mask.size)
            rows.extend(found)
        frame = pd.DataFrame(rows)
        frame = frame.reindex(columns=COLUMNS)
        frame["q_value"] = bh_adjust(frame["p_value"].to_numpy()) if correct else np.nan
        frame["attribute_q"] = attribute_bh(frame) if correct else np.nan
        frame["significant"] = (frame["q_value"] < alpha).fillna(False).astype(bool)
        return sort_rows(frame)


def enrichment(
    attributes: pd.DataFrame,
    selected: np.ndarray | Sequence[bool],
    schema: Mapping[str, AttributeSpec] | None = None,
    *,
    columns: Sequence[str] | None = None,
    alpha: float = 0.05,
    correct: bool = True,
    groups: np.ndarray | Sequence[str] | None = None,
    seed: int = 0,
    units: np.ndarray | None = None,
) -> pd.DataFrame:
    """Test every attribute value for over/under-representation in ``selected`` against the other rows.

    ``attributes`` has one row per sample (store row order) and one column per attribute; ``selected`` is a
    boolean mask of the same length; ``schema`` gives each attribute's kind (inferred from the values when
    absent). Returns one row per (categorical attribute, value) and one per continuous attribute with the
    columns in `COLUMNS`, sorted with the strongest evidence first (q-value, then effect size). ``q_value``
    is BH-adjusted over all rows of this call when ``correct`` is true (else NaN, for callers that pool
    several calls), and ``significant`` is ``q_value < alpha``. An empty selection, or one holding every
    row, has nothing to compare against and returns an empty frame with these columns. ``groups`` (one
    subject id per row; pass the store's subject ids) makes the tests subject-level, see the module doc;
    ``units`` (the rows `one_per_subject(groups, seed)` returns) may be given instead. Callers that test
    many selections of one cohort build one `CohortTests` and call its `table`.
    """
    mask = np.asarray(selected, dtype=bool)
    if mask.ndim != 1 or mask.shape[0] != len(attributes):
        raise EmbedxError(
            f"selection mask has shape {mask.shape}, expected ({len(attributes)},) — one flag per store row"
        )
    tests = CohortTests(attributes, schema, columns=columns, groups=groups, seed=seed, units=units)
    return tests.table(mask, alpha=alpha, correct=correct)


def sort_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Strongest evidence first: smallest q (or p), then largest |log fold| / effect size."""
    if frame.empty:
        return frame
    evidence = frame["q_value"].where(frame["q_value"].notna(), frame["p_value"]).fillna(1.0)
    effect = (
        np.abs(np.log(frame["fold"].astype(float).replace(0.0, np.nan)))
        .fillna(frame["cramers_v"])
        .fillna(0.0)
    )
    order = np.lexsort((-effect.to_numpy(), evidence.to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


def top_enriched(frame: pd.DataFrame, n: int = 5, alpha: float = 0.05, min_fold: float = 1.0) -> pd.DataFrame:
    """The over-represented categorical values with q < alpha, largest fold first (what names a cluster)."""
    if frame.empty:
        return frame
    q = frame["q_value"].where(frame["q_value"].notna(), frame["p_value"])
    keep = (frame["kind"] != "continuous") & (frame["direction"] == "over") & (q < alpha)
    keep &= frame["fold"].astype(float) > min_fold
    return (
        frame[keep]
        .sort_values(["fold", "n_selected"], ascending=[False, False])
        .head(n)
        .reset_index(drop=True)
    )
