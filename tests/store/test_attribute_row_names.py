"""A value the store cannot take is named by its row the way every other command names rows (review item
6): encode passes the manifest's namer, so the user reads 'row N (line L)' of the file being encoded; any
other writer's rows count from 1 and are said not to be store rows. It used to say "row 2" for the third
row of the input (0-based), which is neither the manifest's row nor the store's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from embedx.data.manifest import Manifest
from embedx.data.schema import AttributeSpec
from embedx.errors import StoreError
from embedx.store.h5store import Store

SCHEMA = {"finding": AttributeSpec("finding", "binary", "clinical")}


def _store(path: Path) -> Path:
    with Store.create(path, salted_ids=False) as store:  # 'finding' stored as numbers (0/1)
        store.add_samples(["a", "b"], ["p1", "p2"], pd.DataFrame({"finding": [0.0, 1.0]}), SCHEMA)
    return path


def _later() -> pd.DataFrame:
    return pd.DataFrame({"finding": ["0", "1", "yes"]})  # a later cohort spells one value as text


def test_the_encoded_manifest_row_and_line_are_named(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "path": ["c.png", "d.png", "e.png"],
            "subject_id": ["p3", "p4", "p5"],
            "finding": _later()["finding"],
        }
    )
    manifest = Manifest(table=table, source=tmp_path / "m.csv", root=tmp_path, lines=[2, 3, 5])
    with Store.open(_store(tmp_path / "s.h5"), "a") as store, pytest.raises(StoreError) as caught:
        store.add_samples(
            ["c", "d", "e"], table["subject_id"], table[["finding"]], SCHEMA, row_name=manifest.where
        )
    assert "row 3 (line 5) holds 'yes'" in str(caught.value), str(caught.value)


def test_other_writers_count_rows_from_1_and_say_they_are_not_store_rows(tmp_path: Path) -> None:
    with Store.open(_store(tmp_path / "s.h5"), "a") as store, pytest.raises(StoreError) as caught:
        store.add_samples(["c", "d", "e"], ["p3", "p4", "p5"], _later(), SCHEMA)
    message = str(caught.value)
    assert "row 3 of the rows being added" in message and "not a store row" in message, message
    with Store.open(tmp_path / "s.h5") as store:
        assert store.n == 2  # the failed write was undone


def test_encode_names_the_row_and_line_of_the_manifest_being_encoded(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from embedx.data.manifest import load_manifest
    from embedx.store.encode import encode
    from embedx.store.pixels import fit_pixel_reference

    for i in range(5):
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    (tmp_path / "first.csv").write_text("path,subject_id,finding\n0.png,p0,0\n1.png,p1,1\n", encoding="utf-8")
    (tmp_path / "later.csv").write_text(  # line 4 is blank: row 3 sits on line 5
        "path,subject_id,finding\n2.png,p2,0\n3.png,p3,1\n\n4.png,p4,yes\n", encoding="utf-8"
    )
    first = load_manifest(tmp_path / "first.csv")
    reference = fit_pixel_reference(first, size=16, pool=4, components=2)
    encode(reference, first, tmp_path / "s.h5", "pixels", workers=0)
    with pytest.raises(StoreError) as caught:
        encode(reference, tmp_path / "later.csv", tmp_path / "s.h5", "pixels", workers=0)
    assert "row 3 (line 5) holds 'yes'" in str(caught.value), str(caught.value)
