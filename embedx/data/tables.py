"""Public chest X-ray tables -> embedx manifests: CheXpert (`train.csv` / `valid.csv`) and NIH ChestX-ray14
(`Data_Entry_2017.csv`). Column layouts are those of the published files.

CheXpert: `Path, Sex, Age, Frontal/Lateral, AP/PA` and 14 findings coded 1 (positive), 0 (negative), -1
(uncertain) or blank (not mentioned in the report). The uncertainty policy decides -1: `ignore` -> missing,
`zeros` -> 0, `ones` -> 1 (the U-Ignore / U-Zeros / U-Ones of the CheXpert paper). Blank is "not mentioned",
read as 0 by default (`blank="missing"` keeps it missing instead). Finding columns are written in snake_case
(`Pleural Effusion` -> `pleural_effusion`), sex as F/M, view as AP / PA / lateral, the subject from the
`patientNNNNN` folder of the path.

NIH: `Image Index, Finding Labels ('|'-separated), Patient ID, Patient Age, Patient Gender, View Position`;
each label becomes a 0/1 column. The images are found under --root wherever they are (the archive splits them
into images_001/images ... images_012/images).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from embedx.data.dicom_header import parse_age
from embedx.errors import EmbedxError, ManifestError

log = logging.getLogger(__name__)

CHEXPERT_FINDINGS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_REQUIRED = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
NIH_REQUIRED = (
    "Image Index",
    "Finding Labels",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
UncertainPolicy = Literal["ignore", "zeros", "ones"]
BlankPolicy = Literal["zeros", "missing"]
_PATIENT = re.compile(r"(patient\d+)")
MAX_ROW_PROBLEMS = 20


def snake(name: str) -> str:
    """'Pleural Effusion' -> 'pleural_effusion', 'Pleural_Thickening' -> 'pleural_thickening'."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError as err:
        raise EmbedxError(f"{path}: no such file") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise EmbedxError(f"{path}: not a readable CSV table ({err})") from err
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {', '.join(repr(c) for c in table.columns[:12])}"
        )
    return table


def _raise_rows(path: Path, problems: list[str]) -> None:
    if problems:
        more = (
            f"\n  ... and {len(problems) - MAX_ROW_PROBLEMS} more" if len(problems) > MAX_ROW_PROBLEMS else ""
        )
        raise ManifestError(
            f"{path}: {len(problems)} unusable row(s):\n  " + "\n  ".join(problems[:MAX_ROW_PROBLEMS]) + more
        )


def _as_written(path: Path, base: Path) -> str:
    """Relative to the manifest's folder when the image lies under it, else absolute."""
    absolute = path.resolve() if path.is_absolute() else (Path.cwd() / path).resolve()
    return str(absolute.relative_to(base)) if absolute.is_relative_to(base) else str(absolute)


def _numbers(path: Path, column: str, values: pd.Series, problems: list[str]) -> pd.Series:
    """Parse a numeric column; non-numbers are row problems, naming the CSV line (header is line 1)."""
    out = pd.to_numeric(values, errors="coerce")
    bad = out.isna() & values.notna()
    for row in np.flatnonzero(bad.to_numpy()):
        problems.append(f"line {row + 2}, column {column!r}: {values.iloc[row]!r} is not a number")
    return out


def chexpert_table(
    csv: str | Path,
    root: str | Path,
    manifest_dir: str | Path,
    uncertain: UncertainPolicy = "ignore",
    blank: BlankPolicy = "zeros",
) -> pd.DataFrame:
    """CheXpert table -> manifest table (paths as written relative to `manifest_dir`)."""
    if uncertain not in ("ignore", "zeros", "ones"):
        raise EmbedxError(f"--uncertain must be ignore, zeros or ones, not {uncertain!r}")
    if blank not in ("zeros", "missing"):
        raise EmbedxError(f"--blank must be zeros or missing, not {blank!r}")
    csv, root, base = Path(csv), Path(root), Path(manifest_dir).resolve()
    raw = _read_csv(csv, CHEXPERT_REQUIRED)
    findings = [c for c in CHEXPERT_FINDINGS if c in raw.columns]
    if not findings:
        raise ManifestError(
            f"{csv}: none of the 14 CheXpert finding columns ({', '.join(CHEXPERT_FINDINGS)})"
        )
    problems: list[str] = []
    paths, subjects = [], []
    for row, value in enumerate(raw["Path"]):
        match = _PATIENT.search(value) if isinstance(value, str) else None
        if not isinstance(value, str) or not value.strip():
            problems.append(f"line {row + 2}, column 'Path': empty")
        elif match is None:
            problems.append(f"line {row + 2}, column 'Path': no patientNNNNN folder in {value!r}")
        paths.append(_resolve_chexpert(root, value) if isinstance(value, str) else "")
        subjects.append(match.group(1) if match else "")
    ages = _numbers(csv, "Age", raw["Age"], problems)
    codes = {f: _numbers(csv, f, raw[f], problems) for f in findings}
    for f, values in codes.items():
        bad = values.notna() & ~values.isin([1.0, 0.0, -1.0])
        for row in np.flatnonzero(bad.to_numpy()):
            problems.append(f"line {row + 2}, column {f!r}: {raw[f].iloc[row]!r} is not 1, 0, -1 or blank")
    _raise_rows(csv, problems)

    table = pd.DataFrame({"path": [_as_written(p, base) for p in paths], "subject_id": subjects})
    sex = raw["Sex"].str.strip().str.lower().map({"female": "F", "male": "M", "f": "F", "m": "M"})
    table["sex"] = sex  # 'Unknown' and blanks stay missing
    table["age"] = ages
    lateral = raw["Frontal/Lateral"].str.strip().str.lower().eq("lateral")
    appa = (
        raw["AP/PA"].str.strip().str.upper().map({"AP": "AP", "PA": "PA", "LL": "lateral", "RL": "lateral"})
    )
    table["view"] = np.where(lateral, "lateral", appa.astype(object))
    table["view"] = table["view"].where(table["view"].notna(), None)
    for f, values in codes.items():
        v = values.copy()
        if blank == "zeros":
            v[values.isna()] = 0.0
        v[values == -1] = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
        table[snake(f)] = v.astype("Int64")  # 0 / 1, missing stays missing (written as an empty cell)
    zero_age = int((table["age"] == 0).sum())
    if zero_age:
        log.warning(
            "%s: %d rows have Age 0 (kept as recorded; CheXpert uses 0 where the age is unknown)",
            csv,
            zero_age,
        )
    return table


def _resolve_chexpert(root: Path, value: str) -> Path:
    """`root / Path`, also when root is the 'CheXpert-v1.0-small' folder that Path itself starts with."""
    relative = Path(value.strip())
    parts = relative.parts
    if parts and parts[0] == root.name and not (root / relative).exists():
        return root.parent / relative
    return root / relative


def _table_schema(table: pd.DataFrame, view_kind: str) -> dict:
    """Sex, age and view as published; every other column is a binary clinical finding."""
    from embedx.data.schema import AttributeSpec

    schema = {
        "sex": AttributeSpec("sex", "binary", "demographic"),
        "age": AttributeSpec("age", "continuous", "demographic"),
        "view": AttributeSpec("view", view_kind, "acquisition"),
    }
    for column in table.columns:
        if column not in schema and column not in ("path", "subject_id"):
            schema[column] = AttributeSpec(column, "binary", "clinical")
    return schema


def chexpert_schema(table: pd.DataFrame) -> dict:
    return _table_schema(table, "categorical")  # AP / PA / lateral


def nih_table(csv: str | Path, root: str | Path, manifest_dir: str | Path) -> pd.DataFrame:
    """NIH ChestX-ray14 `Data_Entry_2017.csv` -> manifest table; one 0/1 column per finding label."""
    csv, root, base = Path(csv), Path(root), Path(manifest_dir).resolve()
    raw = _read_csv(csv, NIH_REQUIRED)
    problems: list[str] = []
    names = raw["Image Index"].fillna("").str.strip()
    for row in np.flatnonzero(names.eq("").to_numpy()):
        problems.append(f"line {row + 2}, column 'Image Index': empty")
    patients = raw["Patient ID"].fillna("").str.strip()
    for row in np.flatnonzero(patients.eq("").to_numpy()):
        problems.append(f"line {row + 2}, column 'Patient ID': empty")
    _raise_rows(csv, problems)

    located = _index_images(root, set(names))
    table = pd.DataFrame(
        {
            "path": [_as_written(located.get(n, root / n), base) for n in names],
            "subject_id": ["nih-" + p.lstrip("0").rjust(5, "0") for p in patients],
        }
    )
    missing = sum(1 for n in names if n not in located)
    if missing:
        log.warning(
            "%d of %d images of %s were not found under %s (kept; `embedx data check` lists them)",
            missing,
            len(names),
            csv.name,
            root,
        )
    table["sex"] = raw["Patient Gender"].str.strip().str.upper().map({"M": "M", "F": "F"})
    ages = raw["Patient Age"].map(parse_age)
    implausible = int((ages > 120).sum())
    if implausible:
        log.warning(
            "%s: %d ages above 120 years set missing (known data-entry errors)", csv.name, implausible
        )
    table["age"] = ages.where(ages <= 120)
    table["view"] = raw["View Position"].str.strip().str.upper().map({"AP": "AP", "PA": "PA"})
    labels = raw["Finding Labels"].fillna("").map(lambda s: {t.strip() for t in s.split("|") if t.strip()})
    all_labels = sorted(set().union(*labels)) if len(labels) else []
    for label in all_labels:
        table[snake(label)] = labels.map(lambda s, lab=label: int(lab in s))
    return table


def _index_images(root: Path, wanted: set[str]) -> dict[str, Path]:
    """Where each wanted file name lies under root: direct children first, else one walk of the tree."""
    found = {n: root / n for n in wanted if (root / n).is_file()}
    if len(found) < len(wanted) and root.is_dir():
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in files:
                if name in wanted and name not in found:
                    found[name] = Path(folder) / name
    return found


def nih_schema(table: pd.DataFrame) -> dict:
    return _table_schema(table, "binary")  # AP / PA only


def write_chexpert(
    csv: str | Path,
    root: str | Path,
    out: str | Path,
    uncertain: UncertainPolicy = "ignore",
    blank: BlankPolicy = "zeros",
) -> pd.DataFrame:
    from embedx.data.manifest import write_manifest

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = chexpert_table(csv, root, out.parent, uncertain=uncertain, blank=blank)
    write_manifest(table, out, chexpert_schema(table))
    return table


def write_nih(csv: str | Path, root: str | Path, out: str | Path) -> pd.DataFrame:
    from embedx.data.manifest import write_manifest

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = nih_table(csv, root, out.parent)
    write_manifest(table, out, nih_schema(table))
    return table
