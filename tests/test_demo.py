"""`embedx demo --quick` end to end, as a user runs it: the findings must match the cohort's ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "embedx-demo"
    env = {**os.environ, "EMBEDX_NO_PROGRESS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "embedx", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    (out / "demo.log").write_text(completed.stdout + completed.stderr, encoding="utf-8")
    return out


def test_demo_writes_store_report_and_prints_the_dashboard_command(demo_dir: Path) -> None:
    log = (demo_dir / "demo.log").read_text(encoding="utf-8")
    assert (demo_dir / "report" / "report.html").is_file()
    assert f"embedx dashboard {(demo_dir / 'store.h5').resolve()}" in log
    with h5py.File(demo_dir / "store.h5", "r", locking=False) as store:
        assert {"vae", "dae", "cnn"} <= set(store["embeddings"])
        n = store["samples/id"].shape[0]
        for model in ("vae", "dae", "cnn"):
            assert store[f"embeddings/{model}/encoded"][()].sum() == n
        assert "tsne" in store["projections/vae"]


def test_report_json_agrees_with_ground_truth(demo_dir: Path) -> None:
    truth = json.loads((demo_dir / "cohort" / "ground_truth.json").read_text(encoding="utf-8"))
    report = json.loads((demo_dir / "report" / "report.json").read_text(encoding="utf-8"))
    probes = [p for p in report["probes"] if p["model"] in ("vae", "dae")]
    for attribute, spec in truth["attributes"].items():
        if not spec.get("known_answer", True):
            continue
        rows = [p for p in probes if p["attribute"] == attribute]
        assert rows, f"no probe for {attribute} in report.json"
        found = any(p["encoded"] for p in rows)
        if spec["in_pixels"]:
            assert found, f"{attribute} is in the pixels but no VAE or DAE probe found it: {rows}"
        else:
            assert not found, f"{attribute} has no pixel effect but a probe called it encoded: {rows}"
    insurance = [p for p in probes if p["attribute"] == "insurance"]
    assert all(p["ci"][0] <= p["chance"] + 0.05 for p in insurance)


def test_demo_summary_says_everything_agrees(demo_dir: Path) -> None:
    summary = json.loads((demo_dir / "demo_summary.json").read_text(encoding="utf-8"))
    assert summary["all_agree"], summary["attributes"]
    assert {row["attribute"] for row in summary["attributes"]} >= {"site", "sex", "age", "insurance"}


def test_report_shows_how_far_to_trust_the_verdicts(demo_dir: Path) -> None:
    report = json.loads((demo_dir / "report" / "report.json").read_text(encoding="utf-8"))
    calibration = {c["model"]: c for c in report["calibration"]}
    assert {"vae", "dae"} <= set(calibration)
    for result in calibration.values():
        assert result["false_positive_rate"] <= 0.15 and result["n_null"] >= 50
        strongest = max(
            result["power"], key=lambda r: (r["kind"] == "binary", r["prevalence"] or 0, r["effect"])
        )
        assert strongest["power"] >= 0.8  # a balanced attribute with a large effect is found on these latents
    html = (demo_dir / "report" / "report.html").read_text(encoding="utf-8")
    assert "How far to trust these verdicts" in html and "Holm over" in html
