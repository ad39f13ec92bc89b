"""`embedx experiment shift` on cohorts whose answer is known by construction.

Discs ("lesions") on a noisy background, in two acquisition groups. In the shifted cohort group B carries
stripe noise and a burned-in bright marker that a model never shown one can take for a lesion: a detector
trained on clean group A only must lose AUROC on B (the seed-001 effect), and easy discs must be found
better than hard ones. In the control cohort the two groups are the same acquisition, so a model trained
on one scores the same on the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedx.analysis.shift import ShiftSettings, shift_experiment
from embedx.cli import app
from embedx.errors import EmbedxError

SIZE = 32
DISCS = {"easy": (6.0, 0.6), "hard": (3.0, 0.25)}  # radius px, contrast


def _cohort(root: Path, shifted: bool, n_subjects: int = 180, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rows = []
    (root / "images").mkdir(parents=True)
    for s in range(n_subjects):
        group = "A" if s % 2 == 0 else "B"
        for k in range(2):
            finding = int(rng.random() < 0.5)
            difficulty = ("easy" if rng.random() < 0.5 else "hard") if finding else ""
            img = 0.5 + rng.normal(0, 0.05, (SIZE, SIZE))
            if shifted and group == "B":  # stripe noise and a burned-in bright marker, as a scanner might add
                img += 0.2 * np.sin(xx * rng.uniform(0.8, 1.6) + rng.uniform(0, 6))
                my, mx = rng.integers(1, SIZE - 7, 2)
                img[my : my + 6, mx : mx + 6] += 0.6
            if finding:
                r, c = DISCS[difficulty]
                cy, cx = rng.uniform(r + 2, SIZE - r - 2, 2)
                img += c * (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r)
            path = f"images/{s:04d}_{k}.png"
            Image.fromarray((np.clip(img, 0, 2) * 30000).astype(np.uint16)).save(root / path)
            rows.append({"path": path, "subject_id": f"p{s:04d}", "scanner": group, "finding": finding,
                         "finding_difficulty": difficulty})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


SETTINGS = ShiftSettings(size=SIZE, replicates=1, epochs=12, batch_size=16, lr=2e-3, test_fraction=0.35)


def _auroc(result: dict, tier: str, train: str, test: str) -> float:
    (cell,) = [r for r in result["summary"] if (r["tier"], r["train"], r["test"]) == (tier, train, test)]
    return cell["auroc_mean"]


@pytest.mark.slow
def test_a_detector_trained_on_one_scanner_loses_auroc_on_the_other(tmp_path):
    result = shift_experiment(_cohort(tmp_path / "shifted", shifted=True), "scanner", "finding",
                              settings=SETTINGS)
    assert result["tiers"] == ["easy", "hard"] and result["train_groups"] == ["A", "B", "all"]
    assert _auroc(result, "easy", "A", "A") > 0.9  # the task is learnt
    assert _auroc(result, "easy", "A", "A") - _auroc(result, "easy", "A", "B") > 0.1  # ... and won't travel
    gap_a = next(g for g in result["gaps"] if (g["tier"], g["train"]) == ("easy", "A"))
    assert gap_a["gap"] > 0.1
    # The paired test: on B's test subjects, B's own model beats A's (both scored on the same subjects).
    (on_b,) = [c for c in result["contrasts"]
               if (c["tier"], c["metric"], c["test"], c["versus"]) == ("easy", "auroc", "B", "A")]
    assert on_b["headline"] and on_b["difference"] > 0.1 and on_b["verdict"] == "own group better"
    # Harder lesions are harder: the mixed model's AUROC on everyone falls from easy to hard.
    assert _auroc(result, "easy", "all", "all") > _auroc(result, "hard", "all", "all")
    # Subject-level hold-out: every cell of a tier is scored on the same test subjects.
    sizes = {r["n_test"] for r in result["summary"] if r["tier"] == "easy" and r["test"] == "all"}
    assert len(sizes) == 1


@pytest.mark.slow
def test_without_an_acquisition_difference_the_model_travels_and_the_cli_writes_its_files(tmp_path):
    manifest = _cohort(tmp_path / "control", shifted=False, seed=1)
    out = tmp_path / "out"
    args = ["experiment", "shift", "--manifest", str(manifest), "--by", "scanner", "--target", "finding",
            "--tiers", "easy", "--size", str(SIZE), "--replicates", "2", "--epochs", "12",
            "--batch-size", "16", "--lr", "2e-3", "--test-fraction", "0.35", "--out", str(out)]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    assert "tier easy" in run.output and "on the same test subjects" in run.output
    result = json.loads((out / "shift.json").read_text())
    assert result["tiers"] == ["easy"] and result["settings"]["replicates"] == 2
    for gap in result["gaps"]:
        if gap["train"] != "all":
            assert abs(gap["gap"]) < 0.1, gap
    assert all(r["replicates"] == 2 and r["auroc_sd"] is not None for r in result["summary"])
    assert all(c["ci"] is not None and c["train_sd"] is not None for c in result["contrasts"])
    assert (out / "shift_auroc.png").stat().st_size > 10_000
    assert set(pd.read_csv(out / "shift.csv").columns) >= {"tier", "train", "test", "auroc_mean", "auroc_sd"}


def test_bad_requests_name_the_problem(tmp_path):
    manifest = _cohort(tmp_path / "c", shifted=False, n_subjects=12)
    with pytest.raises(EmbedxError, match="--by 'site' is not a column"):
        shift_experiment(manifest, "site", "finding", settings=SETTINGS)
    with pytest.raises(EmbedxError, match="--tiers medium not found"):
        shift_experiment(manifest, "scanner", "finding", tiers=["medium"], settings=SETTINGS)
    run = CliRunner().invoke(app, ["experiment", "shift", "--manifest", str(manifest), "--by", "scanner",
                                   "--task", "segment", "--out", str(tmp_path / "o")])
    assert run.exit_code != 0 and "--dims 3" in str(run.exception or run.output)
