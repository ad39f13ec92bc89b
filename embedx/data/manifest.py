"""The manifest: one row per image, the table every later step reads.

Validation collects *every* problem before raising, because a cohort of ten thousand rows with three kinds
of mistakes should cost the user one round trip, not three. Rows are reported the way a user finds them:
"row N" is the N-th data row counting from 1 (the header is not a row); for CSV files the physical line
number in the file is given too ("line N+1" when no value spans several lines).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from embedx.data.consistency import warn_inconsistent_attributes
from embedx.data.identifiers import SUBJECT_LIKE_NAMES, drop_identifier_columns
from embedx.data.identity import normalised_paths, sample_id, sample_ids  # noqa: F401  (sample_id: re-exported)
from embedx.data.manifest_read import PARQUET_SUFFIXES, capped, read_table, refuse_repeated_names, where
from embedx.data.manifest_values import plain_text, to_numbers
from embedx.data.missing_codes import apply_missing_codes, warn_sentinels
from embedx.data.readable import ReadCheck, unreadable_files
from embedx.data.schema import (
    MOSTLY_NUMERIC,
    RESERVED_COLUMNS,
    AttributeSpec,
    read_schema,
    resolve_schema,
    sidecar_path,
    write_schema,
)
from embedx.data.value_variants import warn_spelling_variants
from embedx.errors import ManifestError

log = logging.getLogger(__name__)

@dataclass
class Manifest:
    """A validated manifest: the table, where it came from, and what each attribute column is."""

    table: pd.DataFrame
    source: Path | None
    root: Path
    schema: dict[str, AttributeSpec] = field(default_factory=dict)
    # text values of continuous columns that were read as missing: {column: {text: rows}}
    text_as_missing: dict[str, dict[str, int]] = field(default_factory=dict)
    # declared missing-value codes and the rows each turned missing: {column: {code as shown: rows}}
    coded_missing: dict[str, dict[str, int]] = field(default_factory=dict)
    # CSV: the file line of each row (a quoted value may span lines); None for Parquet or an in-memory table
    lines: list[int] | None = None

    @property
    def attributes(self) -> list[str]:
        return [c for c in self.table.columns if c not in RESERVED_COLUMNS]

    def __len__(self) -> int:
        return len(self.table)

    def absolute_path(self, row: int) -> Path:
        path = Path(str(self.table.at[row, "path"]))
        return path if path.is_absolute() else self.root / path

    def where(self, row: int) -> str:
        """'row N (line L)' for the 0-based table position `row`: the one way every command names a row.

        N counts data rows from 1 and L is the CSV line, as `embedx data check` reports them, so that a row
        named by training, encode or a control is the one the user finds in the file (Parquet: 'row N')."""
        return where(row, self.lines)

    def row_ref(self, row: int) -> dict[str, int]:
        """`{"row": N, "line": L}` for JSON and CSV outputs, with N and L as in `where` (no line for
        Parquet), so that a stored row number never needs a note on where counting starts."""
        ref = {"row": int(row) + 1}
        if self.lines is not None and row < len(self.lines):
            ref["line"] = int(self.lines[row])
        return ref

    def sample_ids(self, cohort: str = "", salt: str = "") -> np.ndarray:
        """The store's join key per row: the cohort-relative path, hashed (see `embedx.data.identity`).

        A store salts its ids: use `Store.ids_for(manifest)` to get the ids a given store uses."""
        return np.array(sample_ids(self.table["path"], self.root, cohort, salt), dtype=str)

    def missing_counts(self) -> dict[str, int]:
        """Missing values per attribute; they are counted and reported, never filled."""
        return {name: int(self.table[name].isna().sum()) for name in self.attributes}

    @property
    def n_subjects(self) -> int:
        return int(self.table["subject_id"].nunique())


def _text_to_missing(table: pd.DataFrame, name: str, where: str) -> dict[str, int]:
    """A continuous column's text values ("unknown", "89+") become missing; say which, and how many."""
    column = table[name]
    numeric = to_numbers(column)
    text = column[numeric.isna() & column.notna()].astype(str).value_counts()
    if len(text):
        shown = ", ".join(f"{v!r} x{c}" for v, c in text.head(8).items())
        log.warning(
            "%s: column %r is continuous; %d text value(s) (%s) are not numbers and count as missing. "
            "If they mean something (89+ = 89 or older), recode them in the manifest.",
            where, name, int(text.sum()), shown + (" ..." if len(text) > 8 else ""),
        )
    table[name] = numeric
    return {str(k): int(v) for k, v in text.items()}


def _check_values(
    table: pd.DataFrame,
    schema: dict[str, AttributeSpec],
    lines: list[int] | None,
    problems: list[str],
    path_name: str = "manifest",
) -> None:
    """Declared kinds must fit the values: numbers in continuous columns (a few text values, under 20 %,
    count as missing and are named), at most two values in binary."""
    for name, spec in schema.items():
        if name not in table.columns:
            continue
        column = table[name]
        if spec.kind == "continuous" and not pd.api.types.is_numeric_dtype(column):
            numeric = to_numbers(column)
            bad_rows = np.flatnonzero(numeric.isna().to_numpy() & column.notna().to_numpy())
            if len(bad_rows) > (1 - MOSTLY_NUMERIC) * column.notna().sum():
                items = [f"{where(int(r), lines)}: {column.iloc[r]!r}" for r in bad_rows]
                problems.append(
                    f"column {name!r} is declared continuous but {len(bad_rows)} value(s) are not numbers:"
                    + capped(items)
                )
            else:
                _text_to_missing(table, name, path_name)
        if spec.kind == "binary":
            counts = column.dropna().value_counts()
            if len(counts) > 2:
                # the two commonest values are taken as the pair; the rows of the others are named
                shown = ", ".join(f"{v!r} ({n} rows)" for v, n in list(counts.items())[:10])
                odd = np.flatnonzero(column.notna().to_numpy() & ~column.isin(counts.index[:2]).to_numpy())
                items = [f"{where(int(r), lines)}: {column.iloc[r]!r}" for r in odd]
                problems.append(f"column {name!r} is declared binary but has {len(counts)} values ({shown}); "
                                "besides the two commonest:" + capped(items))


def _backslash_hint(missing: list[str]) -> str:
    """A hint when missing paths are written with Windows backslashes (`..\\images\\a.png`): elsewhere a
    backslash is part of the file name, so every such row is simply 'missing', which says nothing of why."""
    if os.sep == "\\" or not any("\\" in item for item in missing):
        return ""
    return ("\n    (these paths use Windows backslashes '\\'; on this system a backslash is part of the "
            "file name: write the paths with '/' instead, e.g. ../hospital/x.png)")


def _strip_changes(column: pd.Series) -> bool:
    """Whether stripping a text column changes a value or blanks one, each distinct value tried once with
    the same `.str.strip` as `_strip_text_values` uses."""
    distinct = column.dropna().drop_duplicates()
    stripped = distinct.str.strip()
    return bool((stripped != distinct).any() or (stripped == "").any())


def _strip_text_values(table: pd.DataFrame, where: str) -> None:
    """Spaces around text values are dropped: " A" and "A" are one site, not two (said, with the count)."""
    for name in table.columns:
        if name in ("path", "subject_id"):
            continue
        column = table[name]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            continue
        if isinstance(column.dtype, pd.CategoricalDtype):  # Parquet categories: " A" and "A" may be two
            column = column.astype(object)
        if plain_text(column) and not _strip_changes(column):
            continue  # no value has spaces around it, none is blank: the column stays as read
        texts = column.map(lambda v: isinstance(v, str))
        if not texts.any():
            continue
        stripped = column.where(~texts, column[texts].str.strip())
        changed = int((stripped[texts] != column[texts]).sum())
        blank = texts & (stripped == "")
        stripped = stripped.where(~blank, None)  # a cell of spaces is a missing value, not a class ""
        if changed:
            log.warning("%s: column %r: %d value(s) had spaces around them, removed (' A' and 'A' are one "
                        "value; a cell of spaces is missing)", where, name, changed)  # fmt: skip
        if changed or blank.any():
            table[name] = stripped


def _check_paths(table: pd.DataFrame, root: Path, lines: list[int] | None, problems: list[str]) -> pd.Series:
    """Empty paths and paths naming one file twice; strips the paths in place, returns the present ones."""
    paths = table["path"]
    stripped = paths.astype(str).str.strip()
    empty = np.flatnonzero(paths.isna().to_numpy() | (stripped == "").to_numpy())
    if len(empty):
        problems.append(
            f"{len(empty)} row(s) with an empty 'path':" + capped([where(int(r), lines) for r in empty])
        )
    table["path"] = paths.where(paths.isna(), stripped)

    present = table["path"].dropna()
    # "a.png", "./a.png" and "<root>/a.png" are one file: compare the paths as the store keys them
    keyed = normalised_paths(present, root)
    dup_mask = keyed.duplicated(keep=False)
    if dup_mask.any():
        items = []
        for _, rows in keyed[dup_mask].groupby(keyed[dup_mask], sort=False).groups.items():
            written = present[rows]
            if written.nunique() == 1:
                items.append(f"{written.iloc[0]!r} at " + ", ".join(where(int(r), lines) for r in rows))
            else:
                items.append("one file written as " + ", ".join(
                    f"{present[r]!r} ({where(int(r), lines)})" for r in rows))
        problems.append(f"{len(items)} duplicated path(s):" + capped(items))
    return present


def _check_files(present: pd.Series, root: Path, lines: list[int] | None, problems: list[str],
                 check_images: ReadCheck) -> None:
    """Files that do not exist, and (`check_images`) files that exist but cannot be read."""
    missing = []
    for r, value in present.items():
        p = Path(value)
        if not os.path.exists(p if p.is_absolute() else root / p):
            missing.append(f"{where(int(r), lines)}: {value}")
    if missing:
        problems.append(
            f"{len(missing)} file(s) do not exist (relative paths are resolved against {root}):"
            + capped(missing) + _backslash_hint(missing)
        )
    unreadable = unreadable_files(present, root, lines, check_images)
    if unreadable:
        how = ("cannot be decoded" if check_images == "decode"
               else "are not readable images (size and header checked; --read decodes them in full)")
        problems.append(f"{len(unreadable)} file(s) {how}:" + capped(unreadable))


def _check_subjects(table: pd.DataFrame, path: Path, root: Path, lines: list[int] | None,
                    problems: list[str]) -> None:
    """Empty subject ids (stripped in place); without the column, each row is its own subject."""
    if "subject_id" in table.columns:
        sid = table["subject_id"]
        blank = np.flatnonzero(sid.isna().to_numpy() | (sid.astype(str).str.strip() == "").to_numpy())
        if len(blank):
            problems.append(
                f"{len(blank)} row(s) with an empty 'subject_id':"
                + capped([where(int(r), lines) for r in blank])
            )
        table["subject_id"] = sid.astype(str).str.strip()
        return
    spelled = [c for c in table.columns if re.sub(r"[^a-z]", "", c.lower()) == "subjectid"]
    if spelled:
        problems.append(
            f"no 'subject_id' column, but {spelled[0]!r} looks like one (column names are "
            "case-sensitive: rename it to 'subject_id'; without it every image counts as its own "
            "subject, and splits and intervals would mix one patient's images)"
        )
        raise ManifestError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    hint = [c for c in table.columns if re.sub(r"[^a-z]", "", c.lower()) in SUBJECT_LIKE_NAMES]
    log.warning(
        "%s has no 'subject_id' column: every row is treated as its own subject%s", path,
        f" (if {hint[0]!r} identifies the patient, name it 'subject_id')" if hint else "",
    )
    table["subject_id"] = sample_ids(table["path"].fillna(""), root)


def load_manifest(
    path: str | Path, schema_file: str | Path | None = None, check_files: bool = True,
    check_images: ReadCheck = "off",
) -> Manifest:
    """Read and validate a CSV or Parquet manifest; raise one `ManifestError` listing every problem.

    The schema comes from the sidecar `<stem>.yaml` beside the manifest, then `schema_file` (its entries
    win), then inference for undeclared columns (logged). `check_files=False` skips the existence check,
    which costs one filesystem call per row on a network share. `check_images` ("header" or "decode", see
    `embedx.data.readable`) also lists files that exist but cannot be read, as problems: `embedx data check`
    asks for it, while training and encode leave it off and skip such files one by one instead.
    """
    path = Path(path)
    problems: list[str] = []
    table, lines = read_table(path, problems)
    refuse_repeated_names(path, list(table.columns))
    table.columns = [str(c).strip() for c in table.columns]

    if "path" not in table.columns:
        found = ", ".join(repr(c) for c in table.columns) or "none"
        hint = ""
        if any(c.lower() == "path" for c in table.columns):
            hint = " (column names are case-sensitive: rename it to 'path')"
        elif len(table.columns) == 1 and any(sep in table.columns[0] for sep in (";", "\t", "|")):
            hint = " (the file looks separated by something other than commas; save it as comma-separated)"
        problems.append(
            f"no 'path' column (columns found: {found}); the manifest needs one image path per row{hint}"
        )
        raise ManifestError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    table = table.reset_index(drop=True)

    root = path.resolve().parent
    present = _check_paths(table, root, lines, problems)
    if check_files:
        _check_files(present, root, lines, problems, check_images)
    _check_subjects(table, path, root, lines, problems)
    _strip_text_values(table, path.name)

    declared: dict[str, AttributeSpec] = {}
    sidecar = sidecar_path(path)
    if sidecar.exists():
        declared.update(read_schema(sidecar))
    if schema_file is not None:
        declared.update(read_schema(schema_file))
    # codes first: a 999 age is no number to check, a U sex no third value of a binary column
    coded = apply_missing_codes(table, declared, path.name, csv=lines is not None)
    _check_values(table, declared, lines, problems, path.name)

    if problems:
        raise ManifestError(
            f"{path}: {len(problems)} problem(s) "
            "(row N = N-th data row, counting from 1; line = line number in the file):\n  "
            + "\n  ".join(problems)
        )

    table = drop_identifier_columns(table, declared, path.name)
    columns = ["path", "subject_id"] + [c for c in table.columns if c not in ("path", "subject_id")]
    table = table[columns].reset_index(drop=True)  # file columns (mask) stay in the table, not as attributes
    schema = resolve_schema(table, declared)
    text_values = {}
    for name, spec in schema.items():
        if spec.inferred and spec.kind == "continuous" and not pd.api.types.is_numeric_dtype(table[name]):
            text_values[name] = _text_to_missing(table, name, path.name)  # mostly numbers, a few words
    warn_sentinels(table, schema, path.name, Path(schema_file).name if schema_file else sidecar.name)
    warn_spelling_variants(table, schema, path.name)
    warn_inconsistent_attributes(table, schema, path.name, lines)
    manifest = Manifest(table=table, source=path, root=root, schema=schema, text_as_missing=text_values,
                        coded_missing=coded, lines=lines)
    inferred = [f"{n} ({s.kind}/{s.role})" for n, s in schema.items() if s.inferred]
    if inferred:
        log.warning(
            "%s: %d attribute(s) not declared, inferred as %s; declare them in %s to pin them",
            path.name,
            len(inferred),
            ", ".join(inferred),
            sidecar_path(path).name,
        )
    for name, count in manifest.missing_counts().items():
        if count:
            log.info(
                "attribute %r: %d of %d values missing (kept missing, not filled)", name, count, len(table)
            )
    return manifest


def write_manifest(
    table: pd.DataFrame, path: str | Path, schema: dict[str, AttributeSpec] | None = None
) -> Path:
    """Write the table (CSV, or Parquet by suffix) and its sidecar YAML.

    Columns missing from `schema` are inferred and written as declared, so the sidecar pins the kinds the
    cohort was analysed with even if later rows would change the inference.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "path" not in table.columns:
        raise ManifestError(f"cannot write {path}: the table has no 'path' column")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    full = resolve_schema(table, schema)
    write_schema({k: replace(s, inferred=False) for k, s in full.items()}, sidecar_path(path))  # codes kept
    return path


def _shown_value(value: object) -> str:
    """A class as the user wrote it: a 0/1 column with a missing cell is read by pandas as floats, and
    '0.0: 59, 1.0: 36' is not how the manifest spells its values ("0" and "1", as the store shows them)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _values_summary(column: pd.Series, spec: AttributeSpec, subjects: pd.Series) -> str:
    """Each value's subjects (images): a rare finding in 40 images may be 3 patients, and subjects are the
    unit of every fold, interval and too-small rule downstream."""
    present = column.dropna()
    if present.empty:
        return "all missing"
    if spec.kind == "continuous":
        numeric = pd.to_numeric(present, errors="coerce")
        return f"min {numeric.min():.4g}, median {numeric.median():.4g}, max {numeric.max():.4g}"
    return subjects_per_value(present, subjects[present.index])


def subjects_per_value(values: pd.Series, subjects: pd.Series, shown: int = 6) -> str:
    """'north: 15 (57), south: 12 (40)': subjects (images) per value, most subjects first, for `data check`
    and `store info` alike (a minority site of 15 patients with 57 images must not read as 57)."""
    images = values.value_counts()
    people = subjects.groupby(values.to_numpy()).nunique()
    order = sorted(images.index, key=lambda v: (-people[v], -images[v]))
    text = ", ".join(f"{_shown_value(k)}: {people[k]} ({images[k]})" for k in order[:shown])
    return text + (f", ... ({len(images)} values)" if len(images) > shown else "")


def summarize_manifest(manifest: Manifest) -> str:
    """Plain-text overview for `embedx data check`: size, subjects, and per attribute kind/role/missing."""
    table = manifest.table
    n = len(table)
    lines = [
        f"manifest: {manifest.source}" if manifest.source else "manifest: (in memory)",
        f"rows: {n}   subjects: {manifest.n_subjects}   root: {manifest.root}",
    ]
    if not manifest.attributes:
        lines.append("no attribute columns")
        return "\n".join(lines)
    width = max(len("attribute"), *(len(a) for a in manifest.attributes))
    lines.append(f"{'attribute':<{width}}  {'kind':<11}  {'role':<11}  {'':<10}  {'missing rows':>13}  "
                 "values: subjects (images)")
    missing = manifest.missing_counts()
    for name in manifest.attributes:
        spec = manifest.schema[name]
        mark = "(inferred)" if spec.inferred else ""
        pct = f"{missing[name]} ({100 * missing[name] / max(n, 1):.1f}%)"
        lines.append(
            f"{name:<{width}}  {spec.kind:<11}  {spec.role:<11}  {mark:<10}  {pct:>13}  "
            f"{_values_summary(table[name], spec, table['subject_id'])}"
        )
    for name, codes in manifest.coded_missing.items():
        shown = ", ".join(f"{code} x{rows}" for code, rows in codes.items())
        lines.append(f"{name}: declared missing codes, counted as missing: {shown}")
    for name, text in manifest.text_as_missing.items():
        if text:
            shown = ", ".join(f"{v!r} x{c}" for v, c in list(text.items())[:8])
            lines.append(f"{name}: text values counted as missing (recode any that mean a number): {shown}")
    if any(s.inferred for s in manifest.schema.values()):
        sidecar = sidecar_path(manifest.source) if manifest.source else "a sidecar <manifest>.yaml"
        lines.append(f"(inferred) kinds/roles were guessed from the values and names; pin them in {sidecar}")
    return "\n".join(lines)
