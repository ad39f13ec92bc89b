"""The background control lists unreadable files by data row from 1 and CSV line, as `embedx data check`.

Its JSON (and the store's copy) used to give `"row": 90` for data row 91, with nothing saying so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from embedx.analysis.background import extract_patches
from embedx.data.manifest import load_manifest


def test_failed_files_carry_the_data_row_and_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"not a png")
    pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "subject_id": [f"s{i}" for i in range(6)]}).to_csv(
        tmp_path / "m.csv", index=False)
    manifest = load_manifest(tmp_path / "m.csv")
    _, ok, _, failed = extract_patches(manifest, size=16, patch=4)
    assert ok.tolist() == [0, 1, 2, 4, 5]  # table positions, for indexing
    assert len(failed) == 1
    entry = failed[0]
    assert (entry["row"], entry["line"]) == (4, 5), entry  # data row 4 of the file, on line 5
    assert pd.read_csv(tmp_path / "m.csv")["path"].iloc[entry["row"] - 1] == "3.png"
    assert "<file>" in entry["reason"] or "3.png" not in entry["reason"]  # the path stays out of the JSON
