"""Which columns of an imported table are features, and which are the cohort's metadata riding along.

A table exported with pandas often keeps the metadata beside the features (`path, finding, age, f0..f511`).
Taken as features, a column `finding` makes every probe of `finding` read its own label (a review saw
balanced accuracy 1.000, "encoded"), and a column of MRNs writes patient identifiers into the store's
latents. So, before anything is written:

* a column named like one of the store's attributes, or like the subject id, is left out: its values are
  in the store already, from the manifest;
* a column whose name says it holds an identifier (`PatientID (MRN)`, `accession`, `DOB`) is left out and
  never written;
* a column of a few whole numbers among real-valued features (a label under another name, `label`, `y`,
  `class`) is named in a warning: it is kept, since a quantised feature can look the same, and the user
  is told how to drop it.

Each is said once, by name, with the count of feature columns kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from embedx.data.identifiers import SUBJECT_LIKE_NAMES, looks_like_identifier, normalised

log = logging.getLogger(__name__)

# the subject's names of the manifest, and the row-level ids and bookkeeping an export carries beside them
SUBJECT_NAMES = SUBJECT_LIKE_NAMES | {"subjectid", "studyid", "seriesid", "imageid", "index", "cohort",
                                      "split", "fold"}
FEW_VALUES = 10  # distinct whole numbers that make a column look like a label among real-valued features


def metadata_columns(names: Iterable[str], attributes: Iterable[str]) -> dict[str, str]:
    """Column -> why it is not a feature (an attribute of the store, the subject id, an identifier)."""
    known = {normalised(a): a for a in attributes}
    why: dict[str, str] = {}
    for name in names:
        flat = normalised(name)
        if flat in known:
            why[name] = f"the store's attribute {known[flat]!r}"
        elif looks_like_identifier(name):
            why[name] = "a patient identifier (never written to the store)"
        elif flat in SUBJECT_NAMES:
            why[name] = "a subject or row identifier"
    return why


def label_like(vectors: np.ndarray, names: list[str]) -> list[str]:
    """Columns of at most FEW_VALUES whole numbers while most columns are real-valued."""
    if vectors.ndim != 2 or vectors.shape[1] < 4 or vectors.shape[0] == 0:
        return []
    finite = np.where(np.isfinite(vectors), vectors, 0.5)  # a missing cell is no whole number
    whole = np.all(np.mod(finite, 1) == 0, axis=0)
    if whole.sum() > vectors.shape[1] / 2:  # a quantised embedding: whole numbers are its nature
        return []
    return [names[j] for j in np.flatnonzero(whole) if len(np.unique(vectors[:, j])) <= FEW_VALUES]


def drop_metadata_columns(frame: pd.DataFrame, candidates: list[str], attributes: Iterable[str],
                          source: Path) -> pd.DataFrame:
    """`frame` without the candidate feature columns that are metadata, said by name with the reason."""
    dropped = metadata_columns(candidates, attributes)
    if dropped:
        log.warning(
            "%s: column(s) left out of the embedding, since they are not features: %s; %d feature column(s) "
            "kept", source, "; ".join(f"{n!r} ({why})" for n, why in dropped.items()),
            len(candidates) - len(dropped),
        )
    return frame.drop(columns=list(dropped))


def warn_label_like(vectors: np.ndarray, names: list[str], source: Path) -> None:
    suspicious = label_like(vectors, names)
    if suspicious:
        log.warning(
            "%s: column(s) %s hold at most %d whole-number values among real-valued features: if they are "
            "labels or codes rather than features, drop them from the file, or a probe may read its own "
            "label", source, ", ".join(repr(n) for n in suspicious), FEW_VALUES,
        )
