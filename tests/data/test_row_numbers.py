"""One way to name a manifest row everywhere: 'row N (line L)', N the data row from 1, L the CSV line.

`embedx data check` always said so; training warnings, skipped.csv, encode errors and the background
control's JSON used to give the 0-based table position without saying so, one row off from the file."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedx.data.dataset import ImageDataset
from embedx.data.manifest import load_manifest
from embedx.data.preprocess import PreprocessConfig
from embedx.errors import ManifestError


@pytest.fixture
def quoted(tmp_path):
    """Five PNGs; row 2's comment spans two lines, so row 4 is on line 6 (not 5); row 4's file is broken."""
    for i in range(5):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"not a png")
    text = ("path,subject_id,comment\n0.png,s0,a\n1.png,s1,\"two\nlines\"\n2.png,s2,c\n3.png,s3,d\n"
            "4.png,s4,e\n")
    (tmp_path / "m.csv").write_text(text)
    return tmp_path


def test_manifest_names_rows_as_data_check_does(quoted):
    manifest = load_manifest(quoted / "m.csv")
    assert manifest.where(0) == "row 1 (line 2)"
    assert manifest.where(3) == "row 4 (line 6)"  # after the two-line value: the real line, not N + 1
    assert manifest.row_ref(3) == {"row": 4, "line": 6}
    manifest.table.to_parquet(quoted / "m.parquet")
    parquet = load_manifest(quoted / "m.parquet")
    assert parquet.where(3) == "row 4" and parquet.row_ref(3) == {"row": 4}  # no lines in Parquet


def test_data_check_and_the_training_warning_name_the_same_row(quoted, caplog):
    (quoted / "gone.csv").write_text((quoted / "m.csv").read_text().replace("3.png", "missing.png"))
    with pytest.raises(ManifestError, match=r"row 4 \(line 6\): missing\.png"):
        load_manifest(quoted / "gone.csv")
    dataset = ImageDataset(load_manifest(quoted / "m.csv"), PreprocessConfig(size=8))
    with caplog.at_level(logging.WARNING, logger="embedx.data.dataset"):
        item = dataset[3]
    assert item["row"] == 3 and "error" in item  # internally still the table position
    warned = [r.getMessage() for r in caplog.records if "3.png" in r.getMessage()]
    assert len(warned) == 1 and "row 4 (line 6)" in warned[0], warned
    assert "row 3 " not in warned[0]


def test_the_table_position_of_a_data_frame_row_and_its_name_agree(quoted):
    """The n-th data row of the file (pandas' own reading) is the one `where` names row n."""
    manifest = load_manifest(quoted / "m.csv")
    raw = pd.read_csv(quoted / "m.csv")
    for position in range(len(raw)):
        n = int(manifest.where(position).split()[1])
        assert raw["path"].iloc[n - 1] == manifest.table["path"].iloc[position]
