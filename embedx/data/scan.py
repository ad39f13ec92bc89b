"""`embedx data scan`: a folder of DICOM / NIfTI / PNG / JPEG / TIFF files -> a PHI-free manifest.

DICOM files are recognised by content (the 'DICM' marker) or a .dcm/.dicom suffix, since archives often
have no suffix at all. Only allow-listed header fields are kept (see `dicom_header`). Files that are not
images are counted and skipped; image files that cannot be used (unreadable, truncated, no pixel data) are
skipped and listed by path, so one bad file in ten thousand never stops a scan.

Subjects: DICOM rows get a salted hash of PatientID. Other formats have no patient field; a BIDS-style
`sub-<label>` folder or file name is used when present, else every file is its own subject (a warning
says so, since subject-aware splits then cannot group repeat images). A BIDS label is often the hospital's
patient ID, so it gets the same salted hash as a PatientID (`sub-4400100` and PatientID 4400100 are one
subject): the manifest never carries it raw, only its path column does, as for any file.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from embedx.data.dicom_header import (
    ATTRIBUTE_TAGS,
    PHI_IN_PATH,
    DicomHeaderError,
    read_header,
    resolve_salt,
    subject_pseudonym,
)
from embedx.errors import EmbedxError
from embedx.progress import progress_bar

log = logging.getLogger(__name__)

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
_BIDS_SUBJECT = re.compile(r"(?:^|[/_\\])sub-([A-Za-z0-9]+)")


@dataclass
class ScanResult:
    """What a scan found: the manifest table, what was skipped (path, reason) and how many non-images."""

    table: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)
    non_image: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    phi_in_paths: int = 0  # DICOM files whose path contains the PatientID or a PatientName part

    def summary(self) -> str:
        parts = [f"{len(self.table)} images"]
        parts += [f"{fmt}: {count}" for fmt, count in sorted(self.formats.items())]
        parts.append(f"{self.non_image} non-image files skipped")
        parts.append(f"{len(self.skipped)} unusable image files skipped")
        if self.phi_in_paths:
            parts.append(f"WARNING {self.phi_in_paths} paths contain a patient ID or name")
        lines = [", ".join(parts)]
        shown = self.skipped[:50]
        lines += [f"  skipped {path}: {reason}" for path, reason in shown]
        if len(self.skipped) > len(shown):
            lines.append(f"  ... and {len(self.skipped) - len(shown)} more")
        return "\n".join(lines)


def file_format(path: Path) -> str | None:
    """'dicom' | 'nifti' | 'raster' | None (not an image) from the name, then the DICOM marker."""
    name = path.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return "nifti"
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return "raster"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    return "dicom" if head[128:132] == b"DICM" else None


def _walk(folder: Path, exclude: set[Path]) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if not name.startswith(".") and path.resolve() not in exclude:
                files.append(path)
    return files


def _check_raster(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise EmbedxError(f"{path}: not a readable image ({type(err).__name__})") from None


def _check_nifti(path: Path) -> dict[str, Any]:
    """Header-only check of a NIfTI file; returns its voxel size (the only acquisition facts it carries —
    the free-text `descrip` field is never read, since it can hold anything)."""
    import nibabel as nib

    try:
        image = nib.load(path)
        if len(image.shape) < 2:
            raise ValueError("fewer than 2 dimensions")
        zooms = [float(z) for z in image.header.get_zooms()]
    except Exception as err:
        raise EmbedxError(f"{path}: not a readable NIfTI file ({type(err).__name__})") from None
    return {
        "pixel_spacing": round(zooms[0], 6),
        "slice_thickness": round(zooms[2], 6) if len(zooms) > 2 else None,
    }


def scan_folder(folder: str | Path, salt: str, exclude: set[Path] | None = None) -> ScanResult:
    """Walk `folder` and return one row per usable image; `path` holds absolute paths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EmbedxError(f"{folder}: not a folder")
    files = _walk(folder, {p.resolve() for p in (exclude or set())})
    rows: list[dict[str, Any]] = []
    result = ScanResult(table=pd.DataFrame())
    no_subject = 0
    phi_paths = 0
    with progress_bar(len(files), f"scan {folder.name or folder}", unit="file") as advance:
        for path in files:
            advance()
            fmt = file_format(path)
            if fmt is None:
                result.non_image += 1
                continue
            try:
                if fmt == "dicom":
                    row = read_header(path, salt)
                    phi_paths += int(row.pop(PHI_IN_PATH, False))
                else:
                    row = _check_nifti(path) if fmt == "nifti" else (_check_raster(path) or {})
                    label = _BIDS_SUBJECT.search(str(path.relative_to(folder)))
                    if label:  # the label may be an MRN: hashed like a DICOM PatientID, never written raw
                        row["subject_id"] = subject_pseudonym(label.group(1), salt)
                    else:
                        no_subject += 1
                        row["subject_id"] = subject_pseudonym(f"file:{path.relative_to(folder)}", salt)
            except (DicomHeaderError, EmbedxError) as err:
                result.skipped.append((str(path), str(err).removeprefix(f"{path}: ")))
                continue
            row["path"] = str(path)
            row["file_format"] = fmt
            rows.append(row)
            result.formats[fmt] = result.formats.get(fmt, 0) + 1
    if phi_paths:
        log.warning(
            "%d DICOM file paths contain their patient's ID or name (folder or file names): the manifest's "
            "path column carries them. Rename or re-export the files before sharing the manifest.",
            phi_paths,
        )
        result.phi_in_paths = phi_paths
    if no_subject:
        log.warning(
            "%d non-DICOM files have no subject (no sub-<label> in the path): each is its own subject",
            no_subject,
        )
    columns = ["path", "subject_id"] + [c for c, _, _ in ATTRIBUTE_TAGS.values()] + ["file_format"]
    table = pd.DataFrame(rows, columns=columns)
    # Drop attributes nobody has (e.g. KVP in an MR-only cohort) and the format when there is only one.
    keep = [c for c in table.columns if c in ("path", "subject_id") or table[c].notna().any()]
    if table["file_format"].nunique() <= 1 and "file_format" in keep:
        keep.remove("file_format")
    result.table = table[keep].reset_index(drop=True)
    return result


def scan_schema(table: pd.DataFrame) -> dict[str, Any]:
    """Declared kind/role per scan column; kinds the tag leaves open are inferred from the values."""
    from embedx.data.schema import AttributeSpec, infer_kind

    by_column = {column: (kind, role) for column, kind, role in ATTRIBUTE_TAGS.values()}
    by_column["file_format"] = (None, "acquisition")
    schema = {}
    for column in table.columns:
        if column not in by_column:
            continue
        kind, role = by_column[column]
        schema[column] = AttributeSpec(column, kind or infer_kind(table[column]), role)
    return schema


def scan_to_manifest(folder: str | Path, out: str | Path, salt: str | None = None) -> ScanResult:
    """Scan `folder` and write `out` (+ sidecar YAML). Paths are relative to the manifest's folder when the
    images lie under it, else absolute."""
    from embedx.data.manifest import write_manifest

    out = Path(out)
    salt_file = out.with_name(out.stem + ".salt")
    secret = resolve_salt(salt, salt_file)
    result = scan_folder(folder, secret, exclude={out, out.with_suffix(".yaml"), salt_file})
    if result.table.empty:
        raise EmbedxError(f"{folder}: no usable images found\n{result.summary()}")
    base = out.parent.resolve()
    paths = []
    for p in result.table["path"]:
        absolute = Path(p).resolve()
        paths.append(str(absolute.relative_to(base)) if absolute.is_relative_to(base) else str(absolute))
    result.table["path"] = paths
    write_manifest(result.table, out, scan_schema(result.table))
    return result
