"""Bad input gets one clear message naming the file, and exit status 2 — never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from embedx.store.h5store import write_store_from_arrays


def _embedx(*args: str) -> tuple[int, str]:
    """Exit status and everything printed, with rich's line wrapping undone."""
    out = subprocess.run([sys.executable, "-m", "embedx", *args], capture_output=True, text=True, timeout=300)
    return out.returncode, " ".join((out.stdout + out.stderr).split())


def _store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 40
    return write_store_from_arrays(
        path,
        [f"i{i}" for i in range(n)],
        [f"s{i}" for i in range(n)],
        pd.DataFrame({"site": rng.choice(["a", "b"], n)}),
        None,
        {"m": rng.normal(size=(n, 4)).astype(np.float32)},
    )


def test_random_bytes_and_a_truncated_store_are_named_as_such(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    code, text = _embedx("store", "info", str(junk))
    assert code == 2 and "not a readable HDF5 store" in text and "Traceback" not in text
    data = _store(tmp_path / "s.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    code, text = _embedx("store", "info", str(tmp_path / "cut.h5"))
    assert code == 2 and "truncated" in text and "file lock" not in text


def test_a_binary_config_and_a_file_given_as_a_folder(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\x89PNG\x00\xff\xfe")
    manifest = tmp_path / "m.csv"
    (tmp_path / "a.png").write_bytes(b"")
    manifest.write_text("path,subject_id\na.png,s1\n")
    code, text = _embedx(
        "train", "vae", "--manifest", str(manifest), "--config", str(config), "--out", str(tmp_path / "r")
    )
    assert code == 2 and "not a text file" in text and "Traceback" not in text
    code, text = _embedx("report", str(_store(tmp_path / "s.h5")), "--out", str(manifest))  # a file
    assert code == 2 and "m.csv" in text and "Traceback" not in text


def test_a_missing_option_or_a_misspelt_one_is_a_usage_message(tmp_path: Path) -> None:
    """typer vendors its own click: its usage errors must not fall through to a traceback."""
    store = str(_store(tmp_path / "s.h5"))
    code, text = _embedx("fairness", store)
    assert code == 2 and "Missing option '--target'" in text and "Traceback" not in text
    code, text = _embedx("calibrate", store, "--null-labels", "3")
    assert code == 2 and "No such option: --null-labels" in text and "Traceback" not in text


def test_fairness_on_a_pilot_store_says_why_instead_of_failing(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 12
    tiny = write_store_from_arrays(
        tmp_path / "tiny.h5", [f"i{i}" for i in range(n)], [f"s{i // 2}" for i in range(n)],
        pd.DataFrame({"sex": rng.choice(["F", "M"], n), "finding": np.tile([0, 1], n // 2)}), None,
        {"m": rng.normal(size=(n, 4)).astype(np.float32)},
    )
    code, text = _embedx("fairness", str(tiny), "--target", "finding")
    assert "Traceback" not in text
    assert (code == 2 and "fewer than 5 folds" in text) or (code == 0 and "gaps not tested" in text), text
