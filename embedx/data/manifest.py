"""The manifest: one row per image, the table every later step reads.

Validation collects *every* problem before raising, because a cohort of ten thousand rows with three kinds
of mistakes should cost the user one round trip, not three. Rows are reported the way a user finds them:
"row N" is the N-th data row counting from 1 (the header is not a row); for CSV files the physical line
number in the file is given too ("line N+1" when no value spans several lines).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedx.data.identity import normalised_path, sample_id
from embedx.data.schema import (
    MOSTLY_NUMERIC,
    RESERVED_COLUMNS,
    AttributeSpec,
    read_schema,
    resolve_schema,
    sidecar_path,
    write_schema,
)
from embedx.errors import ManifestError

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
# How many offending rows one problem lists before it says "... and N more".
MAX_LISTED = 20


@dataclass
class Manifest:
    """A validated manifest: the table, where it came from, and what each attribute column is."""

    table: pd.DataFrame
    source: Path | None
    root: Path
    schema: dict[str, AttributeSpec] = field(default_factory=dict)
    # text values of continuous columns that were read as missing: {column: {text: rows}}
    text_as_missing: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def attributes(self) -> list[str]:
        return [c for c in self.table.columns if c not in RESERVED_COLUMNS]

    def __len__(self) -> int:
        return len(self.table)

    def absolute_path(self, row: int) -> Path:
        path = Path(str(self.table.at[row, "path"]))
        return path if path.is_absolute() else self.root / path

    def sample_ids(self, cohort: str = "", salt: str = "") -> np.ndarray:
        """The store's join key per row: the cohort-relative path, hashed (see `embedx.data.identity`).

        A store salts its ids: use `Store.ids_for(manifest)` to get the ids a given store uses."""
        return np.array([sample_id(p, self.root, cohort, salt) for p in self.table["path"]], dtype=str)

    def missing_counts(self) -> dict[str, int]:
        """Missing values per attribute; they are counted and reported, never filled."""
        return {name: int(self.table[name].isna().sum()) for name in self.attributes}

    @property
    def n_subjects(self) -> int:
        return int(self.table["subject_id"].nunique())


def _where(row: int, lines: Sequence[int] | None) -> str:
    """'row 3 (line 4)' for CSV, 'row 3' for Parquet; `row` is the 0-based table position."""
    if lines is not None and row < len(lines):
        return f"row {row + 1} (line {lines[row]})"
    return f"row {row + 1}"


def _capped(items: list[str]) -> str:
    shown = "\n    ".join(items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n    {shown}{more}"


def _refuse_repeated_names(path: Path, header: Sequence[Any]) -> None:
    """Two columns of one name (pandas would silently call the second 'site.1', or keep both as 'path')."""
    names = [str(c).strip() for c in header]
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise ManifestError(
            f"{path}: column name(s) {', '.join(map(repr, repeated))} appear more than once (names are "
            "compared without surrounding spaces); rename or remove the extra column"
        )


def _scan_csv_records(path: Path, problems: list[str]) -> list[int]:
    """First pass with the csv module: field counts per record, and the file line of each kept record.

    pandas silently pads short rows and can only skip long ones without saying where; this pass gives the
    user the line numbers. Returns the line number of each record that pandas will keep (blank lines and
    over-long records are dropped by pandas, so they are dropped here too).
    """
    kept_lines: list[int] = []
    bad: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ManifestError(f"{path}: the manifest is empty (no header line)")
            n_fields = len(header)
            _refuse_repeated_names(path, header)
            record = 0
            while True:
                start_line = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    record += 1
                    bad.append(f"row {record} (line {start_line}): unreadable ({err})")
                    continue
                if not fields:
                    continue
                record += 1
                if len(fields) > n_fields:
                    bad.append(
                        f"row {record} (line {start_line}): {len(fields)} fields, header has {n_fields}"
                    )
                    continue
                if len(fields) < n_fields:
                    bad.append(
                        f"row {record} (line {start_line}): {len(fields)} fields, header has {n_fields}"
                    )
                kept_lines.append(start_line)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text (byte {err.start}); save the manifest as UTF-8") from err
    if bad:
        problems.append(f"{len(bad)} unreadable row(s) (wrong number of fields):" + _capped(bad))
    return kept_lines


def _read_table(path: Path, problems: list[str]) -> tuple[pd.DataFrame, list[int] | None]:
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            table = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise ManifestError(f"{path}: cannot read Parquet file ({type(err).__name__}: {err})") from err
        return table, None
    lines = _scan_csv_records(path, problems)
    try:
        table = pd.read_csv(
            path,
            dtype={"path": str, "subject_id": str},
            on_bad_lines="skip",
            skip_blank_lines=True,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError as err:
        raise ManifestError(f"{path}: the manifest is empty") from err
    except (pd.errors.ParserError, ValueError) as err:
        raise ManifestError(f"{path}: cannot parse CSV ({err})") from err
    _keep_padded_codes(path, table)
    return table, lines


_PADDED = re.compile(r"^\s*[+-]?0\d")  # "01", "007": a code, not a number ("0", "0.5" are numbers)


def _keep_padded_codes(path: Path, table: pd.DataFrame) -> None:
    """Columns pandas read as numbers but that hold zero-padded codes ("01", "011") keep their text.

    Read as numbers, "01" and "1" become one value and "011" shows as 11: two scanners or sites pooled
    without a word. A continuous quantity written with zeros ("045") still becomes a number where it is
    declared or inferred continuous (`_check_values`, `load_manifest`).
    """
    numeric = [c for c in table.columns if c not in ("path", "subject_id")
               and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
    if not numeric:
        return
    raw = pd.read_csv(path, usecols=numeric, dtype=str, on_bad_lines="skip", skip_blank_lines=True,
                      encoding="utf-8-sig")  # fmt: skip
    if len(raw) != len(table):
        return
    for name in numeric:
        text = raw[name]
        padded = text.dropna().str.match(_PADDED)
        if padded.any():
            table[name] = text.str.strip().to_numpy(dtype=object)
            shown = ", ".join(repr(v) for v in text.dropna()[padded].unique()[:5])
            log.warning(
                "%s: column %r has leading zeros (%s): read as codes, so that '01' and '1' stay two values, "
                "unless it is declared continuous or holds fractions", path.name, name, shown,
            )  # fmt: skip


def _text_to_missing(table: pd.DataFrame, name: str, where: str) -> dict[str, int]:
    """A continuous column's text values ("unknown", "89+") become missing; say which, and how many."""
    column = table[name]
    numeric = pd.to_numeric(column, errors="coerce")
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
            numeric = pd.to_numeric(column, errors="coerce")
            bad_rows = np.flatnonzero(numeric.isna().to_numpy() & column.notna().to_numpy())
            if len(bad_rows) > (1 - MOSTLY_NUMERIC) * column.notna().sum():
                items = [f"{_where(int(r), lines)}: {column.iloc[r]!r}" for r in bad_rows]
                problems.append(
                    f"column {name!r} is declared continuous but {len(bad_rows)} value(s) are not numbers:"
                    + _capped(items)
                )
            else:
                _text_to_missing(table, name, path_name)
        if spec.kind == "binary":
            values = column.dropna().unique()
            if len(values) > 2:
                shown = ", ".join(repr(v) for v in list(values)[:10])
                problems.append(f"column {name!r} is declared binary but has {len(values)} values: {shown}")


_SUBJECT_LIKE = {"patientid", "patient", "subject", "participant", "participantid", "pid", "mrn", "caseid"}


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


def load_manifest(
    path: str | Path, schema_file: str | Path | None = None, check_files: bool = True
) -> Manifest:
    """Read and validate a CSV or Parquet manifest; raise one `ManifestError` listing every problem.

    The schema comes from the sidecar `<stem>.yaml` beside the manifest, then `schema_file` (its entries
    win), then inference for undeclared columns (logged). `check_files=False` skips the existence check,
    which costs one filesystem call per row on a network share.
    """
    path = Path(path)
    problems: list[str] = []
    table, lines = _read_table(path, problems)
    _refuse_repeated_names(path, list(table.columns))
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

    paths = table["path"]
    empty = np.flatnonzero(paths.isna().to_numpy() | (paths.astype(str).str.strip() == "").to_numpy())
    if len(empty):
        problems.append(
            f"{len(empty)} row(s) with an empty 'path':" + _capped([_where(int(r), lines) for r in empty])
        )
    table["path"] = paths.where(paths.isna(), paths.astype(str).str.strip())

    root = path.resolve().parent
    present = table["path"].dropna()
    # "a.png", "./a.png" and "<root>/a.png" are one file: compare the paths as the store keys them
    keyed = present.map(lambda p: normalised_path(p, root))
    dup_mask = keyed.duplicated(keep=False)
    if dup_mask.any():
        items = []
        for _, rows in keyed[dup_mask].groupby(keyed[dup_mask], sort=False).groups.items():
            written = present[rows]
            if written.nunique() == 1:
                items.append(f"{written.iloc[0]!r} at " + ", ".join(_where(int(r), lines) for r in rows))
            else:
                items.append("one file written as " + ", ".join(
                    f"{present[r]!r} ({_where(int(r), lines)})" for r in rows))
        problems.append(f"{len(items)} duplicated path(s):" + _capped(items))

    if check_files:
        missing = []
        for r, value in present.items():
            p = Path(value)
            if not os.path.exists(p if p.is_absolute() else root / p):
                missing.append(f"{_where(int(r), lines)}: {value}")
        if missing:
            problems.append(
                f"{len(missing)} file(s) do not exist (relative paths are resolved against {root}):"
                + _capped(missing)
            )

    if "subject_id" in table.columns:
        sid = table["subject_id"]
        blank = np.flatnonzero(sid.isna().to_numpy() | (sid.astype(str).str.strip() == "").to_numpy())
        if len(blank):
            problems.append(
                f"{len(blank)} row(s) with an empty 'subject_id':"
                + _capped([_where(int(r), lines) for r in blank])
            )
        table["subject_id"] = sid.astype(str).str.strip()
    else:
        spelled = [c for c in table.columns if re.sub(r"[^a-z]", "", c.lower()) == "subjectid"]
        if spelled:
            problems.append(
                f"no 'subject_id' column, but {spelled[0]!r} looks like one (column names are "
                "case-sensitive: rename it to 'subject_id'; without it every image counts as its own "
                "subject, and splits and intervals would mix one patient's images)"
            )
            raise ManifestError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        hint = [c for c in table.columns if re.sub(r"[^a-z]", "", c.lower()) in _SUBJECT_LIKE]
        log.warning(
            "%s has no 'subject_id' column: every row is treated as its own subject%s", path,
            f" (if {hint[0]!r} identifies the patient, name it 'subject_id')" if hint else "",
        )
        table["subject_id"] = [sample_id(p, root) for p in table["path"].fillna("")]
    _strip_text_values(table, path.name)

    declared: dict[str, AttributeSpec] = {}
    sidecar = sidecar_path(path)
    if sidecar.exists():
        declared.update(read_schema(sidecar))
    if schema_file is not None:
        declared.update(read_schema(schema_file))
    _check_values(table, declared, lines, problems, path.name)

    if problems:
        raise ManifestError(
            f"{path}: {len(problems)} problem(s) "
            "(row N = N-th data row, counting from 1; line = line number in the file):\n  "
            + "\n  ".join(problems)
        )

    columns = ["path", "subject_id"] + [c for c in table.columns if c not in ("path", "subject_id")]
    table = table[columns].reset_index(drop=True)  # file columns (mask) stay in the table, not as attributes
    schema = resolve_schema(table, declared)
    text_values = {}
    for name, spec in schema.items():
        if spec.inferred and spec.kind == "continuous" and not pd.api.types.is_numeric_dtype(table[name]):
            text_values[name] = _text_to_missing(table, name, path.name)  # mostly numbers, a few words
    manifest = Manifest(table=table, source=path, root=root, schema=schema, text_as_missing=text_values)
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
    write_schema(
        {k: AttributeSpec(k, s.kind, s.role, inferred=False) for k, s in full.items()}, sidecar_path(path)
    )
    return path


def _values_summary(column: pd.Series, spec: AttributeSpec) -> str:
    present = column.dropna()
    if present.empty:
        return "all missing"
    if spec.kind == "continuous":
        numeric = pd.to_numeric(present, errors="coerce")
        return f"min {numeric.min():.4g}, median {numeric.median():.4g}, max {numeric.max():.4g}"
    counts = present.value_counts()
    shown = ", ".join(f"{k}: {v}" for k, v in counts.head(6).items())
    more = f", ... ({len(counts)} values)" if len(counts) > 6 else ""
    return shown + more


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
    lines.append(f"{'attribute':<{width}}  {'kind':<11}  {'role':<11}  {'':<10}  {'missing':>13}  values")
    missing = manifest.missing_counts()
    for name in manifest.attributes:
        spec = manifest.schema[name]
        mark = "(inferred)" if spec.inferred else ""
        pct = f"{missing[name]} ({100 * missing[name] / max(n, 1):.1f}%)"
        lines.append(
            f"{name:<{width}}  {spec.kind:<11}  {spec.role:<11}  {mark:<10}  {pct:>13}  "
            f"{_values_summary(table[name], spec)}"
        )
    for name, text in manifest.text_as_missing.items():
        if text:
            shown = ", ".join(f"{v!r} x{c}" for v, c in list(text.items())[:8])
            lines.append(f"{name}: text values counted as missing (recode any that mean a number): {shown}")
    if any(s.inferred for s in manifest.schema.values()):
        sidecar = sidecar_path(manifest.source) if manifest.source else "a sidecar <manifest>.yaml"
        lines.append(f"(inferred) kinds/roles were guessed from the values and names; pin them in {sidecar}")
    return "\n".join(lines)
