"""`embedx store import`: audit embeddings made elsewhere (a foundation model, the user's own classifier).

Most users already have embeddings. Once imported they are a model like any other: every command (probe,
fairness, project, report, dashboard) reads them from `/embeddings/<name>`. What matters is the join: each
vector must land on the row of the image it describes, so rows are matched by key and every mismatch is an
error that names rows — never a silent shift by one.

Keys, in the order they are looked for: a `sample_id` column / array (the store's own ids), a `path`
column / array (hashed as the manifest's paths are, relative to `--manifest`'s folder, else the embedding
file's folder), or none (`.npy`, or `--key order`): then rows follow `--manifest`'s row order.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedx._version import __version__
from embedx.data.identity import sample_id
from embedx.errors import EmbedxError
from embedx.store.h5store import Store, now_iso
from embedx.store.import_columns import drop_metadata_columns, warn_label_like

ID_KEYS = ("sample_id", "sample_ids", "id", "ids")
PATH_KEYS = ("path", "paths", "filename", "file")
VECTOR_KEYS = ("embedding", "embeddings", "z", "features", "latents", "x")
MAX_NAMED = 5
log = logging.getLogger(__name__)
WRITE_CHUNK = 8192


@dataclass
class Loaded:
    vectors: np.ndarray  # (N, D) float32
    keys: np.ndarray | None  # (N,) str, or None when rows follow the manifest's order
    key_kind: str  # "sample_id", "path" or "order"


@dataclass
class ImportResult:
    name: str
    n_rows: int
    dim: int
    key_kind: str
    n_store_rows_without: int
    without_named: str = ""  # which rows those are: manifest rows and paths with --manifest, else sample ids


def _pick(names: list[str], wanted: tuple[str, ...]) -> str | None:
    lowered = {n.lower(): n for n in names}
    return next((lowered[w] for w in wanted if w in lowered), None)


def _named(rows: np.ndarray | list[int], values: Any | None = None) -> str:
    rows = [int(r) for r in rows]
    shown = [f"row {r + 1}" + (f" ({values[r]!r})" if values is not None else "") for r in rows[:MAX_NAMED]]
    return ", ".join(shown) + (f" and {len(rows) - MAX_NAMED} more" if len(rows) > MAX_NAMED else "")


def _from_table(frame: pd.DataFrame, source: Path, attributes: Sequence[str] = ()) -> Loaded:
    if frame.empty:
        raise EmbedxError(f"{source}: the table has no rows")
    index_like = [c for c in frame.columns if re.fullmatch(r"Unnamed: \d+", str(c))]
    if index_like:  # pandas' to_csv() writes its row index unless told index=False: not a feature
        log.warning("%s: column(s) %s look like a saved row index and are ignored", source,
                    ", ".join(map(str, index_like)))
        frame = frame.drop(columns=index_like)
    columns = [str(c) for c in frame.columns]
    id_col, path_col = _pick(columns, ID_KEYS), _pick(columns, PATH_KEYS)
    key_col = id_col or path_col
    vec_col = _pick(columns, VECTOR_KEYS)
    if vec_col is None or frame[vec_col].dtype != object:  # features are the columns: metadata is not one
        frame = drop_metadata_columns(frame, [c for c in columns if c != key_col], attributes, source)
    if vec_col is not None and frame[vec_col].dtype == object:  # one list / array per row (Parquet)
        empty = np.flatnonzero(frame[vec_col].isna().to_numpy())
        if empty.size:
            raise EmbedxError(f"{source}: column {vec_col!r} has no vector in {_named(empty)}")
        try:
            vectors = np.stack([np.asarray(v, dtype=np.float32) for v in frame[vec_col]])
        except ValueError as err:
            raise EmbedxError(f"{source}: column {vec_col!r} holds vectors of different lengths "
                              f"({err})") from err
    else:
        features = [c for c in frame.columns if str(c) != key_col]
        bad = [str(c) for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            separator = len(columns) == 1 and any(sep in columns[0] for sep in (";", "\t", "|"))
            raise EmbedxError(f"{source}: column(s) {', '.join(bad[:MAX_NAMED])} are not numbers; the file "
                              f"needs one key column ({'/'.join(ID_KEYS[:1] + PATH_KEYS[:1])}) and numeric "
                              "feature columns" + (" (the file looks separated by something other than "
                              "commas; save it as comma-separated)" if separator else ""))
        vectors = frame[features].to_numpy(dtype=np.float32)
        warn_label_like(vectors, [str(c) for c in features], source)
    if key_col is None:
        return Loaded(vectors, None, "order")
    keys = frame[key_col].astype(str).to_numpy(dtype=object)
    return Loaded(vectors, keys, "sample_id" if key_col == id_col else "path")


def _from_arrays(arrays: dict[str, np.ndarray], source: Path, array: str | None) -> Loaded:
    names = list(arrays)
    if array is not None and array not in arrays:
        raise EmbedxError(f"{source}: no array named {array!r} (found: {', '.join(names)})")
    two_d = [n for n in names if arrays[n].ndim == 2 and arrays[n].dtype.kind in "fiu"]
    vec_name = array or _pick(two_d, VECTOR_KEYS) or (two_d[0] if len(two_d) == 1 else None)
    if vec_name is None:
        raise EmbedxError(f"{source}: cannot tell which array holds the embeddings (2-D numeric arrays: "
                          f"{', '.join(two_d) or 'none'}); name it with --array")
    id_name, path_name = _pick(names, ID_KEYS), _pick(names, PATH_KEYS)
    key_name = id_name or path_name
    vectors = np.asarray(arrays[vec_name], dtype=np.float32)
    if key_name is None:
        return Loaded(vectors, None, "order")
    raw = np.asarray(arrays[key_name]).reshape(-1)
    if raw.shape[0] != vectors.shape[0]:
        raise EmbedxError(f"{source}: {raw.shape[0]} keys in {key_name!r} but {vectors.shape[0]} vectors in "
                          f"{vec_name!r}; every vector needs exactly one key")
    keys = np.array([k.decode() if isinstance(k, bytes) else str(k) for k in raw.tolist()], dtype=object)
    return Loaded(vectors, keys, "sample_id" if key_name == id_name else "path")


def load_embeddings(path: Path, array: str | None = None, attributes: Sequence[str] = ()) -> Loaded:
    """Read .npy / .npz / .parquet / .csv / .h5 into vectors and (maybe) keys. A table's columns named
    like one of `attributes` (the store's) or like an identifier are metadata, not features."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise EmbedxError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            return Loaded(np.asarray(np.load(path, allow_pickle=False), dtype=np.float32), None, "order")
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return _from_arrays({k: data[k] for k in data.files}, path, array)
        if suffix in (".parquet", ".pq"):
            return _from_table(pd.read_parquet(path), path, attributes)
        if suffix in (".csv", ".tsv"):
            return _from_table(pd.read_csv(path, sep="\t" if suffix == ".tsv" else ","), path, attributes)
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r", locking=False) as f:
                arrays = {k: (f[k].asstr()[()] if f[k].dtype.kind in "OS" else f[k][()])
                          for k in f if isinstance(f[k], h5py.Dataset)}
            return _from_arrays(arrays, path, array)
    except (ValueError, OSError, EOFError) as err:
        if isinstance(err, EmbedxError):
            raise
        hint = ""
        if "Object arrays cannot be loaded" in str(err):
            hint = ("; save text keys as a fixed-width string array, e.g. np.asarray(ids, dtype=str) "
                    "(pandas' .astype(str) still gives Python objects)")
        elif isinstance(err, EOFError) or "No data left" in str(err):
            hint = "; the file is empty"
        raise EmbedxError(f"{path}: cannot be read as {suffix[1:]} embeddings ({err}){hint}") from err
    raise EmbedxError(f"{path}: unknown format {suffix!r}; use .npy, .npz, .parquet, .csv or .h5")


def _check_vectors(loaded: Loaded, source: Path) -> None:
    v = loaded.vectors
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise EmbedxError(f"{source}: embeddings must be a non-empty 2-D table (rows x features), "
                          f"got {v.shape}")
    bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
    if bad.size:
        raise EmbedxError(f"{source}: {bad.size} row(s) hold NaN or infinite values: {_named(bad)}; "
                          "drop them (their images then count as not encoded) or fix them")


def _store_rows(store: Store, loaded: Loaded, source: Path, manifest: Any | None, cohort: str) -> np.ndarray:
    """Store row of every embedding row, refusing duplicates, unknown keys and length mismatches."""
    cohorts = sorted(set(store.sample_strings("cohort").astype(str)))
    if loaded.key_kind != "sample_id" and cohort not in cohorts:
        raise EmbedxError(f"{store.path}: no rows of cohort {cohort!r} (cohorts: "
                          f"{', '.join(repr(c) for c in cohorts)}); name one with --cohort")
    if loaded.key_kind != "sample_id" and len(cohorts) > 1:
        log.warning("%s holds several cohorts (%s); %s keys are matched in cohort %r", store.path,
                    ", ".join(repr(c) for c in cohorts), loaded.key_kind, cohort)
    if loaded.key_kind == "order":
        if manifest is None:
            raise EmbedxError(f"{source}: the file has no sample_id or path key; give --manifest so that its "
                              "rows can follow the manifest's order")
        if len(manifest) != loaded.vectors.shape[0]:
            raise EmbedxError(f"{source}: {loaded.vectors.shape[0]} embedding rows but the manifest "
                              f"{manifest.source} has {len(manifest)} rows; an order-aligned file must "
                              "match it")
        ids = store.ids_for(manifest, cohort).astype(object)
        shown = manifest.table["path"].astype(str).to_numpy()
    elif loaded.key_kind == "path":
        assert loaded.keys is not None
        root = manifest.root if manifest is not None else source.resolve().parent
        ids = np.array([sample_id(p, root, cohort, store.sample_salt) for p in loaded.keys], dtype=object)
        shown = loaded.keys
    else:
        assert loaded.keys is not None
        ids = loaded.keys
        shown = loaded.keys
    dup = pd.Index(ids).duplicated(keep=False)
    if dup.any():
        raise EmbedxError(f"{source}: {int(dup.sum())} row(s) share a key with another row: "
                          f"{_named(np.flatnonzero(dup), shown)}")
    rows = store.rows_of(ids, missing_ok=True)
    absent = np.flatnonzero(rows < 0)
    if absent.size:
        hint = (" (paths are read relative to " + str(root) + ")") if loaded.key_kind == "path" else ""
        raise EmbedxError(f"{source}: {absent.size} of {len(ids)} row(s) are not in the store {store.path}"
                          f"{hint}: {_named(absent, shown)}. Encode or add those images first, or drop them "
                          "from the file")
    return rows


def import_embeddings(
    store_path: str | Path,
    source: str | Path,
    name: str,
    manifest: str | Path | None = None,
    array: str | None = None,
    note: str = "",
    replace: bool = False,
    cohort: str = "",
) -> ImportResult:
    """Check the file against the store's rows and write it as `/embeddings/<name>` (kind `imported`)."""
    from embedx.data.manifest import load_manifest
    from embedx.store.h5io import escape_name

    source = Path(source)
    escape_name(name)
    man = load_manifest(manifest, check_files=False) if manifest is not None else None
    if not Path(store_path).exists():
        raise EmbedxError(f"store {store_path} does not exist: encode the cohort first (e.g. `embedx "
                          "encode --pixels`), so that its rows and attributes are there")
    with Store.open(store_path) as store:
        attributes = store.attribute_names()
    loaded = load_embeddings(source, array, attributes)
    _check_vectors(loaded, source)
    with Store.open(store_path, "a") as store:
        if name in store.models() and not replace:
            raise EmbedxError(f"{store_path}: a model named {name!r} is already there; choose another "
                              "--name or pass --replace")
        rows = _store_rows(store, loaded, source, man, cohort)  # every check before anything is replaced
        if name in store.models():
            del store.h5["embeddings"][escape_name(name)]
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        store.ensure_embedding(name, loaded.vectors.shape[1], {
            "kind": "imported", "source": source.name, "checkpoint_hash": digest, "key": loaded.key_kind,
            "note": note, "date": now_iso(), "embedx_version": __version__, "run_dir": "",
            "config": "", "preprocess": "",
        })
        order = np.argsort(rows)
        for start in range(0, order.size, WRITE_CHUNK):
            part = order[start:start + WRITE_CHUNK]
            store.write_latents(name, rows[part], loaded.vectors[part])
        store.set_embedding_attrs(name, date_finished=now_iso(), n_failed=0)
        without = np.setdiff1d(np.arange(store.n), rows)
        named = _without_named(store, without, man, cohort) if without.size else ""
    return ImportResult(name, int(rows.size), int(loaded.vectors.shape[1]), loaded.key_kind,
                        int(without.size), named)


def _without_named(store: Store, without: np.ndarray, manifest: Any | None, cohort: str) -> str:
    """The store rows an import left without a vector, as the user can find them: the manifest's rows and
    paths where a manifest was given (the store keeps no paths), else the stores' sample ids."""
    if manifest is None:
        return "sample ids " + _named(without, store.sample_ids).replace("row ", "store row ") + \
            " (give --manifest to see their paths)"
    store_rows = store.rows_of(store.ids_for(manifest, cohort), missing_ok=True)
    in_manifest = np.flatnonzero(np.isin(store_rows, without))
    paths = manifest.table["path"].astype(str).to_numpy()
    outside = without.size - in_manifest.size
    text = f"manifest {_named(in_manifest, paths)}" if in_manifest.size else ""
    if outside:
        text += ("; " if text else "") + f"{outside} store row(s) that are not in {manifest.source}"
    return text
