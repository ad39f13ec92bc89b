"""A training run with unreadable files: each is warned about once, skipped.csv names rows as `embedx data
check` does (data row from 1, CSV line), and run.json does not count them as training or validation images.

The review's run gave 78 warnings for 3 bad files in 63 steps, listed them one row off in skipped.csv, and
counted them in `n_train` / `n_val`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from embedx.data.manifest import load_manifest, write_manifest
from embedx.training.data import build_datasets
from embedx.training.loop import train


@dataclass
class BrokenRun:
    run_dir: Path
    manifest: Path
    bad: list[int]  # 0-based table positions: two training rows, one validation row
    n_train: int
    n_val: int
    warnings: list[str]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def broken_run(cohort: Path, tiny_config, tmp_path_factory: pytest.TempPathFactory) -> BrokenRun:
    """~2.7 epochs with 3 evaluations over a manifest whose 3 files are not images."""
    man = load_manifest(cohort)
    config = tiny_config("vae", total=960, batch=32, every=320)
    data = build_datasets(man, config)
    bad = [int(data.train.rows[0]), int(data.train.rows[1]), int(data.val.rows[0])]
    folder = tmp_path_factory.mktemp("broken")
    table = man.table.copy()
    for position in bad:
        broken = folder / f"broken{position}.png"
        broken.write_bytes(b"not a png")
        table.loc[position, "path"] = str(broken)
    manifest = write_manifest(table, cohort.parent / "three-broken.csv", man.schema)  # paths stay relative
    handler = _Collect()
    logger = logging.getLogger("embedx.data.dataset")
    logger.addHandler(handler)
    try:
        run_dir = train(config, manifest, folder / "run")
    finally:
        logger.removeHandler(handler)
    warnings = [m for m in handler.messages if "broken" in m]
    return BrokenRun(run_dir, manifest, bad, len(data.train), len(data.val), warnings)


def test_each_bad_file_is_warned_about_once(broken_run: BrokenRun) -> None:
    assert len(broken_run.warnings) == 3, broken_run.warnings  # not once per epoch or evaluation
    for position in broken_run.bad:
        assert any(f"row {position + 1} (line {position + 2})" in w for w in broken_run.warnings)


def test_skipped_csv_names_the_data_row_and_line_of_the_file(broken_run: BrokenRun) -> None:
    skipped = pd.read_csv(broken_run.run_dir / "skipped.csv")
    assert list(skipped.columns) == ["row", "line", "path", "reason"]
    assert sorted(skipped["row"]) == sorted(p + 1 for p in broken_run.bad)
    assert (skipped["line"] == skipped["row"] + 1).all()  # no value spans lines in this CSV
    as_written = pd.read_csv(broken_run.manifest)  # "row N" is the N-th data row of the file the user opens
    for row, path in zip(skipped["row"], skipped["path"], strict=True):
        assert as_written["path"].iloc[row - 1] == path


def test_run_json_does_not_count_unreadable_images(broken_run: BrokenRun) -> None:
    info = json.loads((broken_run.run_dir / "run.json").read_text())
    assert info["skipped_images"] == 3
    assert info["n_train"] == broken_run.n_train - 2 and info["n_val"] == broken_run.n_val - 1
