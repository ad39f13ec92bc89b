"""The store's embeddings: per model, row-aligned latents, the encoded mask, optional DAE stochastic codes,
failed reads and the model's own arrays. Part of `Store` (see `h5store` for the layout and crash safety).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from embedx.errors import StoreError
from embedx.store.h5io import (
    _STR,
    _create_aligned,
    _read_rows,
    _sorted_rows,
    _write_rows,
    escape_name,
    unescape_name,
)

THUMB_SIZE = 64


class Embeddings:
    """`/embeddings/<model>/…` and `/thumbs`, written batch by batch in the crash-safe order."""

    # what the mixin reads of the Store it is part of (annotations only: nothing here overrides the Store)
    _f: h5py.File
    path: Path
    n: int
    _need_write: Callable[[], None]

    def models(self) -> list[str]:
        return [unescape_name(k) for k in self._f["embeddings"]]

    def _model_group(self, model: str) -> h5py.Group:
        key = escape_name(model)
        if key not in self._f["embeddings"]:
            known = ", ".join(self.models()) or "none yet"
            raise StoreError(f"{self.path}: no model named {model!r} (known models: {known})")
        return self._f["embeddings"][key]

    def latents(self, model: str, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(N, D) float32 aligned on store rows; NaN rows where the model has not encoded the sample."""
        group = self._model_group(model)
        sel = None if rows is None else _sorted_rows(rows, self.n)
        return _read_rows(group["z"], sel).astype(np.float32, copy=False)

    def encoded_mask(self, model: str) -> np.ndarray:
        return self._model_group(model)["encoded"][()].astype(bool)

    def stochastic_codes(self, model: str, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        group = self._model_group(model)
        if "xT" not in group:
            raise StoreError(
                f"{self.path}: model {model!r} has no stochastic codes (encode with --stochastic)"
            )
        sel = None if rows is None else _sorted_rows(rows, self.n)
        return _read_rows(group["xT"], sel)

    def stochastic_mask(self, model: str) -> np.ndarray:
        group = self._model_group(model)
        if "xT_encoded" not in group:
            return np.zeros(self.n, dtype=bool)
        return group["xT_encoded"][()].astype(bool)

    def embedding_info(self, model: str) -> dict[str, Any]:
        """Provenance attrs plus `dim` and `n_encoded`."""
        group = self._model_group(model)
        info = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in group.attrs.items()}
        info["dim"] = int(group["z"].shape[1])
        info["n_encoded"] = int(np.count_nonzero(group["encoded"][()]))
        info["stochastic"] = "xT" in group
        return info

    def failed(self, model: str) -> pd.DataFrame:
        """Samples whose image could not be read in the last encode of this model, with the reason."""
        group = self._model_group(model)
        if "failed_ids" not in group:
            return pd.DataFrame(
                {"sample_id": pd.Series([], dtype=object), "reason": pd.Series([], dtype=object)}
            )
        return pd.DataFrame(
            {
                "sample_id": group["failed_ids"].asstr()[()].astype(object),
                "reason": group["failed_reasons"].asstr()[()].astype(object),
            }
        )

    def ensure_embedding(
        self,
        model: str,
        dim: int,
        attrs: Mapping[str, Any] | None = None,
        stochastic_shape: tuple[int, ...] | None = None,
    ) -> None:
        """Create `/embeddings/<model>` (or check that its dimension matches) and set its provenance attrs."""
        self._need_write()
        key = escape_name(model)
        emb = self._f["embeddings"]
        if key in emb:
            have = int(emb[key]["z"].shape[1])
            if have != dim:
                raise StoreError(
                    f"{self.path}: model {model!r} already holds {have}-d latents; this run gives {dim}-d. "
                    "Use another --name."
                )
            group = emb[key]
        else:
            group = emb.create_group(key, track_order=True)
            _create_aligned(group, "z", self.n, (int(dim),), np.float32, np.nan)
            _create_aligned(group, "encoded", self.n, (), np.bool_, False)
        if stochastic_shape is not None and "xT" not in group:
            _create_aligned(group, "xT", self.n, tuple(int(s) for s in stochastic_shape), np.float32, np.nan)
            _create_aligned(group, "xT_encoded", self.n, (), np.bool_, False)
        for k, v in (attrs or {}).items():
            group.attrs[k] = v
        self._f.flush()

    def write_latents(
        self,
        model: str,
        rows: Sequence[int] | np.ndarray,
        z: np.ndarray,
        thumbs: np.ndarray | None = None,
        xt: np.ndarray | None = None,
    ) -> None:
        """Write a batch of rows, flush, then mark them encoded and flush again (the crash-safe order)."""
        self._need_write()
        group = self._model_group(model)
        rows_arr = _sorted_rows(rows, self.n)
        z = np.asarray(z, dtype=np.float32)
        if z.shape != (rows_arr.size, group["z"].shape[1]):
            raise StoreError(
                f"latent batch has shape {z.shape}; model {model!r} expects "
                f"({rows_arr.size}, {group['z'].shape[1]})"
            )
        _write_rows(group["z"], rows_arr, z)
        if thumbs is not None:
            _write_rows(self._f["thumbs"], rows_arr, np.asarray(thumbs, dtype=np.uint8))
        if xt is not None:
            _write_rows(group["xT"], rows_arr, np.asarray(xt, dtype=np.float32))
        self._f.flush()
        if thumbs is not None:
            _write_rows(self._f["samples/has_thumb"], rows_arr, np.ones(rows_arr.size, dtype=bool))
        _write_rows(group["encoded"], rows_arr, np.isfinite(z).all(axis=1))
        if xt is not None:
            _write_rows(group["xT_encoded"], rows_arr, np.ones(rows_arr.size, dtype=bool))
        self._f.flush()

    def write_thumbnails(self, rows: Sequence[int] | np.ndarray, thumbs: np.ndarray) -> None:
        self._need_write()
        rows_arr = _sorted_rows(rows, self.n)
        thumbs = np.asarray(thumbs, dtype=np.uint8)
        if thumbs.shape != (rows_arr.size, THUMB_SIZE, THUMB_SIZE):
            raise StoreError(
                f"thumbnails must be ({rows_arr.size}, {THUMB_SIZE}, {THUMB_SIZE}) uint8, got {thumbs.shape}"
            )
        _write_rows(self._f["thumbs"], rows_arr, thumbs)
        self._f.flush()
        _write_rows(self._f["samples/has_thumb"], rows_arr, np.ones(rows_arr.size, dtype=bool))
        self._f.flush()

    def set_failed(self, model: str, sample_ids: Sequence[str], reasons: Sequence[str]) -> None:
        """Replace the list of unreadable samples of this model's encode."""
        self._need_write()
        group = self._model_group(model)
        for name in ("failed_ids", "failed_reasons"):
            if name in group:
                del group[name]
        group.create_dataset("failed_ids", data=np.array(list(sample_ids), dtype=object), dtype=_STR)
        group.create_dataset("failed_reasons", data=np.array(list(reasons), dtype=object), dtype=_STR)
        self._f.flush()

    def write_model_arrays(self, model: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Plain numeric arrays a model needs to encode later rows alike (e.g. the pixel reference's PCA)."""
        self._need_write()
        group = self._model_group(model).require_group("state")
        for key, value in arrays.items():
            value = np.asarray(value)
            if value.dtype.kind not in "fiub":
                raise StoreError(f"model state {key!r} must be numeric, got {value.dtype}")
            if key in group:
                del group[key]
            group.create_dataset(key, data=value)
        self._f.flush()

    def model_arrays(self, model: str) -> dict[str, np.ndarray]:
        group = self._model_group(model).get("state")
        return {} if group is None else {k: group[k][()] for k in group}

    def set_embedding_attrs(self, model: str, **attrs: Any) -> None:
        self._need_write()
        group = self._model_group(model)
        for k, v in attrs.items():
            group.attrs[k] = v
        self._f.flush()
