"""Encode's refusals name rows as `embedx data check` does: 'row N (line L)', N counting data rows from 1.

They used to give the 0-based table position ("row 90" for data row 91, line 92)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedx.data.manifest import load_manifest
from embedx.data.preprocess import PreprocessConfig
from embedx.errors import EmbedxError
from embedx.store.encode import check_manifest_fits_run


def _run(train_manifest: Path | None = None) -> SimpleNamespace:
    """What `check_manifest_fits_run` reads of a trained run, without training one."""
    info = {"manifest": str(train_manifest)} if train_manifest else {}
    return SimpleNamespace(info=info, preprocess=PreprocessConfig(size=8), kind="vae", run_dir="runs/vae")


def _pngs(folder: Path, names: list[str]) -> None:
    for name in names:
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(folder / name)


def test_unreadable_first_rows_are_named_by_data_row_and_line(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"not a png")
    pd.DataFrame({"path": [f"{i}.png" for i in range(3)], "subject_id": ["a", "b", "c"]}).to_csv(
        tmp_path / "m.csv", index=False)
    with pytest.raises(EmbedxError) as caught:
        check_manifest_fits_run(_run(), load_manifest(tmp_path / "m.csv"))
    message = str(caught.value)
    assert all(f"row {i + 1} (line {i + 2}): " in message for i in range(3)), message
    assert "row 0" not in message


def test_a_volume_in_a_2d_run_is_named_by_data_row_and_line(tmp_path: Path) -> None:
    _pngs(tmp_path, ["a.png", "b.png"])
    (tmp_path / "head.nii.gz").write_bytes(b"")  # only its name is looked at before the trial read
    pd.DataFrame({"path": ["a.png", "b.png"], "subject_id": ["a", "b"]}).to_csv(tmp_path / "train.csv",
                                                                                index=False)
    pd.DataFrame({"path": ["a.png", "head.nii.gz"], "subject_id": ["a", "h"]}).to_csv(tmp_path / "new.csv",
                                                                                       index=False)
    with pytest.raises(EmbedxError, match=r"row 2 \(line 3\) \(head\.nii\.gz\) does not match the run"):
        check_manifest_fits_run(_run(tmp_path / "train.csv"), load_manifest(tmp_path / "new.csv"))
