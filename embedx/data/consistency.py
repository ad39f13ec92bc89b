"""Attributes that contradict themselves or say nothing, said once when the manifest is read.

* A demographic class (sex, ethnicity) that differs between the images of one subject is a data error: the
  subject is then counted in both groups by fairness and `data check`, and a probe of it mixes the two. A
  view or a scanner may change between a patient's images, an age between visits: only categorical and
  binary *demographic* attributes are checked. Rows, not subject ids, are named: ids may be names.
* An attribute with a single value in every row cannot be probed or compared; every later step would say
  so in its own words ("fewer than 2 groups large enough"), so it is said here first, with the value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from embedx.data.manifest_read import where
from embedx.data.schema import AttributeSpec

log = logging.getLogger(__name__)
SHOWN = 3


def subjects_with_two_values(values: pd.Series, subjects: pd.Series) -> tuple[int, list[int]]:
    """How many subjects hold more than one value of `values` (missing cells ignored), and their rows."""
    present = values.notna().to_numpy()
    if not present.any():
        return 0, []
    # integer codes: a min/max per subject is a fraction of a text groupby's nunique (every manifest load);
    # the whole columns are coded (as stored, no copy to Python objects) and the present rows taken after
    subject_code = pd.factorize(subjects)[0][present]
    value_code = pd.factorize(values.astype(str))[0][present]
    spread = pd.Series(value_code).groupby(subject_code).agg(["min", "max"])
    mixed = spread.index.to_numpy()[(spread["min"] != spread["max"]).to_numpy()]
    if not len(mixed):
        return 0, []
    rows = np.flatnonzero(present)[np.isin(subject_code, mixed)]
    return len(mixed), [int(r) for r in rows]


def warn_inconsistent_attributes(table: pd.DataFrame, schema: Mapping[str, AttributeSpec], source: str,
                                 lines: Sequence[int] | None) -> None:
    """The two warnings of the module doc, one line per attribute."""
    subjects = table["subject_id"].astype(str)
    for name, spec in schema.items():
        if name not in table.columns:
            continue
        present = table[name].dropna()
        if spec.kind != "continuous" and len(present) and present.astype(str).nunique() == 1:
            log.warning("%s: attribute %r has one value (%s) in every row that has one: nothing to probe or "
                        "compare by it", source, name, present.astype(str).iloc[0])
            continue
        if spec.role != "demographic" or spec.kind == "continuous":
            continue
        count, rows = subjects_with_two_values(table[name], subjects)
        if count:
            shown = ", ".join(where(r, lines) for r in rows[:SHOWN])
            log.warning(
                "%s: attribute %r differs between the images of %d subject(s) (%d rows; first: %s): they are "
                "counted in each of their groups by fairness and data check. Correct the manifest, or make "
                "the column missing where it is unknown", source, name, count, len(rows), shown,
            )
