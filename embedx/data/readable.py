"""Can the manifest's image files be read? The check behind `embedx data check` (and `--read`).

Before this, `data check` only asked whether each file existed, so a truncated DICOM, a zero-byte `.dcm` or
a text file named `.dcm` passed, and the first sign was a warning deep into training. Two levels:

* `header` (the default of `data check`): the file is not empty, and what its name or first bytes say it is
  opens: a DICOM header parses and holds a pixel-data element of the length it declares (the same check,
  and about the same cost, as `data scan`: `dicom_header.read_header`), a NIfTI header loads, a
  PNG/JPEG/TIFF opens and verifies its chunks. Nothing is decoded, so it costs a fraction of `--read`;
  `--no-files` skips it on a share too slow even for that.
* `decode` (`data check --read`): every image is decoded in full with the reader training uses
  (`images.read_image`), which also finds damaged pixel data behind a sound header.

Reasons name a fixed phrase and exception types only, never an exception's message: messages of pydicom
and nibabel can quote header values (a patient name typed into a coded field), and these reasons are
printed next to the row. pydicom's warnings and log records are silenced while reading, for the same
reason.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from embedx.data.dicom_header import quiet_pydicom
from embedx.data.images import image_kind
from embedx.data.manifest_read import where
from embedx.errors import EmbedxError, ImageReadError
from embedx.progress import progress_bar

ReadCheck = Literal["off", "header", "decode"]

# The fixed part of an `ImageReadError.reason`: what comes before its first "(" or ":" (the detail there
# may quote a decoder's message).
_PHRASE = re.compile(r"\s*[(:]")


def header_problem(path: Path) -> str | None:
    """Why `path` cannot be an image, from its size and header alone; None when it looks readable."""
    try:
        if path.is_dir():
            return "is a folder, not an image file"
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        kind = image_kind(path)
    except (OSError, ImageReadError) as err:
        return f"cannot open ({type(err.__cause__ or err).__name__})"
    try:
        with quiet_pydicom():
            if kind == "dicom":
                from embedx.data.dicom_header import DicomHeaderError, read_header

                try:
                    read_header(path, salt="")  # raises with a generic reason; the values are discarded
                except DicomHeaderError as err:
                    return str(err).removeprefix(f"{path}: ")
            elif kind == "nifti":
                import nibabel as nib

                if len(nib.load(path).shape) < 2:
                    return "not a readable NIfTI file (fewer than 2 dimensions)"
            else:
                from PIL import Image

                with Image.open(path) as image:
                    image.verify()
    except Exception as err:  # any parser error: its type only, the message may quote a value
        name = {"dicom": "DICOM", "nifti": "NIfTI"}.get(kind, "image")
        return f"not a readable {name} file ({type(err).__name__})"
    return None


def generic_reason(err: ImageReadError) -> str:
    """The fixed phrase of a read error plus the type of the exception behind it, never its message."""
    phrase = _PHRASE.split(err.reason, maxsplit=1)[0].strip() or "unreadable"
    cause = err.__cause__
    if cause is None or isinstance(cause, ImageReadError) or type(cause).__name__ == phrase:
        return phrase
    return f"{phrase} ({type(cause).__name__})"


def decode_problem(path: Path) -> str | None:
    """Why `path` cannot be decoded in full (header check first, for its clearer reasons); None if it can."""
    from embedx.data.images import read_image

    problem = header_problem(path)
    if problem is not None:
        return problem
    try:
        with quiet_pydicom():
            read_image(path)
    except ImageReadError as err:
        return generic_reason(err)
    except Exception as err:  # not expected (read_image wraps its errors), but never a crash of the check
        return f"cannot be decoded ({type(err).__name__})"
    return None


def unreadable_files(
    paths: pd.Series, root: Path, lines: Sequence[int] | None, level: ReadCheck
) -> list[str]:
    """One line per unreadable file among `paths` (as written, indexed by table position; relative ones
    resolved against `root`): 'row N (line L): path: reason', rows named as every other `data check`
    problem. Missing files are skipped (the existence check lists them)."""
    if level == "off":
        return []
    if level not in ("header", "decode"):
        raise EmbedxError(f"unknown image check {level!r}: off, header or decode")
    check = decode_problem if level == "decode" else header_problem
    label = "data check: decoding images" if level == "decode" else "data check: image headers"
    items: list[str] = []
    with progress_bar(len(paths), label, unit="img") as advance:
        for position, value in paths.items():
            advance()
            if pd.isna(value) or not str(value).strip():
                continue
            written = Path(str(value))
            path = written if written.is_absolute() else root / written
            if not path.exists():
                continue
            problem = check(path)
            if problem is not None:
                items.append(f"{where(int(position), lines)}: {value}: {problem}")
    return items
