"""Writing the store's rows: adding and updating samples with their attributes, renaming them, forgetting
what was computed from images that changed. Part of `Store` (see `h5store` for the layout and crash
safety: rows grow before they are written, and a failed write is cut back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from embedx.data.schema import AttributeSpec, resolve_schema
from embedx.errors import StoreError
from embedx.store.h5io import (
    _STR,
    _column_values,
    _create_aligned,
    _format_category,
    _write_rows,
    escape_name,
    input_row,
)
from embedx.store.repair import aligned_datasets


class SampleWrites:
    """`/samples` rows in, renamed, or invalidated; every row-aligned dataset grows with them."""

    # what the mixin reads of the Store it is part of (annotations only: nothing here overrides the Store)
    _f: h5py.File
    path: Path
    n: int
    _ids_cache: np.ndarray | None
    _need_write: Callable[[], None]
    pseudonymise: Callable[[Iterable[Any]], np.ndarray]
    rows_of: Callable[..., np.ndarray]
    models: Callable[[], list[str]]
    projections: Callable[[], dict[str, list[str]]]
    _model_group: Callable[[str], h5py.Group]
    _state_group: Callable[..., h5py.Group]

    def add_samples(
        self,
        sample_ids: Sequence[str] | np.ndarray,
        subject_ids: Sequence[Any] | np.ndarray,
        attributes: pd.DataFrame | None = None,
        schema: Mapping[str, AttributeSpec] | None = None,
        pseudonymise: bool = False,
        extra: Mapping[str, Sequence[str] | np.ndarray] | None = None,
        row_name: Callable[[int], str] = input_row,
    ) -> np.ndarray:
        """Insert new samples (appended) and update the given ones; returns their store rows, input order.

        Existing rows keep their latents; their subject id and attribute values are refreshed from the
        input, so the newest manifest is the truth. Every row-aligned dataset grows with the samples table.
        `extra` holds per-row text fields of /samples written in the same step (fingerprint, cohort).
        `row_name` names an input row (0-based position) in an error; encode passes `Manifest.where`, so a
        bad value is named by its manifest row and line, as `embedx data check` names it.
        A write that fails (a full disk) is undone, so the store never holds rows without ids.
        """
        self._need_write()
        ids = np.asarray([str(s) for s in sample_ids], dtype=object)
        subjects = np.asarray(list(subject_ids), dtype=object)
        if attributes is None:
            attributes = pd.DataFrame(index=pd.RangeIndex(len(ids)))
        if not (len(ids) == len(subjects) == len(attributes)):
            raise StoreError(
                f"mismatched lengths: {len(ids)} sample ids, {len(subjects)} subject ids, "
                f"{len(attributes)} attribute rows"
            )
        dupes = pd.Index(ids).duplicated()
        if dupes.any():
            raise StoreError(f"duplicate sample id(s) in the input: {', '.join(ids[dupes][:5])}")
        attributes = attributes.reset_index(drop=True)
        full_schema = resolve_schema(attributes, dict(schema or {}))
        if pseudonymise:
            subjects = self.pseudonymise(subjects)
        else:
            subjects = np.array([_format_category(s) for s in subjects], dtype=object)

        rows = self.rows_of(ids, missing_ok=True)
        new = rows < 0
        old_n = self.n
        try:
            if new.any():
                self._grow(old_n + int(new.sum()))
                rows[new] = np.arange(old_n, old_n + int(new.sum()))
            _write_rows(self._f["samples/id"], rows, ids)
            _write_rows(self._f["samples/subject_id"], rows, subjects)
            for field_name, values in (extra or {}).items():
                self._write_sample_strings(field_name, rows, np.asarray(values, dtype=object))
            self._write_attributes(rows, attributes, full_schema, row_name)
        except BaseException as err:
            self._undo_growth(old_n)
            if not isinstance(err, OSError):
                raise
            raise StoreError(
                f"{self.path}: could not add {int(new.sum())} sample(s) ({err}); a full disk? The store "
                f"keeps its {old_n} earlier rows: free some space and rerun."
            ) from err
        self._ids_cache = None
        self._f.flush()
        return rows

    def _undo_growth(self, old_n: int) -> None:
        """Best effort after a failed write: cut grown datasets back (the next writer repairs the rest)."""
        self._ids_cache = None
        try:
            for ds in aligned_datasets(self._f):
                if ds.shape[0] > old_n:
                    ds.resize(old_n, axis=0)
            self._f.flush()
        except (OSError, RuntimeError, ValueError):
            pass

    def _write_sample_strings(self, field_name: str, rows: np.ndarray, values: np.ndarray) -> None:
        group = self._f["samples"]
        if field_name not in group:
            _create_aligned(group, field_name, self.n, (), _STR)
        _write_rows(group[field_name], rows, values)

    def invalidate_rows(self, rows: Sequence[int] | np.ndarray) -> None:
        """Forget what was computed from these rows' images (they changed): latents, codes, thumbnails, map
        positions. The rows, their ids and attributes stay; the next encode of each model redoes them."""
        self._need_write()
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size == 0:
            return
        for model in self.models():
            group = self._model_group(model)
            for flag in ("encoded", "xT_encoded"):
                if flag in group:
                    _write_rows(group[flag], rows, np.zeros(rows.size, dtype=bool))
            _write_rows(group["z"], rows, np.full((rows.size, group["z"].shape[1]), np.nan, np.float32))
        _write_rows(self._f["samples/has_thumb"], rows, np.zeros(rows.size, dtype=bool))
        for model, methods in self.projections().items():
            for method in methods:
                ds = self._f["projections"][escape_name(model)][method]
                _write_rows(ds, rows, np.full((rows.size, 2), np.nan, np.float32))
                state = self._state_group(model, method)
                if "status" in state:
                    _write_rows(state["status"], rows, np.zeros(rows.size, dtype=np.int8))
        self._f.flush()

    def rename_samples(self, rows: np.ndarray, new_ids: Sequence[str]) -> None:
        """Give stored rows new ids (their image moved): latents, thumbnails and analyses stay theirs."""
        self._need_write()
        rows = np.asarray(rows, dtype=np.int64)
        _write_rows(self._f["samples/id"], rows, np.asarray(new_ids, dtype=object))
        self._ids_cache = None
        self._f.flush()

    def _write_attributes(self, rows: np.ndarray, attributes: pd.DataFrame,
                          full_schema: Mapping[str, AttributeSpec],
                          row_name: Callable[[int], str] = input_row) -> None:
        group = self._f["samples/attrs"]
        for name in attributes.columns:
            spec = full_schema[name]
            key = escape_name(str(name))
            existing = group[key].attrs.get("dtype") if key in group else None
            values, dtype = _column_values(str(name), attributes[name], spec, existing, row_name)
            if key not in group:
                ds = _create_aligned(
                    group,
                    key,
                    self.n,
                    (),
                    _STR if dtype == "str" else np.float64,
                    None if dtype == "str" else np.nan,
                )
                ds.attrs["name"] = str(name)
                ds.attrs["dtype"] = dtype
            ds = group[key]
            ds.attrs["kind"] = spec.kind
            ds.attrs["role"] = spec.role
            ds.attrs["inferred"] = bool(spec.inferred)
            _write_rows(ds, rows, values)

    def _grow(self, new_n: int) -> None:
        for ds in aligned_datasets(self._f):
            ds.resize(new_n, axis=0)
