"""`embedx data scan`: acquisition attributes out of DICOM headers, and not one PHI string anywhere."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from embedx.data.dicom_header import parse_age, subject_pseudonym
from embedx.data.scan import scan_folder, scan_to_manifest

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-98765-X",
    "PatientBirthDate": "19510317",
    "AccessionNumber": "ACC55555",
    "StudyDate": "20200102",
    "StudyTime": "101112",
    "InstitutionAddress": "12 Elm Street Springfield",
    "ReferringPhysicianName": "Smith^John",
    "OperatorsName": "Operator^Olga",
    "OtherPatientIDs": "ALT-4444",
}
# Every fragment that must never appear in an output (names split, so 'Doe' alone is also caught).
PHI_FRAGMENTS = [
    "Doe",
    "Jane",
    "98765",
    "PID-",
    "19510317",
    "1951",
    "ACC55555",
    "20200102",
    "101112",
    "Elm Street",
    "Springfield",
    "Smith",
    "Olga",
    "ALT-4444",
]


def write_dicom(
    path: Path, manufacturer: str, patient_id: str = PHI["PatientID"], pixels: bool = True, **fields: str
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.PatientID = patient_id
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = f"{manufacturer}-Model-1"
    ds.InstitutionName = "General Hospital North"
    ds.StationName = "STATION7"
    ds.Modality = "CR"
    ds.KVP = "110"
    ds.PixelSpacing = [0.139, 0.139]
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    for key, value in fields.items():
        setattr(ds, key, value)
    if pixels:
        arr = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 7) % 4096
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def phi_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    write_dicom(folder / "a" / "img1.dcm", "VendorAlpha")
    write_dicom(folder / "a" / "IM0002", "VendorAlpha", KVP="120")  # no suffix: found by 'DICM'
    write_dicom(
        folder / "b" / "img3.dcm",
        "VendorBeta",
        patient_id="OTHER-1",
        PatientAge="006M",
        PatientSex="M",
        ViewPosition="AP",
        ConvolutionKernel="B30f",
    )
    write_dicom(folder / "b" / "nopix.dcm", "VendorBeta", pixels=False)
    truncated = write_dicom(folder / "b" / "cut.dcm", "VendorBeta")
    truncated.write_bytes(truncated.read_bytes()[:-200])
    (folder / "b" / "notes.txt").write_text("not an image\n")
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "b" / "ok.png")
    (folder / "sub-07").mkdir()
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.diag([0.9, 0.9, 3.0, 1.0])),
        folder / "sub-07" / "t1.nii.gz",
    )
    return folder


def test_parse_age() -> None:
    assert parse_age("045Y") == 45.0
    assert parse_age("006M") == 0.5
    assert abs(parse_age("010W") - 70 / 365.25) < 1e-3
    assert abs(parse_age("003D") - 3 / 365.25) < 1e-3
    assert parse_age("45") == 45.0
    assert math.isnan(parse_age("old")) and math.isnan(parse_age(None))


def test_scan_extracts_attributes_and_never_phi(phi_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "manifest.csv"
    env = {**os.environ, "EMBEDX_NO_PROGRESS": "1"}
    env.pop("EMBEDX_SALT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "embedx", "-vv", "data", "scan", str(phi_folder), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out)
    by_name = {Path(p).name: row for p, row in zip(table["path"], table.to_dict("records"), strict=True)}
    assert set(by_name) == {"img1.dcm", "IM0002", "img3.dcm", "ok.png", "t1.nii.gz"}
    assert by_name["img1.dcm"]["manufacturer"] == "VendorAlpha"
    assert by_name["img3.dcm"]["manufacturer"] == "VendorBeta"
    assert by_name["img3.dcm"]["age"] == 0.5 and by_name["img3.dcm"]["sex"] == "M"
    assert (
        by_name["img3.dcm"]["view_position"] == "AP" and by_name["img3.dcm"]["convolution_kernel"] == "B30f"
    )
    assert by_name["IM0002"]["kvp"] == 120.0 and by_name["img1.dcm"]["pixel_spacing"] == pytest.approx(0.139)
    assert by_name["img1.dcm"]["institution"] == "General Hospital North"
    assert (
        by_name["img1.dcm"]["subject_id"]
        == by_name["IM0002"]["subject_id"]
        != by_name["img3.dcm"]["subject_id"]
    )
    assert by_name["t1.nii.gz"]["subject_id"].startswith("subj-")  # the BIDS label, hashed like a PatientID
    assert by_name["t1.nii.gz"]["slice_thickness"] == 3.0 and by_name["t1.nii.gz"][
        "pixel_spacing"
    ] == pytest.approx(0.9)
    assert set(table["file_format"]) == {"dicom", "raster", "nifti"}
    # skipped and listed by path, counted, not fatal
    for name in ("nopix.dcm", "cut.dcm", "broken.png"):
        assert name in proc.stderr
    assert "1 non-image files skipped" in proc.stderr and "3 unusable image files skipped" in proc.stderr
    # no PHI in any output: manifest, sidecar, salt file, stdout, stderr (with -vv logging)
    outputs = {p.name: p.read_text() for p in out.parent.iterdir()}
    assert set(outputs) == {"manifest.csv", "manifest.yaml", "manifest.salt"}
    # the salt is random hex, which can hold a birth year's digits by chance ('...21195190f1'): it must be
    # that and nothing else, and is not searched for fragments
    assert re.fullmatch(r"[0-9a-f]{32}\n?", outputs.pop("manifest.salt")), "the salt is not 32 hex digits"
    outputs["stdout"], outputs["stderr"] = proc.stdout, proc.stderr
    for where, text in outputs.items():
        for fragment in PHI_FRAGMENTS:
            assert fragment not in text, f"{fragment!r} leaked into {where}"
    spec = (out.parent / "manifest.yaml").read_text()
    assert "institution" in spec and "role: demographic" in spec


def test_patient_id_in_path_is_flagged(tmp_path: Path) -> None:
    folder = tmp_path / "archive" / "PID-98765-X"  # the archive names folders after the patient
    folder.mkdir(parents=True)
    write_dicom(folder / "1.dcm", "VendorAlpha")
    write_dicom(tmp_path / "archive" / "2.dcm", "VendorAlpha", patient_id="Q7")
    result = scan_folder(tmp_path / "archive", salt="x")
    assert result.phi_in_paths == 1 and "1 paths contain a patient ID" in result.summary()
    assert "_phi_in_path" not in result.table.columns


def test_salt_controls_subject_ids(phi_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = scan_to_manifest(phi_folder, tmp_path / "m1.csv", salt="s3cret")
    again = scan_to_manifest(phi_folder, tmp_path / "m2.csv", salt="s3cret")
    other = scan_to_manifest(phi_folder, tmp_path / "m3.csv", salt="different")
    assert list(first.table["subject_id"]) == list(again.table["subject_id"])
    hashed = {s for s in first.table["subject_id"] if s.startswith("subj-")}  # BIDS labels are hashed too
    assert len(hashed) == 4 and not hashed & set(other.table["subject_id"])
    assert subject_pseudonym(PHI["PatientID"], "s3cret") in set(first.table["subject_id"])
    monkeypatch.setenv("EMBEDX_SALT", "s3cret")
    from_env = scan_to_manifest(phi_folder, tmp_path / "m4.csv")
    assert list(from_env.table["subject_id"]) == list(first.table["subject_id"])
    assert not (tmp_path / "m4.salt").exists()
    monkeypatch.delenv("EMBEDX_SALT")
    stored = scan_to_manifest(phi_folder, tmp_path / "m5.csv")  # new random salt, saved and reused
    reused = scan_to_manifest(phi_folder, tmp_path / "m5.csv")
    assert (tmp_path / "m5.salt").exists()
    assert list(stored.table["subject_id"]) == list(reused.table["subject_id"])


REAL = {  # pydicom / pydicom-data test files -> expected Manufacturer
    "CT_small.dcm": "GE MEDICAL SYSTEMS",
    "MR_small.dcm": "TOSHIBA_MEC",
    "RG1_UNCI.dcm": "Philips Medical Systems",
    "RG3_UNCR.dcm": "FUJI PHOTO FILM CO. LTD.",
    "MR2_UNCR.dcm": "Philips",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "SIEMENS",
}
BAD = ("MR_truncated.dcm", "rtplan.dcm", "no_meta.dcm")


def test_real_pydicom_files(tmp_path: Path, artifacts_dir: Path) -> None:
    from pydicom.data import get_testdata_file

    folder = tmp_path / "real"
    folder.mkdir()
    for name in (*REAL, *BAD):
        shutil.copy(get_testdata_file(name), folder / name)
    result = scan_folder(folder, salt="x")
    found = {Path(p).name: m for p, m in zip(result.table["path"], result.table["manufacturer"], strict=True)}
    assert found == REAL
    assert {Path(p).name for p, _ in result.skipped} == set(BAD)
    modality = dict(
        zip(result.table["path"].map(lambda p: Path(p).name), result.table["modality"], strict=True)
    )
    assert (
        modality["RG1_UNCI.dcm"] == "CR"
        and modality["CT_small.dcm"] == "CT"
        and modality["MR_small.dcm"] == "MR"
    )

    from embedx.data.images import read_image

    image = read_image(folder / "RG1_UNCI.dcm")  # Philips CR, MONOCHROME1: loaded through area A's reader
    assert image.ndim == 2 and image.shape[0] > 100 and float(image.std()) > 0
    lo, hi = np.percentile(image, [1, 99])
    Image.fromarray((np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)).save(
        artifacts_dir / "scan_RG1_UNCI_philips_cr.png"
    )


def test_scan_errors(tmp_path: Path) -> None:
    from embedx.errors import EmbedxError

    with pytest.raises(EmbedxError, match="not a folder"):
        scan_folder(tmp_path / "missing", salt="x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(EmbedxError, match="no usable images"):
        scan_to_manifest(tmp_path / "empty", tmp_path / "m.csv", salt="x")


def test_a_dicom_file_without_preamble_is_scanned_not_skipped(tmp_path: Path) -> None:
    """pydicom-data's OT-PAL-8-face.dcm has no 128-byte preamble or 'DICM' marker; viewers read it, so does
    `data scan` (a text file that merely ends in .dcm is still skipped)."""
    import shutil

    from pydicom.data import get_testdata_file

    from embedx.data.scan import scan_folder

    shutil.copy(get_testdata_file("OT-PAL-8-face.dcm"), tmp_path / "face.dcm")
    (tmp_path / "notes.dcm").write_text("not an image")
    result = scan_folder(tmp_path, salt="test")
    assert len(result.table) == 1 and str(result.table["path"].iloc[0]).endswith("face.dcm")
    assert [Path(p).name for p, _ in result.skipped] == ["notes.dcm"]
