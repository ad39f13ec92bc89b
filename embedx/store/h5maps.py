"""The store's 2-D maps and analysis results: `/projections`, `/projection_state` and `/analysis`. Part of
`Store` (see `h5store` for the layout).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedx.errors import StoreError
from embedx.store.h5io import _ALIGNED, _STR, _create_aligned, escape_name, now_iso, to_json, unescape_name

ANALYSIS_KINDS = ("probes", "fairness", "clusters", "controls", "calibration")
PROJECTION_METHODS = ("tsne", "umap", "pca")
STATUS_NONE, STATUS_FITTED, STATUS_TRANSFORMED = 0, 1, 2


class MapsAndAnalyses:
    """Projections with the state that places later rows into them, and JSON results by kind and key."""

    # what the mixin reads of the Store it is part of (annotations only: nothing here overrides the Store)
    _f: h5py.File
    path: Path
    n: int
    _need_write: Callable[[], None]
    _model_group: Callable[[str], h5py.Group]

    def projections(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key, group in self._f["projections"].items():
            out[unescape_name(key)] = list(group.keys())
        return out

    def _projection_ds(self, model: str, method: str) -> h5py.Dataset:
        self._model_group(model)
        key = escape_name(model)
        group = self._f["projections"].get(key)
        if group is None or method not in group:
            have = ", ".join(f"{m}/{p}" for m, ps in self.projections().items() for p in ps) or "none"
            raise StoreError(
                f"{self.path}: no {method!r} projection of model {model!r} (present: {have}); "
                f"run `embedx project {self.path} --method {method} --name {model}`"
            )
        return group[method]

    def projection(self, model: str, method: str) -> np.ndarray:
        """(N, 2) float32 aligned on store rows; NaN rows where the sample is not in the map."""
        return self._projection_ds(model, method)[()].astype(np.float32, copy=False)

    def projection_info(self, model: str, method: str) -> dict[str, Any]:
        ds = self._projection_ds(model, method)
        info = {
            k: (v.item() if isinstance(v, np.generic) else v) for k, v in ds.attrs.items() if k != _ALIGNED
        }
        if "params" in info:
            info["params"] = json.loads(info["params"])
        return info

    def projection_status(self, model: str, method: str) -> np.ndarray:
        """int8 per row: 0 not in the map, 1 fitted, 2 placed later by `transform` (flag these in plots)."""
        self._projection_ds(model, method)
        return self._state_group(model, method)["status"][()].astype(np.int8)

    def _state_group(self, model: str, method: str, create: bool = False) -> h5py.Group:
        path = f"projection_state/{escape_name(model)}/{method}"
        if path not in self._f:
            if not create:
                raise StoreError(f"{self.path}: projection {model}/{method} has no saved state")
            self._f.require_group(f"projection_state/{escape_name(model)}").create_group(method)
        return self._f[path]

    def projection_state(self, model: str, method: str) -> dict[str, np.ndarray]:
        """The arrays saved to place new samples into this map later (method-specific)."""
        group = self._state_group(model, method)
        return {k: group[k][()] for k in group if k != "status"}

    def write_projection(
        self,
        model: str,
        method: str,
        coords: np.ndarray,
        status: np.ndarray,
        attrs: Mapping[str, Any],
        state: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Replace a projection: coords (N, 2), status per row, attrs (params as dict), fitted state."""
        self._need_write()
        self._model_group(model)
        coords = np.asarray(coords, dtype=np.float32)
        status = np.asarray(status, dtype=np.int8)
        if coords.shape != (self.n, 2) or status.shape != (self.n,):
            raise StoreError(
                f"projection must be ({self.n}, 2) with ({self.n},) status; "
                f"got {coords.shape}, {status.shape}"
            )
        group = self._f["projections"].require_group(escape_name(model))
        if method in group:
            del group[method]
        ds = _create_aligned(group, method, self.n, (2,), np.float32, np.nan)
        ds[...] = coords
        for k, v in attrs.items():
            ds.attrs[k] = to_json(v) if isinstance(v, (dict, list)) else v
        state_group = self._state_group(model, method, create=True)
        if state is not None:
            for k in list(state_group.keys()):
                del state_group[k]
            for k, v in state.items():
                state_group.create_dataset(k, data=v)
        if "status" in state_group:
            del state_group["status"]
        st = _create_aligned(state_group, "status", self.n, (), np.int8, 0)
        st[...] = status
        self._f.flush()

    # ------------------------------------------------------------------ analyses
    def analyses(self) -> dict[str, list[str]]:
        return {
            kind: [unescape_name(k) for k in group]
            for kind, group in self._f["analysis"].items()
            if len(group)
        }

    def write_analysis(self, kind: str, key: str, payload: Mapping[str, Any] | list) -> None:
        """Store one result (JSON) under `/analysis/<kind>/<key>`, replacing an older one with that key."""
        self._need_write()
        if kind not in ANALYSIS_KINDS:
            raise StoreError(f"unknown analysis kind {kind!r} (one of {', '.join(ANALYSIS_KINDS)})")
        group = self._f["analysis"].require_group(kind)
        name = escape_name(key)
        if name in group:
            del group[name]
        ds = group.create_dataset(name, data=to_json(payload), dtype=_STR)
        ds.attrs["date"] = now_iso()
        self._f.flush()

    def read_analysis(self, kind: str, key: str | None = None) -> dict | list[dict]:
        """One result by key, or every result of that kind (in the order written) when key is None."""
        if kind not in ANALYSIS_KINDS:
            raise StoreError(f"unknown analysis kind {kind!r} (one of {', '.join(ANALYSIS_KINDS)})")
        group = self._f["analysis"].get(kind)
        if key is None:
            if group is None:
                return []
            return [json.loads(group[k].asstr()[()]) for k in group]
        name = escape_name(key)
        if group is None or name not in group:
            have = ", ".join(unescape_name(k) for k in (group or {})) or "none"
            raise StoreError(f"{self.path}: no {kind} result with key {key!r} (present: {have})")
        return json.loads(group[name].asstr()[()])
