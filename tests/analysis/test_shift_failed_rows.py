"""`shift.json`'s `failed` names a manifest row as `embedx data check` does: `{"row": N, "line": L}`, N the
N-th data row counting from 1 and L its line in the CSV. It used to hold the 0-based table position, so
"row 4" sent a user who opened the file to the wrong patient. The reason is a fixed phrase: no path, and
no message of the library that failed (it may quote a header value or the file name)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

from embedx.analysis.shift import ShiftSettings, shift_experiment
from embedx.analysis.shift_volumes import VolumeShiftSettings, shift_volumes
from embedx.data.volumes import VolumeGrid

BROKEN = (3, 10)  # 0-based table positions of the files that cannot be read
PATIENT = "DOE_JOHN_4400100"  # a patient-named file: neither the name nor the library's message may leave


def _table(n_subjects: int) -> list[dict]:
    return [
        {"subject_id": f"p{s:03d}", "scanner": "AB"[s % 2], "finding": int(k == 1)}
        for s in range(n_subjects)
        for k in range(2)
    ]


def _break(root: Path, table: pd.DataFrame) -> None:
    for i in BROKEN:
        broken = f"{PATIENT}_{i}{Path(table.at[i, 'path']).name[-7:].lstrip('0123456789_')}"
        (root / broken).write_bytes(b"\x00 not an image, " + PATIENT.encode())
        table.at[i, "path"] = broken


def _check(failed: list[dict]) -> None:
    assert [(f["row"], f["line"]) for f in failed] == [(i + 1, i + 2) for i in BROKEN], failed
    for item in failed:
        assert PATIENT not in item["reason"] and "DOE" not in item["reason"], item
        assert "not a readable" in item["reason"], item


def test_2d_failures_are_named_by_data_row_and_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = _table(24)
    for i, row in enumerate(rows):
        row["path"] = f"{i:03d}.png"
        image = rng.normal(0.5, 0.05, (16, 16)) + 0.5 * row["finding"]
        Image.fromarray((np.clip(image, 0, 1.5) * 40000).astype(np.uint16)).save(tmp_path / row["path"])
    table = pd.DataFrame(rows)[["path", "subject_id", "scanner", "finding"]]
    _break(tmp_path, table)
    table.to_csv(tmp_path / "m.csv", index=False)
    result = shift_experiment(
        tmp_path / "m.csv",
        "scanner",
        "finding",
        difficulty=None,
        settings=ShiftSettings(size=16, replicates=1, epochs=1, bootstrap=0, test_fraction=0.3),
    )
    _check(result["failed"])


def test_3d_failures_are_named_by_data_row_and_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = _table(24)
    for i, row in enumerate(rows):
        row["path"] = f"{i:03d}.nii.gz"
        volume = rng.normal(100, 5, (12, 12, 10)).astype(np.float32) + 50 * row["finding"]
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / row["path"])
    table = pd.DataFrame(rows)[["path", "subject_id", "scanner", "finding"]]
    _break(tmp_path, table)
    table.to_csv(tmp_path / "m.csv", index=False)
    settings = VolumeShiftSettings(
        task="classify",
        grid=VolumeGrid(shape=(8, 8, 8)),
        width=0.25,
        replicates=1,
        epochs=1,
        batch_size=8,
        bootstrap=0,
        mixed_precision="no",
    )
    result = shift_volumes(
        tmp_path / "m.csv",
        "scanner",
        "finding",
        tmp_path / "out",
        difficulty=None,
        train_on=["all"],
        settings=settings,
    )
    _check(result["failed"])
