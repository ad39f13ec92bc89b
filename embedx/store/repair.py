"""Bring a store back to one consistent row count after a write that stopped half-way (a full disk).

Adding samples grows every row-aligned dataset, then writes the new rows' ids. A full disk (or a kill) can
stop that between datasets or before the ids are written: some datasets are longer than others, or the last
rows have empty ids. Rows without an id hold nothing yet (no latents are written before the ids), so the
repair cuts them; a dataset shorter than the ids is padded as "not written", so no row with an id is lost.
A writer does this on open; a reader is told to let a writer do it rather than read misaligned arrays.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embedx.errors import StoreError

log = logging.getLogger(__name__)

ALIGNED = "row_aligned"


def aligned_datasets(file: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.attrs.get(ALIGNED, False):
            found.append(obj)

    file.visititems(visit)
    return found


def complete_rows(file: h5py.File) -> int:
    """Rows up to the last one holding a sample id (ids are written last when rows are added)."""
    ids = file["samples/id"]
    n = ids.shape[0]
    if n == 0:
        return 0
    tail = max(0, n - 100_000)  # empty ids can only trail; look at the end, not the whole table
    last = ids.asstr()[tail:n]
    filled = np.flatnonzero(np.asarray(last, dtype=object) != "")
    return tail + int(filled[-1]) + 1 if filled.size else _scan_all(ids, tail)


def _scan_all(ids: h5py.Dataset, upto: int) -> int:
    if upto == 0:
        return 0
    filled = np.flatnonzero(np.asarray(ids.asstr()[:upto], dtype=object) != "")
    return int(filled[-1]) + 1 if filled.size else 0


def needs_repair(file: h5py.File) -> tuple[bool, int]:
    """Cheap on a sound store (dataset lengths and the last id); scans ids only when something is off."""
    datasets = aligned_datasets(file)
    lengths = {ds.shape[0] for ds in datasets}
    if len(lengths) <= 1:
        n = lengths.pop() if lengths else 0
        if n == 0 or file["samples/id"].asstr()[n - 1] != "":
            return False, n
    n_ok = complete_rows(file)
    return any(ds.shape[0] != n_ok for ds in datasets), n_ok


def repair(file: h5py.File, path: Path) -> int:
    """Bring every row-aligned dataset to the rows that hold ids; returns how many id-less rows went.

    Longer datasets are cut (their extra rows hold nothing: no id, so never encoded). A dataset shorter
    than the ids is padded with its fill value (not encoded, no thumbnail), never used as the cut-off:
    the rows keep their ids and attributes and the next encode fills them in.
    """
    broken, n_ok = needs_repair(file)
    if not broken:
        return 0
    longest = max(ds.shape[0] for ds in aligned_datasets(file))
    padded = [ds.name for ds in aligned_datasets(file) if ds.shape[0] < n_ok]
    for ds in aligned_datasets(file):
        if ds.shape[0] != n_ok:
            ds.resize(n_ok, axis=0)
    file.flush()
    log.warning("%s: an earlier write stopped half-way (a full disk?); %d row(s) without an id were removed, "
                "%d rows remain%s. Rerun the encode to add what is missing.", path, max(0, longest - n_ok),
                n_ok, f" ({', '.join(padded)} padded as not written)" if padded else "")
    return max(0, longest - n_ok)


def refuse_if_broken(file: h5py.File, path: Path) -> None:
    """Readers do not repair (they hold no lock): they say what happened and how to fix it.

    A check that cannot be made (metadata another process is writing, seen half-way) does not stop the
    reader: only a store that is known to be broken is refused."""
    try:
        broken, n_ok = needs_repair(file)
    except (RuntimeError, OSError, KeyError, ValueError):
        return
    if broken:
        raise StoreError(
            f"{path}: an earlier write stopped half-way (a full disk?) and left incomplete rows after row "
            f"{n_ok}. Free some space and rerun the encode (or any command that writes to the store): it "
            "removes them and carries on."
        )
