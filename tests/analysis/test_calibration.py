"""`embedx calibrate`: the audit's false-positive rate and power, measured on a store's own latents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedx.analysis.calibration import CalibrationSettings, calibrate_arrays, run_calibration
from embedx.errors import EmbedxError
from embedx.store.h5store import Store

SMALL = CalibrationSettings(
    n_null=80,
    n_planted=48,
    prevalences=(0.05, 0.5),
    effects=(0.3, 1.5),
    correlations=(0.4,),
    null_permutations=99,
    permutations=199,
    family_size=4,
)


def test_null_labels_are_rarely_found_and_strong_planted_ones_always(phantom_latents) -> None:
    X, subjects = phantom_latents["X"], phantom_latents["subjects"]
    attributes = {"site": ("categorical", phantom_latents["site"])}
    result = calibrate_arrays(X, subjects, attributes, SMALL, model="pixels-pca")
    assert result.n_null == 80 and result.null[0]["attribute"] == "site"
    assert result.false_positive_rate <= 0.125
    assert 0.35 < result.mean_p < 0.65
    power = {(r["kind"], r["prevalence"], r["effect"]): r for r in result.power}
    strong, weak = power[("binary", 0.5, 1.5)], power[("binary", 0.5, 0.3)]
    assert strong["power"] >= 0.9 and strong["realized_effect"] > 1.0
    assert weak["power"] < strong["power"]
    assert power[("binary", 0.05, 1.5)]["power"] <= strong["power"]  # rarer is harder at the same effect
    assert power[("continuous", None, 0.4)]["power"] >= 0.8
    assert result.threshold == pytest.approx(0.05 / 4)
    assert any("probability" in line for line in result.text)
    assert result.to_dict()["power"][0]["ci"][0] <= result.to_dict()["power"][0]["power"]


def test_planted_labels_follow_the_requested_prevalence(phantom_latents) -> None:
    X, subjects = phantom_latents["X"], phantom_latents["subjects"]
    settings = CalibrationSettings(
        n_null=0, n_planted=4, prevalences=(0.2,), effects=(0.5,), correlations=(0.3,), permutations=99
    )
    result = calibrate_arrays(X, subjects, {}, settings)
    binary = next(r for r in result.power if r["kind"] == "binary")
    assert binary["positive_rows"] == pytest.approx(0.2 * len(X), rel=0.2)
    assert result.null == [] or all(r["n_labels"] == 0 for r in result.null)


def test_calibrate_cli_writes_json_figure_and_the_store(synth_store, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from embedx.cli import app

    path = synth_store(1.0)
    out, figure = tmp_path / "calibration.json", tmp_path / "power.png"
    args = [
        "calibrate",
        str(path),
        "--name",
        "pixels-pca8",
        "--null",
        "24",
        "--planted",
        "12",
        "--prevalences",
        "0.1,0.5",
        "--effects",
        "1.0",
        "--correlations",
        "0.5",
        "--json",
        str(out),
        "--figure",
        str(figure),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "false-positive rate" in result.output.lower()
    doc = json.loads(out.read_text())
    assert doc["calibration"][0]["model"] == "pixels-pca8" and doc["calibration"][0]["n_null"] == 24
    assert figure.read_bytes()[:4] == b"\x89PNG"
    with Store.open(path) as store:
        stored = store.read_analysis("calibration", "pixels-pca8")
    with Store.open(path) as store:
        family = len(store.models()) * len(store.schema())  # what `embedx probe` corrects for
    assert stored["family_size"] == family
    bad = CliRunner().invoke(app, ["calibrate", str(path), "--prevalences", "0.5,2"])
    assert bad.exit_code != 0


def test_too_small_a_cohort_is_refused_with_a_reason() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(EmbedxError, match="at least 20 subjects"):
        calibrate_arrays(rng.normal(size=(12, 3)), np.arange(12).astype(str), {})
    with pytest.raises(EmbedxError, match="prevalences"):
        CalibrationSettings(prevalences=(0.0,))


def test_run_calibration_defaults_match_the_probe_table(synth_store) -> None:
    path = synth_store(0.0)
    with Store.open(path) as store:
        family = len(store.models()) * len(store.schema())
    results = run_calibration(
        path,
        ["pixels-pca8"],
        CalibrationSettings(
            n_null=16,
            n_planted=8,
            prevalences=(0.5,),
            effects=(1.0,),
            correlations=(0.5,),
            permutations=199,
            null_permutations=49,
            family_size=family,
        ),
        write=False,
    )
    assert results[0].family_size == family and results[0].model == "pixels-pca8"


def test_null_labels_vary_within_subjects_like_the_attribute_they_match(phantom_latents) -> None:
    X, subjects = phantom_latents["X"], phantom_latents["subjects"]
    rng = np.random.default_rng(5)
    view = rng.choice(["AP", "PA"], len(subjects))  # per image, like a view
    settings = CalibrationSettings(n_null=40, n_planted=0, null_permutations=99, family_size=24)
    result = calibrate_arrays(X, subjects, {"view": ("binary", view)}, settings)
    row = result.null[0]
    assert row["varies_within_subject"] and row["n_labels"] == 40 and row["false_positive_rate"] <= 0.15
    # alpha / 24 is below 1 / 100: with 99 permutations a Holm-level false positive cannot be measured
    assert row["passes_holm"] is None and result.false_positive_rate_holm is None
    assert "not measured" in result.text[0]
