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


def test_null_labels_are_rarely_found_and_strong_planted_ones_always(phantom_latents, monkeypatch) -> None:
    import embedx.analysis.calibration_power as power_module

    # the permutation machinery alone (re-running the probe on each label is tested below, and costs seconds
    # per label for the 5 % class, whose CI the probe builds from refits)
    monkeypatch.setattr(power_module, "probe_encoded", lambda *args: True)
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
    # the smallest p is 1/100 = 0.01 and the threshold 0.05/24 = 0.0021: said with both numbers
    assert "the smallest is 1/100 = 0.01) can fall below" in result.text[0] and "= 0.0021" in result.text[0]


def _random_cohort(n_subjects: int = 400, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Latents with no structure: ~2 images per subject, 16 dims (fast to probe)."""
    rng = np.random.default_rng(seed)
    sub = np.repeat(np.arange(n_subjects), rng.integers(1, 4, n_subjects))
    X = rng.normal(size=(n_subjects, 16))[sub] + rng.normal(size=(len(sub), 16))
    return X, np.array([f"p{s}" for s in sub])


def test_a_class_in_fewer_subjects_than_folds_is_untestable_not_found() -> None:
    """1 % of 400 subjects = 4 positives: `embedx probe` skips that class, so calibrate must not report power
    for it (before: 0.54-0.67 at d 3-4, for an attribute the probe never tests)."""
    from embedx.analysis.calibration import _planted_binary
    from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe

    X, groups = _random_cohort()
    settings = CalibrationSettings(
        n_null=0, n_planted=24, prevalences=(0.01,), effects=(2.5,), correlations=(), family_size=10
    )
    (row,) = calibrate_arrays(X, groups, {}, settings).power
    assert row["positive_subjects"] == 4 and "fewer than 5 subjects" in (row["untestable"] or "")
    assert row["power"] == 0 and row["found"] == 0 and row["ci"] == [0.0, 0.0]
    text = calibrate_arrays(X, groups, {}, settings).text[0]
    assert "cannot be found" in text and "probability" not in text
    # the rule is the probe's: the same kind of label, probed, is skipped
    rng = np.random.default_rng(0)
    subjects = np.unique(groups, return_inverse=True)[1]
    label = _planted_binary(rng.normal(size=400), 0.01, 2.5, 4, rng)[subjects]
    config = ProbeConfig(n_permutations=0)
    probed = cross_validated_probe(X, label.astype(str), groups, "binary", config=config)
    assert probed.skipped and not probed.encoded


def test_the_effect_printed_is_the_effect_planted(monkeypatch) -> None:
    """At 2 % prevalence the liability model cannot plant d = 4 (rho caps at 0.999): the sentence and the
    table must say what was planted, not "d = 4" as if reached."""
    import embedx.analysis.calibration_power as power_module
    from embedx.analysis.tables import calibration_rich_table

    monkeypatch.setattr(power_module, "probe_encoded", lambda *args: True)  # this test is about the effect
    X, groups = _random_cohort()
    settings = CalibrationSettings(
        n_null=0, n_planted=10, prevalences=(0.02, 0.5), effects=(4.0, 0.5), correlations=(), family_size=10
    )
    result = calibrate_arrays(X, groups, {}, settings)
    rows = {(r["prevalence"], r["effect"]): r for r in result.power}
    capped, fine = rows[(0.02, 4.0)], rows[(0.5, 0.5)]
    assert not capped["effect_reached"] and capped["realized_effect"] < 3.2 and capped["max_effect"] < 3
    assert fine["effect_reached"]
    sentence = next(line for line in result.text if "prevalence 2%" in line and "asked 4" in line)
    assert "d = 4 " not in sentence and f"d = {capped['realized_effect']:.2g}" in sentence
    assert any("d = 0.5 " in line for line in result.text)  # a reachable effect is printed as asked
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(calibration_rich_table(result.to_dict()))
    assert "(asked 4)" in console.export_text()


def test_found_means_what_the_probe_would_call_encoded(monkeypatch) -> None:
    """A label that clears alpha / m is found only if the probe, re-run on it, also calls it encoded (CI clear
    of chance, not degenerate): calibrate used to count the p-value alone."""
    import embedx.analysis.calibration_power as power_module
    from embedx.analysis.calibration_power import probe_encoded

    X, groups = _random_cohort(200)
    settings = CalibrationSettings(
        n_null=0, n_planted=6, prevalences=(0.5,), effects=(2.0,), correlations=(), family_size=4
    )
    calls: list[float] = []

    def never(*args: object) -> bool:
        calls.append(float(args[4]))  # the label's permutation p
        return False

    monkeypatch.setattr(power_module, "probe_encoded", never)
    (row,) = calibrate_arrays(X, groups, {}, settings).power
    assert row["passed_p"] == 6 and row["probe_checked"] == 6 and all(p < 0.05 / 4 for p in calls)
    assert row["found"] == 0 and row["power"] == 0  # the p-value alone no longer counts
    monkeypatch.undo()
    # the real check: the probe's verdict, not the p handed to it
    subjects = np.unique(groups, return_inverse=True)[1]
    rng = np.random.default_rng(1)
    noise = (rng.random(200) < 0.5).astype(int)[subjects]  # no link to the latents
    assert not probe_encoded(X, noise, subjects, False, 1e-4, 4, 0.05, 5, 0, 500)
    strong = (X[:, 0] + X[:, 1] > 0).astype(int)
    assert probe_encoded(X, strong, subjects, False, 1e-4, 4, 0.05, 5, 0, 500)
    assert not probe_encoded(X, strong, subjects, False, 0.05, 4, 0.05, 5, 0, 500)  # p * m = 0.2


def test_planted_labels_are_dealt_over_several_probe_seeds(monkeypatch) -> None:
    """One fold split and one null for every label of a cell made the interval cover 86-94 %: the labels are
    spread over `fold_seeds` seeds, each with its own label-free folds and null."""
    import embedx.analysis.calibration_power as power_module

    built: list[int] = []
    real = power_module.subject_folds

    def spy(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
        built.append(seed)
        return real(groups, folds, seed)

    monkeypatch.setattr(power_module, "subject_folds", spy)
    monkeypatch.setattr(power_module, "probe_encoded", lambda *args: True)
    X, groups = _random_cohort(200)
    settings = CalibrationSettings(
        n_null=0, n_planted=10, prevalences=(0.5,), effects=(0.5,), correlations=(), fold_seeds=5, seed=3
    )
    (row,) = calibrate_arrays(X, groups, {}, settings).power
    assert row["fold_seeds"] == 5 and sorted(set(built)) == [5, 6, 7, 8, 9]


def test_a_planted_class_of_one_subject_has_no_effect_size_and_no_numpy_warning() -> None:
    """A 1 % prevalence on a pilot store plants one positive: its effect is NaN, said without a raw
    RuntimeWarning in the user's terminal."""
    import warnings

    from embedx.analysis.calibration_power import _cohens_d, _finite_mean

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(_cohens_d(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 0, 0, 0])))
        assert np.isnan(_finite_mean([float("nan")])) and _finite_mean([1.0, float("nan"), 3.0]) == 2.0


def test_the_holm_threshold_counts_the_tests_of_the_stored_probe_table(synth_store, tmp_path) -> None:
    """Skipped probes are not tests: the m is the family size the probe table printed, not attributes x
    models; a store without probe results falls back to the latter."""
    import shutil

    from embedx.analysis.calibration import _table_family_size

    path = tmp_path / "copy.h5"
    shutil.copy(synth_store(0.0), path)
    with Store.open(path, mode="a") as store:
        every = len(store.models()) * len(store.schema())
        assert _table_family_size(store, every) == every
        store.write_analysis("probes", "m__a", {"model": "m", "attribute": "a", "family_size": every - 4})
        assert _table_family_size(store, every) == every - 4
