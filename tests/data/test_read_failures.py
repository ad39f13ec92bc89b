"""An unreadable file is read once and warned about once, not once per epoch (and not once per worker).

The review counted 78 multi-line warnings for 3 bad files in a 63-step run: the dataset cached only the
images it could read, so every epoch decoded and warned about each bad file again."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import embedx.data.dataset as dataset_module
from embedx.data.dataset import ImageDataset, make_loader
from embedx.data.manifest import load_manifest
from embedx.data.preprocess import PreprocessConfig

EPOCHS = 4


@pytest.fixture
def cohort(tmp_path):
    """Eight PNGs; row 3 (0-based 2) is not an image."""
    for i in range(8):
        Image.fromarray(np.full((12, 12), 20 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 4)
    pd.DataFrame({"path": [f"{i}.png" for i in range(8)], "subject_id": [f"s{i}" for i in range(8)]}).to_csv(
        tmp_path / "m.csv", index=False)
    return load_manifest(tmp_path / "m.csv")


def _epochs(loader, n: int) -> list[list[int]]:
    """Failed rows per epoch (the caller still gets the failure every time, to count and list it)."""
    return [[row for batch in loader for row, _ in batch["failed"]] for _ in range(n)]


def test_one_bad_file_is_read_once_and_warned_about_once_over_many_epochs(cohort, monkeypatch, caplog):
    reads: list[str] = []
    real = dataset_module.load_image
    monkeypatch.setattr(dataset_module, "load_image",
                        lambda *a, **k: reads.append(str(a[0])) or real(*a, **k))
    dataset = ImageDataset(cohort, PreprocessConfig(size=8), train=True, seed=0)
    loader = make_loader(dataset, batch_size=3, shuffle=True, workers=0, seed=1)
    with caplog.at_level(logging.WARNING, logger="embedx.data.dataset"):
        failed = _epochs(loader, EPOCHS)
    assert failed == [[2]] * EPOCHS
    bad = str(cohort.absolute_path(2))
    assert reads.count(bad) == 1, reads.count(bad)
    warnings = [r for r in caplog.records if "2.png" in r.getMessage()]
    assert len(warnings) == 1 and "row 3 (line 4)" in warnings[0].getMessage()


def test_a_later_dataset_of_the_process_does_not_read_or_warn_again(cohort, monkeypatch, caplog):
    """The DAE's latent statistics and encode's trial read build new datasets over the same files."""
    ImageDataset(cohort, PreprocessConfig(size=8))[2]
    caplog.clear()
    reads: list[str] = []
    real = dataset_module.load_image
    monkeypatch.setattr(dataset_module, "load_image",
                        lambda *a, **k: reads.append(str(a[0])) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="embedx.data.dataset"):
        item = ImageDataset(cohort, PreprocessConfig(size=16), rows=[2, 3])[0]
    assert item["row"] == 2 and "error" in item
    assert reads == [] and not caplog.records


def test_a_file_repaired_on_disk_is_read_again(cohort):
    dataset = ImageDataset(cohort, PreprocessConfig(size=8))
    assert "error" in dataset[2]
    Image.fromarray(np.full((12, 12), 7, dtype=np.uint8)).save(cohort.absolute_path(2))
    assert "image" in ImageDataset(cohort, PreprocessConfig(size=8))[2]


def test_two_workers_warn_once_in_all(cohort, tmp_path):
    """Workers are processes of their own: each remembers what it read, and a flag in shared memory tells
    the others the file was already warned about. (Log records of workers do not reach caplog: a file
    handler, inherited by the forked workers, collects them.)"""
    log_file = tmp_path / "workers.log"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("embedx.data.dataset")
    logger.addHandler(handler)
    try:
        dataset = ImageDataset(cohort, PreprocessConfig(size=8), train=True, seed=0)
        loader = make_loader(dataset, batch_size=2, shuffle=True, workers=2, seed=3)
        failed = _epochs(loader, EPOCHS)
        del loader
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert failed == [[2]] * EPOCHS
    lines = [line for line in log_file.read_text().splitlines() if "2.png" in line]
    assert len(lines) == 1, lines
