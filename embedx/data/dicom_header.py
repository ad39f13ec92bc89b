"""Acquisition and demographic attributes from DICOM headers, read through an allow-list so no PHI leaves.

Only the tags in `ATTRIBUTE_TAGS` are ever read into the manifest. PatientID is read for one purpose — a
salted SHA-256 pseudonym (`subject_id`) — and is never returned, logged or put in an error message. Names,
birth dates, accession numbers, dates/times, addresses and free text are never touched.

InstitutionName is kept because it is usually the only "site" a cohort has; note that it names a hospital,
so treat a manifest that carries it as institution-identifying (not patient-identifying) data.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedx.data.images import damaged_header_reason, no_pixels_reason
from embedx.errors import EmbedxError

log = logging.getLogger(__name__)

# DICOM keyword -> (manifest column, kind, role). kind None: inferred from the values.
ATTRIBUTE_TAGS: dict[str, tuple[str, str | None, str]] = {
    "Manufacturer": ("manufacturer", None, "acquisition"),
    "ManufacturerModelName": ("manufacturer_model", None, "acquisition"),
    "InstitutionName": ("institution", None, "acquisition"),
    "StationName": ("station", None, "acquisition"),
    "Modality": ("modality", None, "acquisition"),
    "KVP": ("kvp", "continuous", "acquisition"),
    "ConvolutionKernel": ("convolution_kernel", None, "acquisition"),
    "SliceThickness": ("slice_thickness", "continuous", "acquisition"),
    "PixelSpacing": ("pixel_spacing", "continuous", "acquisition"),
    "ViewPosition": ("view_position", None, "acquisition"),
    "BodyPartExamined": ("body_part", None, "acquisition"),
    "PatientSex": ("sex", None, "demographic"),
    "PatientAge": ("age", "continuous", "demographic"),
}
NUMERIC_KEYWORDS = {"KVP", "SliceThickness", "PixelSpacing"}

# Never written anywhere (documented, and checked by the tests); the reader does not touch them at all.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionAddress",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "DeviceSerialNumber",
    "RequestingPhysician",
    "InstitutionalDepartmentName",
)

_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}
SALT_ENV = "EMBEDX_SALT"
PHI_IN_PATH = "_phi_in_path"  # flag key in read_header's result; never written


def parse_age(text: Any) -> float:
    """DICOM AS ('045Y', '006M', '010W', '003D', or a bare number) -> years; NaN when unreadable."""
    if text is None:
        return math.nan
    if isinstance(text, (int, float)):
        return float(text)
    match = _AGE.match(str(text))
    if not match:
        return math.nan
    return round(int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()], 4)


def subject_pseudonym(patient_id: str, salt: str) -> str:
    """Salted SHA-256 of the PatientID: stable for one salt, not reversible without it."""
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode()).hexdigest()
    return f"subj-{digest[:16]}"


def resolve_salt(salt: str | None, salt_file: Path) -> str:
    """`--salt`, else EMBEDX_SALT, else the salt file beside the manifest, else a new random one saved there.

    A new salt is written to `salt_file` with a warning: the same salt is needed to get the same subject ids
    on a later scan, and anyone holding it and a PatientID can check whether that patient is in the cohort.
    """
    if salt:
        return salt
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV]
    if salt_file.exists():
        stored = salt_file.read_text(encoding="utf-8").strip()
        if stored:
            log.info("using the subject-id salt stored in %s", salt_file)
            return stored
    new = secrets.token_hex(16)
    salt_file.parent.mkdir(parents=True, exist_ok=True)
    salt_file.write_text(new + "\n", encoding="utf-8")
    with contextlib.suppress(OSError):  # filesystems without permissions
        salt_file.chmod(0o600)
    log.warning(
        "no --salt or %s given: wrote a random salt to %s. Keep it (privately) to get the same "
        "subject ids when re-scanning; without it subject ids cannot be reproduced.",
        SALT_ENV,
        salt_file,
    )
    return new


def _clean(keyword: str, value: Any) -> Any:
    """Header value -> plain str/float; multi-valued strings joined with '/', numbers take the first value."""
    if value is None:
        return None
    if keyword in NUMERIC_KEYWORDS:
        first = value[0] if _is_multi(value) else value
        try:
            number = float(first)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None
    if keyword == "PatientAge":
        age = parse_age(value)
        return None if math.isnan(age) else age
    text = "/".join(str(v).strip() for v in value) if _is_multi(value) else str(value).strip()
    return text or None


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


class DicomHeaderError(EmbedxError):
    """A DICOM file whose header cannot be used; the message names the file and a reason, never a value."""


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """No warnings or pydicom log records while reading a header: some of them quote element values."""
    pyd_log = logging.getLogger("pydicom")
    level = pyd_log.level
    pyd_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pyd_log.setLevel(level)


def read_header(path: Path, salt: str) -> dict[str, Any]:
    """Allow-listed attributes of one DICOM file plus its `subject_id` pseudonym.

    Raises DicomHeaderError (file path + generic reason) when the file is not readable DICOM, its header is
    damaged, it has no pixel data, or its pixel data is truncated (the damaged-header and no-pixel reasons
    are `images.read_dicom`'s, so scan, check and training name one file's problem alike). Warnings and log
    output of pydicom are silenced while reading, since some of them quote element values.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    with quiet_pydicom():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            # Old files may lack the 128-byte preamble and 'DICM' marker (as the field's viewers accept):
            # read them as a bare dataset, and keep them only when they carry an image header.
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:
                ds = None
            if ds is None or "Rows" not in ds:
                raise DicomHeaderError(
                    f"{path}: not a DICOM file (no 'DICM' marker and no image header)"
                ) from None
        except Exception as err:  # any parse failure: report the type only, messages may quote values
            raise DicomHeaderError(f"{path}: not a readable DICOM file ({type(err).__name__})") from None
        if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10":
            raise DicomHeaderError(f"{path}: a DICOMDIR index, not an image")
        # the reasons training and encode give (`images.read_dicom`), so one file has one reason
        damaged = damaged_header_reason(ds)
        if damaged is not None:
            raise DicomHeaderError(f"{path}: {damaged}")
        little = getattr(ds, "original_encoding", (None, True))[1]
        if not _has_pixel_data(path, little_endian=little is not False):
            raise DicomHeaderError(f"{path}: {no_pixels_reason(ds)}")
        out: dict[str, Any] = {}
        for keyword, (column, _, _) in ATTRIBUTE_TAGS.items():
            try:
                out[column] = _clean(keyword, ds.get(keyword))
            except Exception:  # a malformed element: leave the attribute missing
                out[column] = None
        try:
            patient_id = str(ds.get("PatientID") or "").strip()
            name_parts = [
                p for p in re.split(r"[\^\s,]+", str(ds.get("PatientName") or "")) if len(p) >= 3
            ]
        except Exception:
            patient_id, name_parts = "", []
    # Without a PatientID the file is its own subject (hash of its path, so still stable and salted).
    out["subject_id"] = subject_pseudonym(patient_id if patient_id else f"file:{path}", salt)
    # Archives often name folders after the patient; the manifest's path column would then carry it. Only a
    # flag leaves this function (the caller warns with a count), never the value.
    lowered = str(path).lower()
    out[PHI_IN_PATH] = bool(
        (len(patient_id) >= 3 and patient_id.lower() in lowered)
        or any(p.lower() in lowered for p in name_parts)
    )
    return out


# (7FE0,0010) Pixel Data, (7FE0,0008) Float, (7FE0,0009) Double Float — as bytes in each byte order.
_PIXEL_TAGS = {
    "little": (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00"),
    "big": (b"\x7f\xe0\x00\x10", b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09"),
}


def _has_pixel_data(path: Path, little_endian: bool = True) -> bool:
    """Find the pixel-data element without decoding it: False if absent (the caller says why, from the
    header), raise if it is cut short or empty."""
    import mmap

    size = path.stat().st_size
    order = "little" if little_endian else "big"
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        hits = [p for p in (mm.find(tag) for tag in _PIXEL_TAGS[order]) if p >= 0]
        if not hits:
            return False
        pos = min(hits)
        vr = mm[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"OD", b"UN"):
            length = int.from_bytes(mm[pos + 8 : pos + 12], order)
            start = pos + 12
        else:  # implicit VR
            length = int.from_bytes(mm[pos + 4 : pos + 8], order)
            start = pos + 8
    if length != 0xFFFFFFFF and start + length > size:
        raise DicomHeaderError(f"{path}: pixel data truncated ({size - start} of {length} bytes present)")
    if length == 0:
        raise DicomHeaderError(f"{path}: empty pixel data")
    return True
