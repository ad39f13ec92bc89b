"""`data scan` never writes a BIDS subject label raw: `sub-4400100` is often the hospital's patient ID
(review item 10). It is hashed with the salt DICOM PatientIDs get, so one label is one subject."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from embedx.data.dicom_header import subject_pseudonym
from embedx.data.scan import scan_to_manifest

MRN, OTHER = "4400100", "4400200"


def _nifti(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), path)


def test_bids_labels_are_salted_hashes_consistent_with_dicom_subjects(tmp_path: Path, dicom_writer) -> None:
    folder = tmp_path / "cohort"
    _nifti(folder / f"sub-{MRN}" / "anat" / f"sub-{MRN}_T1w.nii.gz")
    _nifti(folder / f"sub-{MRN}" / "ses-2" / "anat" / f"sub-{MRN}_ses-2_T1w.nii.gz")
    (folder / f"sub-{OTHER}").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / f"sub-{OTHER}" / f"sub-{OTHER}_xray.png")
    (folder / "dicom").mkdir()
    dicom = dicom_writer(folder / "dicom" / "img.dcm", np.ones((8, 8), np.uint16))
    ds = pydicom.dcmread(dicom)
    ds.PatientID = MRN
    ds.save_as(dicom)

    out = tmp_path / "manifest.csv"
    scan_to_manifest(folder, out, salt="s3cret")
    table = pd.read_csv(out, dtype=str)
    subject = dict(zip(table["path"].map(lambda p: Path(p).name), table["subject_id"], strict=True))

    for column in table.columns.drop("path"):  # the label survives only in the path, as any file name does
        assert not table[column].fillna("").str.contains(MRN).any(), column
        assert not table[column].fillna("").str.contains(OTHER).any(), column
    assert subject[f"sub-{MRN}_T1w.nii.gz"] == subject[f"sub-{MRN}_ses-2_T1w.nii.gz"] == subject["img.dcm"]
    assert subject[f"sub-{MRN}_T1w.nii.gz"] == subject_pseudonym(MRN, "s3cret")
    assert subject[f"sub-{OTHER}_xray.png"] == subject_pseudonym(OTHER, "s3cret") != subject["img.dcm"]
