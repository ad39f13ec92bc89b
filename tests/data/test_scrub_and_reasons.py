"""Failure reasons that go into shared files: the path is scrubbed without mangling the words around it
(review item 8), and a damaged DICOM header is not reported as a pixel-less object (review item 11)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import BasicTextSRStorage

from embedx.data.images import read_image
from embedx.errors import ImageReadError
from embedx.privacy import PATH_PLACEHOLDER, scrub_path

# ---------------------------------------------------------------- scrub_path

PYDICOM_TRUNCATED = (
    "corrupt or truncated pixel data (ValueError: The number of bytes of pixel data is less than expected "
    "(6000 vs 25088 bytes) - the dataset may be corrupted, have an invalid group 0028 element value, or "
    "the transfer syntax may be incorrect)"
)


@pytest.mark.parametrize("folders", ["data/images", "trunc/data", "export/Data/pixel"])
def test_words_that_are_also_folder_names_survive(tmp_path: Path, folders: str) -> None:
    path = tmp_path / folders / "cut.dcm"
    text = f"{path}: {PYDICOM_TRUNCATED}"
    assert scrub_path(text, path) == f"{PATH_PLACEHOLDER}: {PYDICOM_TRUNCATED}"


def test_every_form_of_a_patient_named_path_is_removed(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "DOE^JOHN_4400100"
    folder.mkdir(parents=True)
    path = folder / "IMG0001.dcm"
    path.write_bytes(b"x")
    relative = Path("data") / "DOE^JOHN_4400100" / "IMG0001.dcm"
    text = (
        f"cannot read {path} ({relative}); resolved {path.resolve()}; sub-path DOE^JOHN_4400100/IMG0001.dcm, "
        f"windows data\\DOE^JOHN_4400100\\IMG0001.dcm, file IMG0001.dcm, stem 'IMG0001', folder "
        f"'DOE^JOHN_4400100'. The data in pixel data is fine."
    )
    for given in (path, str(path), tmp_path / "data" / ".." / "data" / "DOE^JOHN_4400100" / "IMG0001.dcm"):
        out = scrub_path(text, given)
        for phi in ("DOE", "JOHN", "4400100", "IMG0001"):
            assert phi not in out, out
        assert out.endswith("The data in pixel data is fine."), out
        assert "cannot read <file> (<file>)" in out and "file <file>, stem '<file>'" in out


def test_non_ascii_and_lowercase_patient_names_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "nifti" / "MÜLLER_JÜRGEN_4401432_T1.nii.gz"
    stem = "MÜLLER_JÜRGEN_4401432_T1"
    text = f'Cannot work out file type of "{path}"; see {stem} and {stem}.nii.gz.'
    assert scrub_path(text, path) == 'Cannot work out file type of "<file>"; see <file> and <file>.'
    png = tmp_path / "png" / "4400100_doe_john.png"
    assert scrub_path("broken 4400100_doe_john.png in png", png) == "broken <file> in png"


def test_a_name_inside_a_longer_word_or_file_name_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "cases" / "scan_01" / "img.dcm"
    assert scrub_path("scan_012 and img.dcm.bak and scan_01", path) == "scan_012 and img.dcm.bak and <file>"


# ---------------------------------------------------------------- damaged DICOM headers

NAME = b"DOE^JOHN"


def _dicom_with_name(tmp_path: Path, dicom_writer) -> bytes:
    path = dicom_writer(tmp_path / "src.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    ds = pydicom.dcmread(path)
    ds.PatientName = NAME.decode()
    ds.PatientID = "44001009"  # 8 bytes: no padding, so a cut 20 bytes after the name falls inside it
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _damaged(src: bytes) -> dict[str, bytes]:
    """The three corruptions of /tmp/review-e/fuzz_dicom_errors.py."""
    pos = src.find(NAME)
    assert pos > 0
    huge = bytearray(src)
    huge[pos - 2 : pos] = (0xFFF0).to_bytes(2, "little")  # PatientName's length field
    bad_vr = bytearray(src)
    bad_vr[pos - 4 : pos - 2] = b"\x01\x02"  # PatientName's VR
    return {"pn_len_huge": bytes(huge), "cut_after_name": src[: pos + 20], "pn_bad_vr": bytes(bad_vr)}


def _reason(path: Path) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    return info.value.reason


@pytest.mark.parametrize("case", ["pn_len_huge", "cut_after_name", "pn_bad_vr"])
def test_a_damaged_header_is_named_as_such(tmp_path: Path, dicom_writer, case: str) -> None:
    path = tmp_path / f"{case}.dcm"
    path.write_bytes(_damaged(_dicom_with_name(tmp_path, dicom_writer))[case])
    reason = _reason(path)
    assert reason.startswith("damaged DICOM header"), reason
    assert "not an image object" not in reason
    assert "DOE" not in reason and "JOHN" not in reason and "4400100" not in reason


def test_a_pixel_less_object_and_a_stripped_image_keep_their_own_reasons(
    tmp_path: Path, dicom_writer
) -> None:
    report = dicom_writer(tmp_path / "sr.dcm", None, modality="SR")
    ds = pydicom.dcmread(report)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.save_as(report)
    assert _reason(report) == "DICOM file has no pixel data (Modality SR; not an image object)"

    stripped = tmp_path / "stripped.dcm"
    ds = pydicom.dcmread(io.BytesIO(_dicom_with_name(tmp_path, dicom_writer)))
    ds.Modality = "DOE^JOHN"
    del ds.PixelData
    ds.save_as(stripped)
    reason = _reason(stripped)
    assert reason.startswith("DICOM file has no pixel data although its header describes an image"), reason
    assert "not an image object" not in reason
    assert "DOE" not in reason
