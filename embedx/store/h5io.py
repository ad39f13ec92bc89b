"""Row-aligned HDF5 datasets and the conversions the store makes: the low floor under `Store`.

Why separate: `Store` is about what a cohort's file means (samples, models, maps, analyses); these helpers are
about how rows sit in HDF5 (chunking, early allocation, ordered reads and writes of row subsets, names that
HDF5 cannot hold, manifest values as stored). They know nothing of embedx's layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from embedx.data.schema import AttributeSpec
from embedx.errors import StoreError
from embedx.store.repair import ALIGNED

_STR = h5py.string_dtype("utf-8")
_ALIGNED = ALIGNED


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def escape_name(name: str) -> str:
    """HDF5 names cannot hold '/'; CheXpert has an 'AP/PA' column. Percent-escape it (and '%')."""
    if name in ("", ".", ".."):
        raise StoreError(f"{name!r} cannot be used as a name in the store")
    return name.replace("%", "%25").replace("/", "%2F")


def unescape_name(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, datetime)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def to_json(payload: Any) -> str:
    return json.dumps(payload, default=_json_default)


def _packed_strings(ds: h5py.Dataset) -> np.ndarray | None:
    """The dataset in numpy's StringDType, where numpy and h5py have it (else None): HDF5 converts into one
    packed buffer instead of a bytes object per row."""
    string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)
    if string_dtype is None or ds.dtype.kind != "O":
        return None
    try:
        return ds.astype(string_dtype())[()]
    except (TypeError, ValueError):  # an h5py without StringDType support
        return None


def read_strings(ds: h5py.Dataset) -> np.ndarray:
    """A variable-length UTF-8 string dataset as an object array of str (a million ids in ~0.35 s through
    StringDType, ~0.55 s with h5py's `asstr`)."""
    packed = _packed_strings(ds)
    return packed.astype(object) if packed is not None else ds.asstr()[()].astype(object)


def read_text_column(ds: h5py.Dataset) -> pd.Series:
    """A string attribute column, "" read as missing, in pandas' default string dtype.

    Where that dtype is pandas' Arrow-backed "str" (pandas 3), the packed strings go to Arrow in one copy:
    0.05 s for a million rows, where str objects, then pandas' conversion of them, took 0.3 s.
    """
    default = pd.Series(["a"]).dtype
    packed = _packed_strings(ds) if isinstance(default, pd.StringDtype) else None
    if packed is not None:
        import pyarrow as pa

        try:
            return pd.Series(pa.array(packed, mask=packed == ""), dtype=default)
        except (pa.ArrowException, TypeError, ValueError):  # a pyarrow that cannot read StringDType
            pass
    values = packed.astype(object) if packed is not None else read_strings(ds)
    values[values == ""] = None
    return pd.Series(values)


def _row_chunk(row_bytes: int) -> int:
    """About 256 KiB per chunk: large enough for streaming, small enough for random-subset reads."""
    return int(max(16, min(4096, (256 * 1024) // max(1, row_bytes))))


def _create_aligned(
    group: h5py.Group, name: str, n: int, tail: tuple[int, ...], dtype: Any, fill: Any = None
) -> h5py.Dataset:
    """A resizable, row-aligned dataset with every chunk allocated at once (see the module docstring)."""
    itemsize = 8 if dtype is _STR else np.dtype(dtype).itemsize
    row_bytes = itemsize * int(np.prod(tail, dtype=np.int64)) if tail else itemsize
    chunks = (_row_chunk(row_bytes), *tail)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    kwargs: dict[str, Any] = {}
    if fill is not None:
        kwargs["fillvalue"] = fill
    ds = group.create_dataset(
        name, shape=(n, *tail), maxshape=(None, *tail), chunks=chunks, dtype=dtype, dcpl=dcpl, **kwargs
    )
    ds.attrs[_ALIGNED] = True
    return ds


def _sorted_rows(rows: Any, n: int) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise StoreError(f"row index out of range: the store has {n} rows")
    return rows


def _read_rows(ds: h5py.Dataset, rows: np.ndarray | None) -> np.ndarray:
    """Read rows in the caller's order; h5py wants increasing unique indices, so sort and scatter back."""
    if rows is None:
        return ds[()]
    if rows.size == 0:
        return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
    uniq, inverse = np.unique(rows, return_inverse=True)
    if uniq.size > 0.25 * ds.shape[0]:
        data = ds[()][uniq]
    elif uniq[-1] - uniq[0] + 1 == uniq.size:
        data = ds[int(uniq[0]) : int(uniq[-1]) + 1]
    else:
        data = ds[uniq]
    return data[inverse]


def _write_rows(ds: h5py.Dataset, rows: np.ndarray, values: np.ndarray) -> None:
    if rows.size == 0:
        return
    order = np.argsort(rows, kind="stable")
    rows_sorted = rows[order]
    if np.any(np.diff(rows_sorted) == 0):
        raise StoreError("the same row was given twice in one write")
    values = values[order]
    if rows_sorted[-1] - rows_sorted[0] + 1 == rows_sorted.size:
        ds[int(rows_sorted[0]) : int(rows_sorted[-1]) + 1] = values
    else:
        ds[rows_sorted] = values


def _format_category(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return str(value)


def input_row(row: int) -> str:
    """How a row of the table given to `add_samples` is named when nothing better is known: counted from 1
    like `embedx data check`'s rows, and said to be the input's, since a store row is another number."""
    return f"row {row + 1} of the rows being added (counting from 1; not a store row)"


def _column_values(
    name: str, series: pd.Series, spec: AttributeSpec, existing: str | None,
    row_name: Callable[[int], str] = input_row,
) -> tuple[np.ndarray, str]:
    """Convert one manifest column to what the store holds: ("float", float64) or ("str", object).

    `row_name` names a 0-based position of `series` in an error (encode passes `Manifest.where`: 'row N
    (line L)' of the manifest file)."""
    numeric = pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
    want = existing or (
        "float" if spec.kind == "continuous" or (spec.kind == "binary" and numeric) else "str"
    )
    if want == "float":
        values = pd.to_numeric(series.astype(object).where(series.notna(), None), errors="coerce")
        bad = values.isna() & series.notna()
        if bad.any():
            first = series[bad].iloc[0]
            where = row_name(int(np.flatnonzero(bad.to_numpy())[0]))
            raise StoreError(f"attribute {name!r} is stored as numbers but {where} holds {first!r}")
        return values.to_numpy(dtype=np.float64), "float"
    return np.array([_format_category(v) for v in series.tolist()], dtype=object), "str"


