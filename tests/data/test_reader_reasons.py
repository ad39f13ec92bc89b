"""Every reader's failure reason is a fixed phrase plus the exception's type, never the library's message.

A reason (path scrubbed) goes into the store, shift.json and control results, and DESIGN promises no PHI
there, not even in failure reasons. nibabel's messages quote the file name ("Cannot work out file type of
'.../DOE_JOHN_4400100_T1.nii.gz'"), which `scrub_path` may not recognise once the file was renamed or
linked, and pydicom's and Pillow's can quote header or text-chunk values; read_dicom already gave the type
only (review item 3)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from embedx.data.images import read_image
from embedx.data.manifest import Manifest
from embedx.data.volumes import VolumeGrid, load_volumes
from embedx.errors import ImageReadError

PATIENT = "DOE_JOHN_4400100"
# a fixed phrase, then the exception's type in brackets, and nothing after it
TYPE_ONLY = re.compile(r"^[a-z][^:()]* \([A-Za-z_][A-Za-z0-9_.]*\)$")


def _reason(path: Path) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    return info.value.reason


def _volume(path: Path) -> Path:
    volume = np.random.default_rng(0).random((24, 24, 16), dtype=np.float32)
    image = nib.Nifti1Image(volume, np.eye(4))
    image.header["descrip"] = b"DOE JOHN 1940-01-01"
    nib.save(image, path)
    return path


def test_a_nifti_nibabel_cannot_open_gives_no_message(tmp_path: Path) -> None:
    path = tmp_path / f"{PATIENT}_T1.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 not gzip data " + PATIENT.encode())
    reason = _reason(path)
    assert TYPE_ONLY.match(reason) and reason.startswith("not a readable NIfTI file"), reason
    assert "DOE" not in reason and "4400100" not in reason


def test_a_cut_nifti_gives_no_message(tmp_path: Path) -> None:
    data = _volume(tmp_path / "v.nii.gz").read_bytes()
    cut = tmp_path / f"{PATIENT}_cut.nii.gz"
    cut.write_bytes(data[: len(data) // 3])  # header intact, voxels cut short
    reason = _reason(cut)
    assert TYPE_ONLY.match(reason) and reason.startswith("corrupt NIfTI data"), reason


def test_a_cut_png_gives_no_message(tmp_path: Path) -> None:
    path = tmp_path / f"{PATIENT}.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    reason = _reason(path)
    assert TYPE_ONLY.match(reason) and reason.startswith("corrupt or truncated image"), reason


def test_an_unexpected_error_is_named_by_a_phrase_and_its_type(tmp_path: Path, dicom_writer) -> None:
    """A name typed into RescaleSlope: float() fails with a message quoting it."""
    path = dicom_writer(tmp_path / "src.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    ds = pydicom.dcmread(path)
    ds[0x00281053] = pydicom.DataElement(0x00281053, "LO", "DOE^JOHN")
    out = io.BytesIO()
    ds.save_as(out)
    path.write_bytes(out.getvalue())
    reason = _reason(path)
    assert reason == "cannot be converted to an image (ValueError)", reason


def test_a_volume_for_a_3d_run_gives_no_message(tmp_path: Path) -> None:
    import pandas as pd

    _volume(tmp_path / "good.nii.gz")
    (tmp_path / f"{PATIENT}.nii.gz").write_bytes(b"not a volume at all")
    table = pd.DataFrame({"path": ["good.nii.gz", f"{PATIENT}.nii.gz"], "subject_id": ["a", "b"]})
    manifest = Manifest(table=table, source=tmp_path / "m.csv", root=tmp_path, lines=[2, 3])
    volumes = load_volumes(manifest, [0, 1], VolumeGrid(shape=(8, 8, 8)))
    ((row, reason),) = volumes.failed
    assert row == 1 and TYPE_ONLY.match(reason), reason
    assert "DOE" not in reason and "<file>" not in reason
