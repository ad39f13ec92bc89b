"""What `embedx data check` says about a hospital's manifest as Excel on Windows writes it (review item 14):
paths with backslashes get a hint instead of only "N missing files"; a cp1252 file is still refused (a
guessed encoding can silently change values) but the message says how to fix it; and a 0/1 column with a
missing cell is shown as 0/1, not as pandas' floats ('0.0: 59, 1.0: 36')."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedx.data.manifest import load_manifest, summarize_manifest
from embedx.errors import ManifestError


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)


@pytest.mark.skipif(os.sep == "\\", reason="a backslash is a separator on Windows")
def test_backslash_paths_are_missing_with_a_hint(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _png(tmp_path / "hospital" / f"{name}.png")
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text("path,subject_id\n..\\hospital\\a.png,p1\n..\\hospital\\b.png,p2\n", encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(manifest)
    message = str(caught.value)
    assert "2 file(s) do not exist" in message
    assert "backslash" in message and "'/'" in message, message


def test_missing_files_without_backslashes_get_no_backslash_hint(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,subject_id\nnope.png,p1\n", encoding="utf-8")
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "m.csv")
    assert "backslash" not in str(caught.value)


def test_a_cp1252_manifest_is_refused_with_how_to_fix_it(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    path = tmp_path / "export.csv"
    path.write_bytes("path,subject_id,site\na.png,p1,Klinikum Süd\n".encode("cp1252"))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert "not UTF-8 text" in message
    assert "CSV UTF-8" in message and "iconv -f cp1252 -t utf-8" in message, message


def test_a_binary_column_with_a_missing_value_is_shown_as_0_and_1(tmp_path: Path) -> None:
    rows = ["path,subject_id,finding"]
    for i in range(6):
        _png(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,p{i},{'' if i == 5 else i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    manifest = load_manifest(tmp_path / "m.csv")
    line = next(x for x in summarize_manifest(manifest).splitlines() if x.startswith("finding"))
    assert "0: 3" in line and "1: 2" in line, line
    assert "0.0" not in line and "1.0" not in line, line
