"""`embedx data scan` and `embedx data check` give a damaged DICOM header the reason training and encode
give it (`images.no_pixels_reason`), instead of "no pixel data (not an image object)" or no problem at all;
and never quote a header value. Cases: /tmp/review-e/fuzz_dicom_errors.py (review items 11 and 2)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from embedx.data.images import read_image
from embedx.data.readable import header_problem
from embedx.data.scan import scan_folder
from embedx.errors import ImageReadError

NAME = "DOE^JOHN"
PHI = ("DOE", "JOHN", "44001009")


def _source(tmp_path: Path, dicom_writer) -> bytes:
    path = dicom_writer(tmp_path / "src.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    ds = pydicom.dcmread(path)
    path.unlink()
    ds.PatientName = NAME
    ds.PatientID = "44001009"  # 8 bytes: no padding, so a cut 20 bytes after the name falls inside it
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _damaged(src: bytes) -> dict[str, bytes]:
    pos = src.find(NAME.encode())
    huge = bytearray(src)
    huge[pos - 2 : pos] = (0xFFF0).to_bytes(2, "little")  # PatientName's length field
    bad_vr = bytearray(src)
    bad_vr[pos - 4 : pos - 2] = b"\x01\x02"  # PatientName's VR
    return {"pn_len_huge": bytes(huge), "cut_after_name": src[: pos + 20], "pn_bad_vr": bytes(bad_vr)}


def _training_reason(path: Path) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    return info.value.reason


@pytest.fixture
def damaged(tmp_path: Path, dicom_writer) -> Path:
    folder = tmp_path / "scan"
    folder.mkdir()
    for case, data in _damaged(_source(tmp_path, dicom_writer)).items():
        (folder / f"{case}.dcm").write_bytes(data)
    return folder


def test_scan_names_a_damaged_header_as_training_does(damaged: Path) -> None:
    result = scan_folder(damaged, salt="x")
    reasons = {Path(p).stem: r for p, r in result.skipped}
    assert set(reasons) == {"pn_len_huge", "cut_after_name", "pn_bad_vr"}, reasons  # none scanned as fine
    for case, reason in reasons.items():
        assert reason.startswith("damaged DICOM header"), (case, reason)
        assert reason == _training_reason(damaged / f"{case}.dcm")
        assert "no pixel data (not an image object)" not in reason
        assert not any(value in reason for value in PHI), (case, reason)
    assert not any(value in result.summary().replace(str(damaged), "") for value in PHI)


def test_data_check_names_a_damaged_header_as_training_does(damaged: Path) -> None:
    for path in sorted(damaged.iterdir()):
        problem = header_problem(path)
        assert problem is not None and problem.startswith("damaged DICOM header"), (path.name, problem)


def test_a_stripped_image_keeps_its_own_reason_in_scan(tmp_path: Path, dicom_writer) -> None:
    folder = tmp_path / "scan"
    folder.mkdir()
    ds = pydicom.dcmread(io.BytesIO(_source(tmp_path, dicom_writer)))
    ds.Modality = NAME  # a name in a coded field: not shown
    del ds.PixelData
    ds.save_as(folder / "stripped.dcm")
    ((path, reason),) = scan_folder(folder, salt="x").skipped
    assert reason.startswith("DICOM file has no pixel data although its header describes an image"), reason
    assert reason == _training_reason(Path(path))
    assert not any(value in reason for value in PHI), reason
