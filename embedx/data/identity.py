"""Which image a manifest row is: a sample id that survives moving the folder, and a content fingerprint.

The sample id is the store's join key. It hashes the path *relative to the cohort root* (the manifest's
folder), normalised, so `images/a.png`, `./images/a.png` and `/data/cohort/images/a.png` (with the manifest in
`/data/cohort`) are one sample, and moving the folder together with its manifest keeps every id. Paths written
absolute outside the root keep their absolute form: if that folder moves (a new mount point), the id changes,
and the content fingerprint is what recognises the image (see `embedx.store.identity`).

A cohort name, when given, is part of the id: two cohorts whose manifests both say `images/000000.png` are
then two sets of rows, never one.

The fingerprint reads the whole file up to 1 MiB and, for larger files, its size plus 16 evenly spread
16 KiB blocks (first and last included). Reading every byte of a million DICOMs would double an encode's
I/O; spread blocks still separate different scans, whose headers (UIDs) and pixel blocks differ, including
uncompressed NIfTI volumes whose first and last slices are empty background.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

FULL_HASH_BYTES = 1 << 20
BLOCKS = 16
BLOCK_BYTES = 16 << 10


def normalised_path(path_as_written: str, root: Path | None) -> str:
    """The path as the cohort sees it: posix separators, no `.`/`..`, relative to `root` when inside it."""
    text = str(path_as_written).strip().replace("\\", "/")
    if not text:
        return text
    if posixpath.isabs(text) or (len(text) > 1 and text[1] == ":"):
        if root is not None:
            try:
                rel = os.path.relpath(os.path.normpath(text), os.path.normpath(str(root.absolute())))
            except ValueError:  # another drive on Windows
                rel = ""
            if rel and not rel.startswith(".."):
                return posixpath.normpath(rel.replace("\\", "/"))
        return posixpath.normpath(text)
    return posixpath.normpath(text)


# A path that `normalised_path` keeps as written (relative) or only takes the root off (absolute): not empty,
# no backslash, no empty, '.' or '..' part, no trailing '/', no drive-like second character ('C:'), and only
# printable ASCII at either end (where a strip could remove something). Any other path goes one by one.
_IRREGULAR = r"^$|\\|//|/$|(?:^|/)\.\.?(?:/|$)|^.:|^[^!-~]|[^!-~]$"


def normalised_paths(paths: pd.Series, root: Path | None) -> pd.Series:
    """`normalised_path` of each path (same index, object dtype), without a Python call per usual path.

    A million-row manifest is re-keyed on every load. With pandas' pyarrow strings (pandas >= 3), the paths
    that need no normalising are found by one pass of a pattern and keep their text; absolute ones inside
    `root` lose the root's prefix, as the relative path computed by `normalised_path`. Every other path
    (`..`, backslashes, spaces, a drive, an absolute path on Windows, the root itself) goes through
    `normalised_path`, so the keys are the same. Python strings (pandas 2) go through it one by one: there
    a pattern per path would cost more than the call.
    """
    if getattr(paths.dtype, "storage", None) != "pyarrow" or paths.isna().any():
        return pd.Series([normalised_path(p, root) for p in paths], index=paths.index, dtype=object)
    keys = paths.to_numpy(dtype=object).copy()
    slow = np.array(paths.str.contains(_IRREGULAR, regex=True), dtype=bool)  # a copy: pandas' is read-only
    absolute = ~slow & paths.str.startswith("/").to_numpy(dtype=bool)
    if root is not None and absolute.any():
        base = os.path.normpath(str(root.absolute()))
        if os.path is not posixpath or base == "/" or base.startswith("//"):
            slow |= absolute
        else:
            slow |= absolute & (paths == base).to_numpy(dtype=bool)  # the root itself: "."
            inside = np.flatnonzero(absolute & paths.str.startswith(base + "/").to_numpy(dtype=bool))
            rest = paths.iloc[inside].str.slice(len(base) + 1).to_numpy(dtype=object)
            relative = np.array([not r.startswith("..") for r in rest], dtype=bool)  # "..x" stays absolute
            keys[inside[relative]] = rest[relative]
    for i in np.flatnonzero(slow):
        keys[i] = normalised_path(keys[i], root)
    return pd.Series(keys, index=paths.index, dtype=object)


def sample_id(path_as_written: str, root: Path | None = None, cohort: str = "", salt: str = "") -> str:
    """Hash of the cohort-relative path (prefixed by the cohort name when one is given), 16 hex characters.

    With a `salt` (every store made by embedx >= 0.4 has its own) the hash is sha256(salt, key): folder names
    often name the patient, and an unsalted hash of a guessed path would confirm that a patient is in the
    cohort to anyone holding a report or an exported CSV. Without one it is sha1(key), the older ids.
    """
    return _hashed(normalised_path(path_as_written, root), cohort, salt)


def sample_ids(paths: pd.Series, root: Path | None = None, cohort: str = "", salt: str = "") -> list[str]:
    """`sample_id` of each path, normalised by `normalised_paths`."""
    return [_hashed(key, cohort, salt) for key in normalised_paths(paths, root)]


def _hashed(key: str, cohort: str, salt: str) -> str:
    if cohort:
        key = f"{cohort}\x00{key}"
    if salt:
        return hashlib.sha256(f"{salt}\x00{key}".encode()).hexdigest()[:16]
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def content_fingerprint(path: Path) -> str:
    """16 hex characters that differ between different files; "" for a file that cannot be read."""
    try:
        size = path.stat().st_size
        digest = hashlib.sha1(str(size).encode() + b"\x00")
        with path.open("rb") as handle:
            if size <= FULL_HASH_BYTES:
                digest.update(handle.read())
            else:
                step = (size - BLOCK_BYTES) / (BLOCKS - 1)
                for i in range(BLOCKS):
                    handle.seek(round(i * step))
                    digest.update(handle.read(BLOCK_BYTES))
    except OSError:
        return ""
    return digest.hexdigest()[:16]


def file_stat(path: Path) -> str:
    """Size and modification time: a cheap sign that a file changed (then its fingerprint is read again)."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def _threaded(work: Callable[[Path], str], paths: Sequence[Path], progress: object | None,
              threads: int) -> list[str]:
    """`work` over many files by a few threads (the work waits on the disk, not the CPU)."""
    if len(paths) < 64:
        out = [work(p) for p in paths]
        if callable(progress):
            progress(len(paths))
        return out
    results: list[str] = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for value in pool.map(work, paths, chunksize=64):
            results.append(value)
            if callable(progress):
                progress(1)
    return results


def fingerprints(paths: Sequence[Path], progress: object | None = None, threads: int = 8) -> list[str]:
    return _threaded(content_fingerprint, paths, progress, threads)


def file_stats(paths: Sequence[Path], threads: int = 8) -> list[str]:
    return _threaded(file_stat, paths, None, threads)
