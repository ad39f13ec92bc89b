"""Reading a manifest file as written: CSV rows with their line numbers, Parquet, and the traps of both.

pandas alone would pad short rows silently, rename a repeated column to 'site.1', and read the codes '01'
and '1' as one number; this module catches each of those before the manifest's checks see the table, and
says where (`row N (line L)`).
"""

from __future__ import annotations

import codecs
import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedx.errors import ManifestError

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_LISTED = 20


def where(row: int, lines: Sequence[int] | None) -> str:
    """'row 3 (line 4)' for CSV, 'row 3' for Parquet; `row` is the 0-based table position."""
    if lines is not None and row < len(lines):
        return f"row {row + 1} (line {lines[row]})"
    return f"row {row + 1}"


def capped(items: list[str]) -> str:
    shown = "\n    ".join(items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n    {shown}{more}"


def refuse_repeated_names(path: Path, header: Sequence[Any]) -> None:
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
    simple = _scan_simple_csv(path, problems)
    if simple is not None:
        return simple
    kept_lines: list[int] = []
    bad: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ManifestError(f"{path}: the manifest is empty (no header line)")
            n_fields = len(header)
            refuse_repeated_names(path, header)
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
        # refused, not guessed: reading cp1252 as Latin-1 (or the reverse) silently changes values
        raise ManifestError(
            f"{path}: not UTF-8 text (byte {err.start}); save the manifest as UTF-8. From Excel: File > "
            "Save As > 'CSV UTF-8 (Comma delimited)'. A Windows (cp1252/Latin-1) export can be converted "
            f"with: iconv -f cp1252 -t utf-8 '{path}' > '{path.with_name(path.stem + '-utf8.csv')}'"
        ) from err
    if bad:
        problems.append(f"{len(bad)} unreadable row(s) (wrong number of fields):" + capped(bad))
    return kept_lines


# The csv module's own limit on one field (characters); a longer line is left to it, to say so as it does.
_LONGEST_SIMPLE_LINE = 100_000


def _scan_simple_csv(path: Path, problems: list[str]) -> list[int] | None:
    """`_scan_csv_records` for a file without quotes, in a few numpy passes instead of a loop per record.

    Without a quote character a record is exactly one line and its fields are its commas plus one, which is
    what the csv module would find, line numbers included. None when the file needs the csv module itself:
    quotes, a carriage return not followed by a line feed, NUL bytes, a very long line, a blank first line,
    or bytes that are not UTF-8 (the csv pass raises the one message for that)."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if not data or b'"' in data or b"\x00" in data or (
            b"\r" in data and data.count(b"\r") != data.count(b"\r\n")):
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [len(data)]))
    if starts[-1] == len(data):  # the file ends with a line feed: no line after it
        starts, stops = starts[:-1], stops[:-1]
    lengths = stops - starts
    carriage = np.zeros(len(stops), dtype=bool)
    ended = lengths > 0
    carriage[ended] = buffer[stops[ended] - 1] == ord("\r")
    lengths = lengths - carriage
    if lengths[0] == 0 or int(lengths.max()) >= _LONGEST_SIMPLE_LINE:
        return None
    commas = np.add.reduceat(buffer == ord(","), starts, dtype=np.int64)  # a line and its line feed
    header = data[starts[0]:starts[0] + lengths[0]].decode("utf-8").split(",")
    n_fields = len(header)
    refuse_repeated_names(path, header)
    records = np.flatnonzero(lengths[1:] > 0) + 1  # blank lines are no records (csv module and pandas alike)
    fields = commas[records] + 1
    line_numbers = records + 1
    bad = [f"row {record} (line {line}): {count} fields, header has {n_fields}"
           for record, line, count in zip(np.flatnonzero(fields != n_fields) + 1,
                                          line_numbers[fields != n_fields].tolist(),
                                          fields[fields != n_fields].tolist(), strict=True)]  # fmt: skip
    if bad:
        problems.append(f"{len(bad)} unreadable row(s) (wrong number of fields):" + capped(bad))
    return line_numbers[fields <= n_fields].tolist()


def read_table(path: Path, problems: list[str]) -> tuple[pd.DataFrame, list[int] | None]:
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


ZERO_PADDED = re.compile(r"^\s*[+-]?0\d")  # "01", "007": a code, not a number ("0", "0.5" are numbers)


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
        if not _any_padded(text):
            continue
        padded = text.dropna().str.match(ZERO_PADDED)
        if padded.any():
            table[name] = text.str.strip().to_numpy(dtype=object)
            shown = ", ".join(repr(v) for v in text.dropna()[padded].unique()[:5])
            log.warning(
                "%s: column %r has leading zeros (%s): read as codes, so that '01' and '1' stay two values, "
                "unless it is declared continuous or holds fractions", path.name, name, shown,
            )  # fmt: skip


def _any_padded(text: pd.Series) -> bool:
    """Whether a zero-padded code is among the texts, each distinct text tried once (a million-row column
    of ages holds a hundred of them)."""
    distinct = text.dropna().unique()
    return any(ZERO_PADDED.match(value) for value in distinct if isinstance(value, str))
