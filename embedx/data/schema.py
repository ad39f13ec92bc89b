"""Attribute schema: what each manifest column *is* (kind) and what it is *about* (role).

Probes, fairness and the report treat a column by its kind (classifier vs regressor, balanced accuracy vs
MAE) and group it by role (acquisition signatures vs demographics vs clinical labels), so a wrong guess
changes the analysis. That is why declared kinds/roles always win, and every inference is logged so the
user sees it and can pin it in the sidecar YAML.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from embedx.data.manifest_values import to_numbers
from embedx.errors import ManifestError

log = logging.getLogger(__name__)

KINDS = ("categorical", "binary", "continuous")
ROLES = ("acquisition", "demographic", "clinical")
# path-like columns are file references, not attributes: never probed, never copied into a store
RESERVED_COLUMNS = ("path", "subject_id", "mask", "lesion_mask")

# A numeric column needs at least this many distinct values to be read as continuous unless it holds
# non-integer values; small integer codes (grade 0-4, site 1-6) are categories far more often than not.
CONTINUOUS_MIN_DISTINCT = 10

_ACQUISITION_WORDS = {
    "site",
    "hospital",
    "institution",
    "center",
    "centre",
    "manufacturer",
    "vendor",
    "scanner",
    "model",
    "station",
    "kvp",
    "kv",
    "mas",
    "exposure",
    "kernel",
    "convolution",
    "view",
    "viewposition",
    "modality",
    "protocol",
    "sequence",
    "field",
    "fieldstrength",
    "tesla",
    "thickness",
    "slicethickness",
    "spacing",
    "pixelspacing",
    "resolution",
    "device",
    "machine",
    "software",
    "bodypart",
    "bodypartexamined",
    "portable",
    "orientation",
    "projection",
    "frontal",
    "lateral",
    "ap",
    "pa",
    "session",
    "batch",
    "source",
    "dataset",
    "contrast",
    "reconstruction",
    "recon",
    "detector",
    "tr",
    "te",
    "echo",
    "repetition",
    "magnetic",
    "manufacturermodelname",
    "institutionname",
    "stationname",
    "convolutionkernel",
}
_DEMOGRAPHIC_WORDS = {
    "sex",
    "gender",
    "age",
    "race",
    "ethnicity",
    "ethnic",
    "weight",
    "height",
    "bmi",
    "insurance",
    "language",
    "income",
    "education",
    "patientsex",
    "patientage",
    "ancestry",
    "skin",
}


def missing_code_problem(code: object) -> str | None:
    """Why `code` cannot be a missing-value code, or None. Only text and finite numbers: an empty cell is
    missing already, and a YAML boolean is nearly always an unquoted word (`no`, `off`) meant as text."""
    if isinstance(code, bool):
        return f"{code!r} is a YAML boolean; write the text in quotes (e.g. 'no') if that is the code"
    if code is None or (isinstance(code, str) and not code.strip()):
        return "an empty value is missing already; list only the codes that stand for missing"
    if isinstance(code, (int, float)):
        return None if math.isfinite(code) else f"{code!r} is not a finite number"
    if isinstance(code, str):
        return None
    return f"{code!r} is not a single value (text or a number)"


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute column: its kind, its role, and whether these were inferred rather than declared.

    `missing` holds the codes that stand for a missing value in this column (age -1 or 999, sex U): the
    manifest loader turns such cells missing before anything reads them as values (`missing_codes`).
    """

    name: str
    kind: str
    role: str
    inferred: bool = False
    missing: tuple[str | int | float, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.missing, (str, int, float)):  # tuple("unknown") would be seven codes
            raise ManifestError(f"attribute {self.name!r}: missing codes must be a sequence, e.g. (-1, 999)")
        object.__setattr__(self, "missing", tuple(self.missing))  # a list given in code stays hashable
        for code in self.missing:
            problem = missing_code_problem(code)
            if problem:
                raise ManifestError(f"attribute {self.name!r}: missing code {problem}")
        if self.kind not in KINDS:
            raise ManifestError(
                f"attribute {self.name!r}: unknown kind {self.kind!r} (one of {', '.join(KINDS)})"
            )
        if self.role not in ROLES:
            raise ManifestError(
                f"attribute {self.name!r}: unknown role {self.role!r} (one of {', '.join(ROLES)})"
            )


def _words(name: str) -> list[str]:
    """Split a column name into lower-case words: 'PatientAge' -> patient, age; 'scanner_model' -> ..."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def infer_role(name: str) -> str:
    """Guess the role from the column name; demographic words win over acquisition ones ('site_age')."""
    words = _words(name)
    joined = "".join(words)
    if any(w in _DEMOGRAPHIC_WORDS for w in words) or joined in _DEMOGRAPHIC_WORDS:
        return "demographic"
    if any(w in _ACQUISITION_WORDS for w in words) or joined in _ACQUISITION_WORDS:
        return "acquisition"
    return "clinical"


# A column whose values are at least this share numbers is numeric with a few text values ("unknown",
# "89+", "n/a"): it is read as continuous with those values missing, and the user is told which they were.
MOSTLY_NUMERIC = 0.8


def text_among_numbers(values: pd.Series) -> dict[str, int] | None:
    """The text values of a mostly numeric column with their counts; None when it is not mostly numeric.

    "Mostly numeric" means at least `MOSTLY_NUMERIC` of the present values are numbers and those numbers
    alone would read as continuous (non-integer, or many distinct values).
    """
    present = values.dropna()
    if present.empty or pd.api.types.is_numeric_dtype(present):
        return None
    numeric = to_numbers(present)
    share = float(numeric.notna().mean())
    if share < MOSTLY_NUMERIC or share == 1.0:
        return None
    numbers = numeric.dropna()
    non_integer = bool(np.any(np.abs(numbers - np.round(numbers)) > 1e-9))
    if not (non_integer or numbers.nunique() >= CONTINUOUS_MIN_DISTINCT):
        return None
    text = present[numeric.isna()].astype(str).value_counts()
    return {str(k): int(v) for k, v in text.items()}


def infer_kind(values: pd.Series) -> str:
    """Guess the kind from the non-missing values.

    Two distinct values -> binary; numeric with non-integer values or many distinct values -> continuous
    (also when a few values are text, see `text_among_numbers`); everything else (strings, few integer
    codes) -> categorical.
    """
    if text_among_numbers(values) is not None:
        return "continuous"
    present = values.dropna()
    distinct = present.unique()
    if len(distinct) > 2 and not pd.api.types.is_numeric_dtype(present):
        # zero-padded numbers kept as text ("011", "045"): codes (40 site codes are no quantity), unless
        # fractional; a padded quantity is declared continuous in the sidecar
        numbers = to_numbers(present)
        if numbers.notna().all():
            as_float = numbers.to_numpy(dtype=float)
            if bool(np.any(np.abs(as_float - np.round(as_float)) > 1e-9)):
                return "continuous"
    if len(distinct) == 2:
        return "binary"
    if pd.api.types.is_bool_dtype(present):
        return "binary"
    if pd.api.types.is_numeric_dtype(present) and len(distinct) > 2:
        as_float = present.to_numpy(dtype=float)
        non_integer = bool(np.any(np.abs(as_float - np.round(as_float)) > 1e-9))
        if non_integer or len(distinct) >= CONTINUOUS_MIN_DISTINCT:
            return "continuous"
    return "categorical"


def infer_spec(name: str, values: pd.Series) -> AttributeSpec:
    return AttributeSpec(name=name, kind=infer_kind(values), role=infer_role(name), inferred=True)


def resolve_schema(
    table: pd.DataFrame, declared: dict[str, AttributeSpec] | None = None
) -> dict[str, AttributeSpec]:
    """One spec per attribute column: declared ones as given, the rest inferred (and logged)."""
    declared = declared or {}
    schema: dict[str, AttributeSpec] = {}
    for column in table.columns:
        if column in RESERVED_COLUMNS:
            continue
        if column in declared:
            schema[column] = declared[column]
            continue
        spec = infer_spec(column, table[column])
        log.debug(
            "attribute %r inferred as %s / %s (declare it in the sidecar YAML to pin it)",
            column,
            spec.kind,
            spec.role,
        )
        schema[column] = spec
    unused = sorted(set(declared) - set(schema) - set(RESERVED_COLUMNS))
    if unused:
        log.warning("schema declares attributes that the manifest does not have: %s", ", ".join(unused))
    return schema


def _parse_missing(name: str, value: Any, problems: list[str]) -> tuple[Any, ...] | None:
    """The optional `missing: [codes]` field as a tuple (repeats dropped); None after adding a problem."""
    if value is None:
        return ()
    field = f"attribute {name!r} field 'missing'"
    if not isinstance(value, list):
        problems.append(f"{field}: expected a list of values, e.g. [-1, 999] or [U, unknown], got {value!r}")
        return None
    codes: list[Any] = []
    for code in value:
        problem = missing_code_problem(code)
        if problem:
            problems.append(f"{field}: {problem}")
            return None
        if not any(code == c and isinstance(code, str) == isinstance(c, str) for c in codes):  # -1 = -1.0
            codes.append(code)
    return tuple(codes)


def parse_schema(data: Any, source: str) -> dict[str, AttributeSpec]:
    """Validate the YAML structure `{attributes: {name: {kind, role, missing}}}`, naming the attribute and
    field, so that one message lists every mistake in the file."""
    if data is None:
        return {}
    if not isinstance(data, dict) or "attributes" not in data:
        raise ManifestError(f"{source}: expected a mapping with an 'attributes' key")
    unknown_top = sorted(set(data) - {"attributes"})
    if unknown_top:
        raise ManifestError(
            f"{source}: unknown top-level key(s) {', '.join(unknown_top)} (only 'attributes')"
        )
    attributes = data["attributes"] or {}
    if not isinstance(attributes, dict):
        raise ManifestError(f"{source}: 'attributes' must be a mapping of column name -> {{kind, role}}")
    problems: list[str] = []
    schema: dict[str, AttributeSpec] = {}
    for name, entry in attributes.items():
        name = str(name)
        if name in RESERVED_COLUMNS:
            problems.append(f"attribute {name!r}: '{name}' is a reserved column, not an attribute")
            continue
        if not isinstance(entry, dict):
            problems.append(f"attribute {name!r}: expected {{kind: ..., role: ...}}, got {entry!r}")
            continue
        extra = sorted(set(entry) - {"kind", "role", "missing"})
        if extra:
            problems.append(
                f"attribute {name!r}: unknown field(s) {', '.join(map(str, extra))} (kind, role, missing)"
            )
        kind, role = entry.get("kind"), entry.get("role")
        missing = _parse_missing(name, entry.get("missing"), problems)
        bad = missing is None
        if kind not in KINDS:
            problems.append(f"attribute {name!r} field 'kind': {kind!r} is not one of {', '.join(KINDS)}")
            bad = True
        if role not in ROLES:
            problems.append(f"attribute {name!r} field 'role': {role!r} is not one of {', '.join(ROLES)}")
            bad = True
        if not bad and not extra:
            schema[name] = AttributeSpec(name=name, kind=kind, role=role, inferred=False, missing=missing)
    if problems:
        raise ManifestError(f"{source}: invalid schema:\n  " + "\n  ".join(problems))
    return schema


def read_schema(path: str | Path) -> dict[str, AttributeSpec]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ManifestError(f"schema file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ManifestError(f"schema file {path} is not valid YAML: {err}") from err
    return parse_schema(data, str(path))


def write_schema(schema: dict[str, AttributeSpec], path: str | Path) -> Path:
    """Write every spec as declared, so that a reload reproduces this schema exactly."""
    path = Path(path)
    attributes: dict[str, dict[str, Any]] = {}
    for name, spec in schema.items():
        entry: dict[str, Any] = {"kind": spec.kind, "role": spec.role}
        if spec.missing:  # only when declared: a sidecar without codes stays as it always was
            entry["missing"] = list(spec.missing)
        attributes[name] = entry
    data = {"attributes": attributes}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def sidecar_path(manifest_path: str | Path) -> Path:
    """`manifest.csv` -> `manifest.yaml` in the same folder."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.stem + ".yaml")
