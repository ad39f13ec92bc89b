"""Per-value forms of the per-cell work of loading a manifest, with the per-cell results.

A million-row text column holds a few (site, sex, view) to a few thousand (age written as text) distinct
values; converting or testing each distinct value once and spreading the answers back by code gives the
same cells as doing it per row, in a fraction of the time. Only columns whose cells are plain Python
strings or missing take this way (`plain_text`); any other column (mixed objects from Parquet, nullable
"string" or categorical dtypes) keeps the per-cell call it always had.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def plain_text(column: pd.Series) -> bool:
    """Whether every present cell is a str and missing cells are NaN/None: pandas' default "str" dtype
    (pandas >= 3) or an object column of strings (pandas 2, Parquet)."""
    dtype = column.dtype
    if isinstance(dtype, pd.StringDtype):
        na_value = getattr(dtype, "na_value", None)
        return isinstance(na_value, float) and math.isnan(na_value)
    return pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(column, skipna=True) in (
        "string", "empty")


def to_numbers(column: pd.Series) -> pd.Series:
    """`pd.to_numeric(column, errors="coerce")`, converting each distinct text once.

    pandas converts cell by cell and picks the result dtype from the set of values it saw; the distinct
    values (with one missing cell where the column has any) are that same set, so dtype and cells agree."""
    if not len(column) or not plain_text(column):
        return pd.to_numeric(column, errors="coerce")
    codes, distinct = pd.factorize(column, use_na_sentinel=True)
    values = list(np.asarray(distinct, dtype=object))
    absent = codes < 0
    if absent.any():
        values.append(column.iloc[int(np.flatnonzero(absent)[0])])  # the column's own missing value
        codes = np.where(absent, len(values) - 1, codes)
    converted = pd.to_numeric(pd.Series(values, dtype=column.dtype), errors="coerce").to_numpy()
    return pd.Series(converted[codes], index=column.index, name=column.name)


def equals_text(column: pd.Series, text: str) -> np.ndarray:
    """Per cell: `isinstance(cell, str) and cell == text` (a writable boolean array)."""
    if plain_text(column):
        return np.array((column == text).to_numpy(dtype=bool, na_value=False), dtype=bool)
    return np.array(column.astype(object).map(lambda v: isinstance(v, str) and v == text), dtype=bool)
