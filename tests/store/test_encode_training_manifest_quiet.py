"""Encode re-reads the run's training manifest only to learn which image kinds it saw; that read must not
print the manifest warnings ("manifest.csv: 5 attribute(s) not declared ...") again. Printed while another
file is being encoded, they read as warnings about that file (review item 14, "warning about the wrong
file"). The warnings about the manifest being encoded stay."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedx.data.manifest import load_manifest
from embedx.data.preprocess import PreprocessConfig
from embedx.store.encode import check_manifest_fits_run


def _manifest(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(folder / f"{i}.png")
    table = pd.DataFrame(
        {"path": ["0.png", "1.png"], "subject_id": ["a", "b"], "site": [" A", "B"], "age": [40, 50]}
    )  # undeclared attributes, and a value with spaces: warnings
    table.to_csv(folder / name, index=False)
    return folder / name


def test_the_training_manifest_is_reread_without_its_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train = _manifest(tmp_path / "train", "training.csv")
    with caplog.at_level(logging.WARNING):
        encoded = load_manifest(_manifest(tmp_path / "big", "manifest.csv"))
    assert any("manifest.csv" in r.getMessage() for r in caplog.records)  # the file encoded: still said
    caplog.clear()
    run = SimpleNamespace(
        info={"manifest": str(train)}, preprocess=PreprocessConfig(size=8), kind="vae", run_dir="runs/vae"
    )
    with caplog.at_level(logging.DEBUG):
        check_manifest_fits_run(run, encoded)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("training.csv" in m or "not declared" in m for m in said), said
    assert logging.getLogger("embedx.data").level == logging.NOTSET  # the quiet read left no level behind
