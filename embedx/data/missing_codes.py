"""Missing-value codes: cells that stand for "unknown" (age -1 or 999, sex U, site 0) are not values.

Read as values, an age of -1 or 999 shifts every MAE, fairness band and correlation without a word, so a
code declared in the sidecar (`missing: [-1, 999]`) turns its cells missing before any kind-specific
conversion or check, exactly as an empty cell. Undeclared columns are never changed; a continuous column
that looks as if it holds such a code gets one warning with the YAML line that declares it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import yaml

from embedx.data.manifest_read import ZERO_PADDED
from embedx.data.manifest_values import equals_text, plain_text, to_numbers
from embedx.data.schema import AttributeSpec

log = logging.getLogger(__name__)

# Usual numeric codes for "unknown"; a column holding one of them apart from its other values is suspect.
SENTINELS = (-1, -9, -99, -999, 99, 999, 9999, 99999)
# A candidate needs at least this share of the present rows: one odd value is an outlier, not a code.
SENTINEL_MIN_SHARE = 0.01
# "Apart": beyond the other values' range by more than this share of it (20..99 ages: 99 is not apart).
SENTINEL_GAP = 0.1


def _numbers(column: pd.Series) -> pd.Series:
    """Each cell as a float where it reads as a number (int, float or numeric text), else NaN.

    Booleans are not numbers here (True == 1 would make the code 1 turn every True cell missing), nor are
    dates and other objects."""
    if pd.api.types.is_bool_dtype(column):
        return pd.Series(np.nan, index=column.index)
    if pd.api.types.is_numeric_dtype(column):
        return column.astype(float)
    if plain_text(column):  # every cell a str or missing: each distinct text converted once
        return to_numbers(column.astype(object)).astype(float)
    values = column.astype(object)
    readable = values.map(lambda v: isinstance(v, (str, int, float, np.integer, np.floating))
                          and not isinstance(v, (bool, np.bool_)))  # fmt: skip
    numeric = pd.to_numeric(values.where(readable), errors="coerce")
    return numeric.astype(float)


def code_mask(column: pd.Series, code: str | int | float) -> np.ndarray:
    """Rows whose cell is `code`, however pandas read the column.

    A numeric code matches a cell that reads as the same number: -1 matches the int -1, the float -1.0 and
    the text "-1", never -10 or "-1.5". A text code matches the same text (cells are stripped before), and
    a number equal to it where the column was read as numbers (the code was quoted in the YAML)."""
    if isinstance(code, str):
        mask = equals_text(column, code.strip())  # writable, for the `|=` below
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            number = pd.to_numeric(pd.Series([code]), errors="coerce").iloc[0]
            if pd.notna(number):
                mask |= (column.astype(float) == float(number)).to_numpy()
        return mask
    return np.array(_numbers(column) == float(code), dtype=bool)


def _shown(code: object) -> str:
    """A code as written in the YAML: text quoted, numbers bare (999.0 as 999)."""
    if isinstance(code, float) and code.is_integer():
        return str(int(code))
    return repr(code) if isinstance(code, str) else str(code)


def apply_missing_codes(
    table: pd.DataFrame, declared: Mapping[str, AttributeSpec], where: str, csv: bool = True
) -> dict[str, dict[str, int]]:
    """Turn the cells of each declared code missing, in place; returns {column: {code as shown: rows}}.

    Logs one line per attribute with the rows each code turned missing (code and count only, no other cell
    contents); a code that matches no row is a warning, as it may be a typo. In a CSV manifest a text
    column left with numbers only (0/1/U without U) becomes numeric, as pandas reads it without the codes.
    """
    counts: dict[str, dict[str, int]] = {}
    for name, spec in declared.items():
        if not spec.missing or name not in table.columns:
            continue
        column = table[name]
        if isinstance(column.dtype, pd.CategoricalDtype):  # a Parquet category column takes no new values
            column = column.astype(object)
        hit = np.zeros(len(column), dtype=bool)
        per_code: dict[str, int] = {}
        for code in spec.missing:
            mask = code_mask(column, code) & ~hit
            per_code[_shown(code)] = per_code.get(_shown(code), 0) + int(mask.sum())  # -1 and -1.0: one
            hit |= mask
        counts[name] = per_code
        if hit.any():
            column = column.where(~pd.Series(hit, index=column.index))
            if csv and (column.dtype == object or pd.api.types.is_string_dtype(column)):
                column = _as_read_without_codes(column)
            table[name] = column
        unmatched = [c for c, n in per_code.items() if n == 0]
        shown = ", ".join(f"{c} -> {n} row(s)" for c, n in per_code.items())
        log.log(
            logging.WARNING if unmatched else logging.INFO,
            "%s: attribute %r: declared missing code(s) %s turned missing%s",
            where, name, shown,
            f" (no row holds {', '.join(unmatched)}: a typo in the schema, or absent from this cohort?)"
            if unmatched else "",
        )  # fmt: skip
    return counts


def _as_read_without_codes(column: pd.Series) -> pd.Series:
    """A CSV text column whose remaining values are all plain numbers, as numbers (zero-padded codes such
    as "01" stay text, as `manifest_read` keeps them)."""
    present = column.dropna()
    if present.empty or not (plain_text(present) or all(isinstance(v, str) for v in present)):
        return column
    if any(ZERO_PADDED.match(value) for value in present.unique()):  # each distinct text once
        return column
    numeric = to_numbers(column)
    return numeric if numeric.notna().sum() == len(present) else column


def _yaml_line(spec: AttributeSpec, codes: list[object]) -> str:
    """The sidecar line that declares `codes` (with any already declared) for this attribute."""
    entry = {"kind": spec.kind, "role": spec.role, "missing": [*spec.missing, *codes]}
    dumped = yaml.safe_dump({spec.name: entry}, default_flow_style=True, sort_keys=False, width=10**6)
    return dumped.strip()[1:-1]  # "{age: {...}}" -> "age: {...}"


def suspected_sentinels(values: pd.Series) -> dict[int, int]:
    """{code: rows} for the usual numeric codes that look like "unknown" rather than a value.

    A code counts when it is held by at least `SENTINEL_MIN_SHARE` of the present rows and lies apart
    from the other values: beyond their range by more than `SENTINEL_GAP` of it, or negative where all
    others are non-negative (-1 among ages 0..90)."""
    present = _numbers(values).dropna()
    found: dict[int, int] = {}
    for code in SENTINELS:
        hit = present == code
        rows = int(hit.sum())
        if rows == 0 or rows < SENTINEL_MIN_SHARE * len(present):
            continue
        others = present[~hit]
        if others.empty:
            continue
        low, high = float(others.min()), float(others.max())
        margin = SENTINEL_GAP * (high - low)
        if code < low - margin or code > high + margin or (code < 0 <= low):
            found[code] = rows
    return found


def warn_sentinels(
    table: pd.DataFrame, schema: Mapping[str, AttributeSpec], where: str, sidecar: str
) -> None:
    """One warning per continuous column that seems to hold an undeclared code, with the YAML to add.

    Nothing is turned missing: a value that looks like a code may be real, and only the user knows."""
    for name, spec in schema.items():
        if spec.kind != "continuous" or name not in table.columns:
            continue
        found = suspected_sentinels(table[name])
        if not found:
            continue
        n = int(table[name].notna().sum())
        shown = ", ".join(f"{code} in {rows} of {n} rows ({100 * rows / max(n, 1):.1f} %)"
                          for code, rows in found.items())  # fmt: skip
        log.warning(
            "%s: continuous column %r holds %s, apart from its other values: probably a code for "
            "'unknown', read now as a value. If it is, declare it in %s:  %s",
            where, name, shown, sidecar, _yaml_line(spec, list(found)),
        )  # fmt: skip
