"""Category values that differ only in case, spacing or punctuation: probably one value typed two ways.

`PA` and `P A`, or `yes` and `Yes`, become separate classes without a word: a binary finding turns into
a three-class attribute, and a probe reads the typing habits of whoever filled the column. Nothing is merged
(two spellings may mean two things, and only the user knows); the warning names the spellings and their rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import pandas as pd

from embedx.data.schema import AttributeSpec

log = logging.getLogger(__name__)

__all__ = ["spelling_variants", "warn_spelling_variants"]

_NOT_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


def spelling_variants(column: pd.Series) -> list[dict[str, int]]:
    """Groups of two or more distinct values that are equal once case, spaces and punctuation are dropped;
    each group maps spelling -> rows, most common first."""
    counts = column.dropna().astype(str).value_counts()
    groups: dict[str, dict[str, int]] = {}
    for value, rows in counts.items():
        key = _NOT_ALNUM.sub("", str(value)).casefold()
        if key:
            groups.setdefault(key, {})[str(value)] = int(rows)
    return [group for group in groups.values() if len(group) > 1]


def warn_spelling_variants(table: pd.DataFrame, schema: Mapping[str, AttributeSpec], where: str) -> None:
    """One warning per categorical or binary column with spelling variants (see the module doc)."""
    for name, spec in schema.items():
        if spec.kind not in ("categorical", "binary") or name not in table.columns:
            continue
        variants = spelling_variants(table[name])
        if not variants:
            continue
        shown = "; ".join(" / ".join(f"{value!r} ({rows} rows)" for value, rows in group.items())
                          for group in variants)  # fmt: skip
        log.warning(
            "%s: column %r holds values that differ only in case, spacing or punctuation: %s. They are "
            "separate classes now; if they mean the same, write them one way in the manifest",
            where, name, shown,
        )  # fmt: skip
