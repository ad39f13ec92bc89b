"""The HDF5 store: one file per cohort, the hand-off between models and every analysis.

Layout (documented for h5py-only readers in docs/store.md):

    /                         attrs: format, schema_version, embedx_version, created, subject_salt,
                              sample_salt
    /samples/id               (N,) str    sample id (salted hash of the cohort-relative path), the join key
    /samples/subject_id       (N,) str    pseudonymised subject id
    /samples/attrs/<name>     (N,)        str (categorical, "" = missing) or float64 (NaN = missing);
                                          attrs: name, kind, role, inferred, dtype
    /samples/has_thumb        (N,) bool
    /thumbs                   (N, 64, 64) uint8
    /embeddings/<model>/z     (N, D) float32, NaN rows where not encoded; group attrs: provenance
    /embeddings/<model>/encoded   (N,) bool — set only after the row's data is on disk
    /embeddings/<model>/xT, xT_encoded    optional DAE stochastic code
    /embeddings/<model>/failed_ids, failed_reasons   unreadable images of the last encode
    /projections/<model>/<method>         (N, 2) float32, NaN where not projected; attrs: params, ...
    /projection_state/<model>/<method>/   status (N,) int8 (0 none, 1 fitted, 2 transformed), fitted state
    /analysis/<kind>/<key>    scalar str, JSON

Crash safety. Row-aligned datasets are chunked, resizable and allocated *early* (every chunk exists on
disk from the moment the dataset is created or grown), so writing latents during an encode changes raw data
only, never HDF5 metadata; the `encoded` mask is written after the rows are flushed. A process killed
mid-encode therefore leaves a file that opens, whose `encoded` rows are complete. Structural changes
(adding samples, creating a model) are short and flushed at once. The default (earliest) HDF5 file format
is used on purpose: `libver="latest"` marks the file "open for write" in its superblock and after a crash
refuses every later open until `h5clear` is run, which h5py cannot do.

HDF5's own file locking is off for every open: a reader must be able to open the store while an encode
writes to it (HDF5's lock would refuse), and HDF5 refuses to open one file twice in a process with different
locking flags. Writers are kept single by `WriterLock` (a POSIX-locked lock file naming PID and host).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from embedx._version import __version__
from embedx.data.schema import AttributeSpec
from embedx.errors import StoreError
from embedx.store.h5embeddings import THUMB_SIZE, Embeddings
from embedx.store.h5io import (
    _STR,
    _create_aligned,
    _format_category,
    _read_rows,
    _sorted_rows,
    now_iso,
    read_strings,
    read_text_column,
    unescape_name,
)
from embedx.store.h5maps import (  # noqa: F401  (re-exported: the store's constants live with their parts)
    ANALYSIS_KINDS,
    PROJECTION_METHODS,
    STATUS_FITTED,
    STATUS_NONE,
    STATUS_TRANSFORMED,
    MapsAndAnalyses,
)
from embedx.store.h5sample_writes import SampleWrites
from embedx.store.lock import WriterLock, writer_active
from embedx.store.repair import refuse_if_broken, repair

SCHEMA_VERSION = 1
FORMAT = "embedx-store"


class Store(SampleWrites, Embeddings, MapsAndAnalyses):
    """An open embedx store. Use `Store.open(path)` (read) or `Store.open(path, "a")` (write, locked)."""

    def __init__(self, file: h5py.File, path: Path, mode: str, lock: WriterLock | None) -> None:
        self._f = file
        self.path = path
        self.mode = mode
        self._lock = lock
        self._ids_cache: np.ndarray | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False, salted_ids: bool = True) -> Store:
        """A new, empty store opened for writing (the writer lock is taken first).

        `salted_ids`: sample ids of manifest rows hash the path with this store's `sample_salt`, so an id
        seen in a report or a CSV cannot be checked against a guessed patient folder without the store.
        Off for stores built from caller-given ids (`write_store_from_arrays`).
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists (open it with mode 'a' to add to it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(path)
        lock.acquire()
        try:
            file = h5py.File(path, "w", track_order=True, locking=False)
        except OSError as err:
            lock.release()
            raise StoreError(f"cannot create store {path}: {err}") from err
        file.attrs["format"] = FORMAT
        file.attrs["schema_version"] = SCHEMA_VERSION
        file.attrs["embedx_version"] = __version__
        file.attrs["created"] = now_iso()
        file.attrs["subject_salt"] = secrets.token_hex(16)
        file.attrs["sample_salt"] = secrets.token_hex(16) if salted_ids else ""
        samples = file.create_group("samples", track_order=True)
        _create_aligned(samples, "id", 0, (), _STR)
        _create_aligned(samples, "subject_id", 0, (), _STR)
        _create_aligned(samples, "has_thumb", 0, (), np.bool_, False)
        samples.create_group("attrs", track_order=True)
        _create_aligned(file, "thumbs", 0, (THUMB_SIZE, THUMB_SIZE), np.uint8, 0)
        for group in ("embeddings", "projections", "projection_state", "analysis"):
            file.create_group(group, track_order=True)
        file.flush()
        return cls(file, path, "a", lock)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> Store:
        """Open to read ("r": no lock, safe beside a running encode) or write ("a": locked, creates)."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"unknown store mode {mode!r} (use 'r' or 'a')")
        if mode == "a" and not path.exists():
            return cls.create(path)
        if not path.exists():
            raise StoreError(f"store {path} does not exist (create it with `embedx encode`)")
        lock = None
        if mode == "a":
            lock = WriterLock(path)
            lock.acquire()
        try:
            try:
                file = h5py.File(path, "r+" if mode == "a" else "r", locking=False)
            except (OSError, BlockingIOError) as err:
                text = str(err)
                lowered = text.lower()
                if "truncated file" in lowered:
                    raise StoreError(
                        f"{path} is truncated (an interrupted copy or a full disk?): it is shorter than its "
                        f"header says ({text}); copy it again or re-encode"
                    ) from err
                if any(w in lowered for w in ("file lock", "unable to lock", "temporarily unavailable")):
                    raise StoreError(
                        f"{path} is held by another process's HDF5 file lock; close it first ({text})"
                    ) from err
                raise StoreError(f"{path} is not a readable HDF5 store: {text}") from err
            cls._check_format(file, path)
            try:
                if mode == "a":
                    repair(file, path)
                elif not writer_active(path):  # mid-write, uneven lengths are a writer's normal state
                    refuse_if_broken(file, path)
            except BaseException:
                file.close()
                raise
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return cls(file, path, mode, lock)

    @staticmethod
    def _check_format(file: h5py.File, path: Path) -> None:
        if file.attrs.get("format") != FORMAT:
            file.close()
            raise StoreError(
                f"{path} is an HDF5 file but not an embedx store (no format='{FORMAT}' attribute)"
            )
        version = int(file.attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            file.close()
            raise StoreError(
                f"{path} has store schema version {version}; this embedx ({__version__}) reads version "
                f"{SCHEMA_VERSION}. Re-encode the cohort into a new store."
            )

    def close(self) -> None:
        if self._f.id.valid:
            if self.mode == "a":
                self._f.flush()
            self._f.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        self._f.flush()

    @property
    def h5(self) -> h5py.File:
        """The underlying h5py file, for readers that need something the API does not offer."""
        return self._f

    def _need_write(self) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path} is open read-only; open it with mode 'a' to write")

    # ------------------------------------------------------------------ samples
    @property
    def n(self) -> int:
        return int(self._f["samples/id"].shape[0])

    @property
    def sample_ids(self) -> np.ndarray:
        if self._ids_cache is None or self._ids_cache.shape[0] != self.n:
            self._ids_cache = read_strings(self._f["samples/id"])
        return self._ids_cache

    @property
    def subject_ids(self) -> np.ndarray:
        return read_strings(self._f["samples/subject_id"])

    @property
    def info(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._f.attrs.items()}

    def rows_of(self, sample_ids: Iterable[str], missing_ok: bool = False) -> np.ndarray:
        """Store rows of the given sample ids (-1 where absent when missing_ok)."""
        index = pd.Index(self.sample_ids)
        rows = index.get_indexer(pd.Index(list(sample_ids), dtype=object))
        if not missing_ok and np.any(rows < 0):
            absent = [s for s, r in zip(sample_ids, rows, strict=False) if r < 0][:5]
            raise StoreError(f"{self.path}: sample id(s) not in the store: {', '.join(map(str, absent))}")
        return rows.astype(np.int64)

    @property
    def sample_salt(self) -> str:
        """Salt of this store's sample ids ("" for stores written before salting, or from given ids)."""
        return str(self._f.attrs.get("sample_salt", ""))

    def ids_for(self, manifest: Any, cohort: str = "") -> np.ndarray:
        """The sample ids this store gives the manifest's rows (its salt, the cohort, relative paths)."""
        return manifest.sample_ids(cohort, self.sample_salt)

    def pseudonymise(self, subject_ids: Iterable[Any]) -> np.ndarray:
        """Salted hash of subject ids with this store's salt: same subject -> same code, no raw ID stored."""
        salt = str(self._f.attrs["subject_salt"]).encode()
        out = []
        for value in subject_ids:
            text = _format_category(value)
            out.append("" if text == "" else "s" + hashlib.sha256(salt + text.encode()).hexdigest()[:15])
        return np.array(out, dtype=object)

    def attribute_names(self) -> list[str]:
        group = self._f["samples/attrs"]
        return [str(group[key].attrs.get("name", unescape_name(key))) for key in group]

    def attributes(self) -> pd.DataFrame:
        """One column per attribute in store row order; NaN / missing where the manifest had no value."""
        group = self._f["samples/attrs"]
        columns = {str(group[key].attrs.get("name", unescape_name(key))): _attribute_column(group[key])
                   for key in group}
        return pd.DataFrame(columns, index=pd.RangeIndex(self.n))

    def attribute(self, name: str) -> pd.Series:
        """One attribute column, as `attributes()[name]` gives it, without reading the others (the explorer
        draws its map from the colour's column alone: at a million rows each text column costs ~0.25 s)."""
        group = self._f["samples/attrs"]
        names = {str(group[k].attrs.get("name", unescape_name(k))): k for k in group}
        if name not in names:
            raise StoreError(f"{self.path} has no attribute {name!r}; it has {', '.join(names)}")
        column = _attribute_column(group[names[name]])
        column.index, column.name = pd.RangeIndex(self.n), name
        return column

    def schema(self) -> dict[str, AttributeSpec]:
        group = self._f["samples/attrs"]
        out: dict[str, AttributeSpec] = {}
        for key in group:
            attrs = group[key].attrs
            name = str(attrs.get("name", unescape_name(key)))
            out[name] = AttributeSpec(
                name=name,
                kind=str(attrs["kind"]),
                role=str(attrs["role"]),
                inferred=bool(attrs.get("inferred", False)),
            )
        return out

    def thumbnails(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(n, 64, 64) uint8 in the order asked; zeros for rows whose image was never encoded."""
        sel = None if rows is None else _sorted_rows(rows, self.n)
        return _read_rows(self._f["thumbs"], sel)

    def has_thumbnail(self) -> np.ndarray:
        return self._f["samples/has_thumb"][()].astype(bool)

    def sample_strings(self, field_name: str) -> np.ndarray:
        """A per-row text field of /samples (e.g. `fingerprint`, `cohort`); "" everywhere if never written."""
        ds = self._f["samples"].get(field_name)
        if ds is None:
            return np.full(self.n, "", dtype=object)
        return read_strings(ds)


def _attribute_column(ds: Any) -> pd.Series:
    """An attribute dataset as a Series: text (its "" missing) or float64 (NaN missing)."""
    if ds.attrs.get("dtype", "float") == "str":
        return read_text_column(ds)
    return pd.Series(ds[()].astype(np.float64))


def write_store_from_arrays(
    path: str | Path,
    sample_ids: Sequence[str] | np.ndarray,
    subject_ids: Sequence[Any] | np.ndarray,
    attributes: pd.DataFrame,
    schema: Mapping[str, AttributeSpec] | None,
    latents: Mapping[str, np.ndarray],
    thumbnails: np.ndarray | None = None,
    embedding_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = True,
) -> Path:
    """Build a complete store from arrays — for tests and for scripts that have latents from elsewhere.

    `latents[name]` is (N, D) aligned with `sample_ids`; rows that are all-NaN count as not encoded.
    Subject ids are stored as given (encode pseudonymises them; arrays here are assumed already safe).
    `schema` may be None or partial: missing kinds/roles are inferred as for a manifest.
    """
    path = Path(path)
    if overwrite and path.exists():
        path.unlink()
    with Store.create(path, salted_ids=False) as store:
        rows = store.add_samples(sample_ids, subject_ids, attributes, schema)
        for name, z in latents.items():
            z = np.asarray(z, dtype=np.float32)
            if z.ndim != 2 or z.shape[0] != len(rows):
                raise StoreError(f"latents {name!r} have shape {z.shape}; expected ({len(rows)}, D)")
            attrs = {"kind": "arrays", "date": now_iso(), "embedx_version": __version__}
            attrs.update((embedding_attrs or {}).get(name, {}))
            store.ensure_embedding(name, z.shape[1], attrs)
            ok = np.isfinite(z).all(axis=1)
            store.write_latents(name, rows[ok], z[ok])
        if thumbnails is not None:
            store.write_thumbnails(rows, thumbnails)
    return path
