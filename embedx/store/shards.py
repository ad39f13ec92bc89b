"""Per-process shard files for a multi-process encode (`accelerate launch ... embedx encode`).

Every process writes the rows it encodes into its own small HDF5 file beside the store; the main process
merges the shards into the store once all processes are done, then deletes them. One writer per file keeps
HDF5 away from concurrent writes, and a shard left behind by a crash is merged by the next run (its rows
are marked done only after their data was flushed, as in the store), so no finished work is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from embedx.errors import StoreError
from embedx.store.h5io import _create_aligned, escape_name
from embedx.store.h5store import THUMB_SIZE, Store

_IDS = "S16"


def shard_dir(store_path: str | Path, model: str) -> Path:
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name}.shards") / escape_name(model)


class ShardWriter:
    """Rows of one process's shard: store rows, sample ids, latents, thumbnails, optional x_T, done mask."""

    def __init__(self, path: Path, rows: np.ndarray, sample_ids: np.ndarray, dim: int,
                 stochastic_shape: tuple[int, ...] | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        n = len(rows)
        with h5py.File(tmp, "w", locking=False) as f:
            f.create_dataset("rows", data=np.asarray(rows, dtype=np.int64))
            f.create_dataset("ids", data=np.asarray(sample_ids, dtype=_IDS))
            _create_aligned(f, "z", n, (dim,), np.float32, np.nan)
            _create_aligned(f, "thumbs", n, (THUMB_SIZE, THUMB_SIZE), np.uint8, 0)
            _create_aligned(f, "done", n, (), np.bool_, False)
            if stochastic_shape is not None:
                _create_aligned(f, "xT", n, tuple(stochastic_shape), np.float32, np.nan)
        tmp.replace(path)  # a shard file exists only once its layout is complete
        self.path = path
        self._f = h5py.File(path, "r+", locking=False)
        self._pos = {int(r): i for i, r in enumerate(np.asarray(rows, dtype=np.int64))}

    def write(self, rows: np.ndarray, z: np.ndarray, thumbs: np.ndarray, xt: np.ndarray | None) -> None:
        idx = np.array([self._pos[int(r)] for r in rows], dtype=np.int64)
        order = np.argsort(idx)
        idx = idx[order]
        self._f["z"][idx] = z[order]
        self._f["thumbs"][idx] = thumbs[order]
        if xt is not None:
            self._f["xT"][idx] = xt[order]
        self._f.flush()
        self._f["done"][idx] = True
        self._f.flush()

    def finish(self, failed: list[tuple[str, str]]) -> None:
        self._f.attrs["failed"] = json.dumps(failed)
        self._f.attrs["finished"] = True
        self._f.close()


def merge_shards(store: Store, model: str, batch: int = 4096) -> tuple[int, list[tuple[str, str]]]:
    """Copy the done rows of every shard of `model` into the store, then delete the shards.

    Returns (rows merged, failures recorded by the shards). Rows are checked by sample id, so a shard
    never lands on the wrong sample even if it is older than the store's latest append.
    """
    folder = shard_dir(store.path, model)
    merged, failed = 0, []
    if not folder.exists():
        return 0, []
    group_has_xt = "xT" in store.h5["embeddings"][escape_name(model)]
    for path in sorted(folder.glob("*.h5")):
        with h5py.File(path, "r", locking=False) as f:
            rows = f["rows"][()]
            ids = f["ids"][()].astype(str)
            done = f["done"][()].astype(bool)
            if rows.size and (rows.max() >= store.n or np.any(store.sample_ids[rows] != ids)):
                raise StoreError(f"shard {path} does not match the store {store.path}; delete {folder}")
            failed.extend(tuple(x) for x in json.loads(f.attrs.get("failed", "[]")))
            for start, stop in _blocks(np.flatnonzero(done), batch):
                sel = np.flatnonzero(done)[start:stop]
                xt = f["xT"][sel] if ("xT" in f and group_has_xt) else None
                store.write_latents(model, rows[sel], f["z"][sel], f["thumbs"][sel], xt)
                merged += sel.size
        path.unlink()
    for leftover in folder.glob("*.tmp"):
        leftover.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()
    return merged, failed


def _blocks(indices: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, indices.size, size):
        yield start, min(start + size, indices.size)
