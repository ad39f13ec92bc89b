"""Category values typed two ways (`PA` / `P A`, `yes` / `Yes`) are named in a warning, and kept apart."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from embedx.data.manifest import load_manifest
from embedx.data.value_variants import spelling_variants


def _manifest(root: Path, columns: dict[str, list[str]]) -> Path:
    n = len(next(iter(columns.values())))
    (root / "img").mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4), i % 256, dtype=np.uint8)).save(root / "img" / f"{i}.png")
    table = pd.DataFrame({"path": [f"img/{i}.png" for i in range(n)],
                          "subject_id": [f"s{i // 2}" for i in range(n)], **columns})
    table.to_csv(root / "m.csv", index=False)
    return root / "m.csv"


def test_spellings_that_differ_in_case_spacing_or_punctuation_are_grouped() -> None:
    column = pd.Series(["PA", "PA", "P A", "AP", "p-a", None, "LL"])
    assert spelling_variants(column) == [{"PA": 2, "P A": 1, "p-a": 1}]
    assert spelling_variants(pd.Series(["PA", "AP", "LL"])) == []


def test_the_manifest_warns_and_names_the_spellings_but_merges_nothing(tmp_path, caplog) -> None:
    view = ["PA"] * 8 + ["P A"] + ["AP"] * 7
    finding = ["yes", "no"] * 7 + ["Yes", "no"]
    site = ["north", "south"] * 8
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest(_manifest(tmp_path, {"view": view, "finding": finding, "site": site}))
    text = caplog.text
    assert "'view' holds values that differ only in case" in text and "'PA' (8 rows) / 'P A' (1 rows)" in text
    assert "'finding'" in text and "'yes' (7 rows) / 'Yes' (1 rows)" in text
    assert "column 'site'" not in text  # a clean column says nothing
    assert set(manifest.table["view"].dropna()) == {"PA", "P A", "AP"}  # kept apart: only the user knows


def test_a_declared_binary_column_with_a_third_value_names_its_rows(tmp_path) -> None:
    import pytest

    from embedx.errors import ManifestError

    sex = ["F", "M"] * 6 + ["m", "U", "F", "M"]
    path = _manifest(tmp_path, {"sex": sex})
    (tmp_path / "m.yaml").write_text("attributes:\n  sex: {kind: binary, role: demographic}\n")
    with pytest.raises(ManifestError) as raised:
        load_manifest(path)
    text = str(raised.value)
    assert "declared binary but has 4 values ('F' (7 rows), 'M' (7 rows), 'm' (1 rows), 'U' (1 rows))" in text
    assert "row 13 (line 14): 'm'" in text and "row 14 (line 15): 'U'" in text
