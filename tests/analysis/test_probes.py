"""Probes: known answers at array level, subject leakage, Holm family, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.analysis.folds import stratified_folds
from embedx.analysis.probe_result import judge_family
from embedx.analysis.probes import (
    ProbeConfig,
    add_normalized_encoding,
    probe_arrays,
    run_probes,
)
from embedx.analysis.results import PROBE_FIELDS, VERDICT_ENCODED, VERDICT_NOT_FOUND, probe_table
from embedx.errors import EmbedxError
from embedx.store.h5store import Store

FAST = ProbeConfig(n_permutations=200, n_bootstrap=400, c_grid=(0.1, 1.0))


@pytest.fixture(scope="module")
def cohort() -> dict[str, np.ndarray]:
    """300 subjects x 2 images; A linearly in the latents, B pure noise, age linear plus noise."""
    rng = np.random.default_rng(0)
    n_subjects, per = 300, 2
    subject = np.repeat(np.arange(n_subjects), per)
    a = rng.integers(0, 3, n_subjects)[subject]
    b = rng.integers(0, 2, n_subjects)[subject]
    age = rng.uniform(20, 80, n_subjects)[subject]
    X = rng.normal(size=(len(subject), 24))
    X[:, 0] += 1.5 * a
    X[:, 1] += (age - 50) / 10
    return {"X": X, "a": a, "b": b, "age": age, "groups": subject.astype(str)}


def test_encoded_attribute_is_found_and_noise_is_not(cohort) -> None:
    found = probe_arrays(
        cohort["X"], cohort["a"], cohort["groups"], "categorical", attribute="A", config=FAST
    )
    noise = probe_arrays(cohort["X"], cohort["b"], cohort["groups"], "binary", attribute="B", config=FAST)
    for r in (found, noise):
        assert set(PROBE_FIELDS) <= set(r)
    assert found["encoded"] and found["verdict"] == VERDICT_ENCODED
    assert found["ci"][0] > found["chance"]
    assert found["chance"] == 1 / 3  # exactly 1/K: the balanced accuracy of any label-blind predictor
    assert found["auc"] > 0.75
    assert found["p_value"] < 0.01
    assert found["classes"] == {str(k): int(np.sum(cohort["a"] == k)) for k in range(3)}
    assert not noise["encoded"] and noise["verdict"] == VERDICT_NOT_FOUND
    assert noise["ci"][0] <= noise["chance"] + 0.02
    assert noise["chance"] == 0.5


def test_continuous_attribute_beats_the_median_baseline(cohort) -> None:
    r = probe_arrays(cohort["X"], cohort["age"], cohort["groups"], "continuous", attribute="age", config=FAST)
    assert r["metric"] == "mae" and r["classes"] == {}
    assert r["score"] < 0.7 * r["chance"]
    assert r["ci"][1] < r["chance"]
    assert r["r2"] > 0.3
    assert r["encoded"]


def test_grouped_folds_keep_subjects_on_one_side() -> None:
    groups = np.repeat(np.arange(40), 3).astype(str)
    y = np.repeat(np.arange(40) % 2, 3)
    fold = stratified_folds(y, groups, 5, seed=0)
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1


def test_subject_specific_noise_is_at_chance_only_with_grouped_folds() -> None:
    """Near-duplicate images, subject-level random label: leakage finds it, grouping does not."""
    rng = np.random.default_rng(1)
    n_subjects, per, dim = 60, 5, 128
    subject = np.repeat(np.arange(n_subjects), per)
    centres = rng.normal(size=(n_subjects, dim))
    X = centres[subject] + 0.05 * rng.normal(size=(len(subject), dim))
    label = rng.integers(0, 2, n_subjects)[subject]
    grouped = probe_arrays(X, label, subject.astype(str), "binary", config=FAST)
    leaky = probe_arrays(X, label, np.arange(len(subject)).astype(str), "binary", config=FAST)
    assert not grouped["encoded"]
    assert abs(grouped["score"] - 0.5) < 0.15
    assert leaky["score"] > 0.8  # ungrouped folds "find" a label that no image carries


def test_missing_labels_and_unencoded_rows_are_excluded_and_counted(cohort) -> None:
    X = cohort["X"].copy()
    y = cohort["a"].astype(object)
    y[:10] = None
    X[10:14] = np.nan
    r = probe_arrays(X, y, cohort["groups"], "categorical", config=FAST)
    assert r["n_missing"] == 10 and r["n_not_encoded"] == 4
    assert r["n"] == len(y) - 14


def test_tiny_classes_are_merged_or_skipped_not_crashing() -> None:
    rng = np.random.default_rng(2)
    groups = np.arange(100).astype(str)
    X = rng.normal(size=(100, 5))
    y = np.array(["a"] * 50 + ["b"] * 46 + ["c"] * 2 + ["d"] * 2, dtype=object)
    r = probe_arrays(X, y, groups, "categorical", config=FAST)
    assert r["merged_classes"] == ["c", "d"]
    assert "(other)" not in r["classes"]  # 4 subjects < 5 folds: merged class dropped, and said so
    assert r["n_dropped_small_classes"] == 4
    only_one = probe_arrays(X, np.array(["a"] * 97 + ["b"] * 3, dtype=object), groups, "binary", config=FAST)
    assert only_one["skipped"] and not only_one["encoded"]
    assert only_one["verdict"].startswith("skipped")
    # the attribute's subjects, both classes, not just the class that was left after the small one went
    assert only_one["n_subjects"] == 100 and only_one["n"] == 100
    assert "a: 97, b: 3" in only_one["skipped"]


def test_holm_family_can_overturn_a_single_test(cohort) -> None:
    results = [
        {"metric": "balanced_accuracy", "ci": [0.6, 0.7], "chance": 0.5, "p_value": p}
        for p in (0.01, 0.02, 0.03)
    ]
    judged = judge_family(results)
    assert [r.encoded for r in judged] == [True, True, True]  # 0.03, 0.04, 0.03
    assert all(r.family_size == 3 for r in judged)
    results.append({"metric": "balanced_accuracy", "ci": [0.6, 0.7], "chance": 0.5, "p_value": 0.2})
    judged = judge_family(results)
    assert [r.p_holm for r in judged] == pytest.approx([0.04, 0.06, 0.06, 0.2])
    assert [r.encoded for r in judged] == [True, False, False, False]
    assert all(r.family_size == 4 for r in judged)


def test_probe_table_has_models_as_rows_and_attributes_as_columns() -> None:
    results = [
        {"model": m, "attribute": a, "score": s, "ci": [s - 0.1, s + 0.1], "encoded": True}
        for m, a, s in [("vae", "site", 0.9), ("vae", "sex", 0.7), ("dae", "site", 0.95), ("dae", "sex", 0.6)]
    ]
    table = probe_table(results)
    assert list(table.index) == ["vae", "dae"] and list(table.columns) == ["site", "sex"]
    assert table.loc["dae", "sex"] == 0.6
    assert probe_table(results, value="formatted").loc["vae", "site"] == "0.90 [0.80, 1.00]*"


STORE_CFG = ProbeConfig(n_permutations=500, n_bootstrap=500, c_grid=(0.1, 1.0))


def test_synthetic_cohort_injected_attributes_found_pure_label_not(synth_store) -> None:
    path = synth_store(1.0)
    results = run_probes(
        path, models=["pixels-pca"], attributes=["site", "sex", "age", "insurance"], config=STORE_CFG
    )
    by = {r["attribute"]: r for r in results}
    assert by["site"]["encoded"] and by["sex"]["encoded"] and by["age"]["encoded"]
    assert not by["insurance"]["encoded"]
    assert by["insurance"]["verdict"] == VERDICT_NOT_FOUND
    assert all(r["family_size"] == 4 for r in results)
    with Store.open(path) as store:
        stored = store.read_analysis("probes", "pixels-pca__site")
    assert stored["score"] == pytest.approx(by["site"]["score"]) and stored["encoded"] is True


def test_synthetic_cohort_at_strength_zero_site_is_not_found(synth_store) -> None:
    results = run_probes(
        synth_store(0.0), models=["pixels-pca"], attributes=["site", "sex"], config=STORE_CFG, write=False
    )
    by = {r["attribute"]: r for r in results}
    assert not by["site"]["encoded"]
    assert by["sex"]["encoded"]  # anatomy is not scaled by the acquisition strength


def test_unknown_model_or_attribute_names_what_exists(synth_store) -> None:
    with pytest.raises(EmbedxError, match="pixels-pca"):
        run_probes(synth_store(1.0), models=["nope"], write=False)
    with pytest.raises(EmbedxError, match="no attribute named 'colour'"):
        run_probes(synth_store(1.0), attributes=["colour"], write=False)


def test_normalized_encoding_uses_the_cnn_trained_on_that_attribute() -> None:
    results = [
        {"model": "vae", "attribute": "site", "metric": "balanced_accuracy", "score": 0.7, "chance": 0.5},
        {
            "model": "cnn-site",
            "attribute": "site",
            "metric": "balanced_accuracy",
            "score": 0.9,
            "chance": 0.5,
        },
        {"model": "vae", "attribute": "sex", "metric": "balanced_accuracy", "score": 0.8, "chance": 0.5},
    ]
    results = add_normalized_encoding(results, {"cnn-site": "site"})
    assert results[0]["normalized_encoding"] == pytest.approx(0.5)
    assert results[0]["normalized_by"] == "cnn-site"
    assert "normalized_encoding" not in results[2]


def test_probe_cli_writes_the_design_card_document(synth_store, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from embedx.cli import app

    out = tmp_path / "probes.json"
    args = [
        "probe",
        str(synth_store(1.0)),
        "--attributes",
        "site,insurance",
        "--name",
        "pixels-pca",
        "--permutations",
        "300",
        "--bootstrap",
        "200",
        "--json",
        str(out),
        "--no-write",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "not distinguishable from chance" in result.output and "encoded" in result.output
    doc = json.loads(out.read_text())
    assert list(doc)[:4] == ["embedx_version", "store", "probes", "fairness"]
    site = next(p for p in doc["probes"] if p["attribute"] == "site")
    assert site["metric"] == "balanced_accuracy" and site["encoded"] is True
    assert isinstance(site["ci"], list) and len(site["ci"]) == 2 and site["n"] == 400
    assert set(site["classes"]) == {"north", "south", "east", "west"}
    bad = CliRunner().invoke(app, ["probe", str(synth_store(1.0)), "--attributes", "colour", "--no-write"])
    assert bad.exit_code != 0


def test_rbf_kernel_exact_and_nystroem_paths_find_the_signal(cohort) -> None:
    exact = ProbeConfig(kernel="rbf", n_permutations=200, n_bootstrap=200, c_grid=(1.0,))
    approx = ProbeConfig(
        kernel="rbf",
        n_permutations=200,
        n_bootstrap=200,
        c_grid=(1.0,),
        rbf_exact_max_rows=100,
        nystroem_components=100,
    )
    r_exact = probe_arrays(cohort["X"], cohort["a"], cohort["groups"], "categorical", config=exact)
    r_approx = probe_arrays(cohort["X"], cohort["a"], cohort["groups"], "categorical", config=approx)
    assert r_exact["estimator"] == "SVC(rbf, balanced)" and r_approx["estimator"].startswith("Nystroem")
    assert r_exact["encoded"] and r_approx["encoded"]


def test_normalized_encoding_read_from_a_cnn_in_the_store(tmp_path) -> None:
    """A model of kind 'cnn' whose config says `data: {label: site}` is the supervised bound for site."""
    from embedx.store.h5store import write_store_from_arrays

    rng = np.random.default_rng(5)
    n = 240
    site = rng.choice(["a", "b", "c"], n)
    onehot = np.eye(3)[np.searchsorted(["a", "b", "c"], site)]
    weak = rng.normal(size=(n, 6)) + 0.8 * np.c_[onehot, np.zeros((n, 3))]
    strong = rng.normal(size=(n, 6)) + 3.0 * np.c_[onehot, np.zeros((n, 3))]
    path = write_store_from_arrays(
        tmp_path / "s.h5",
        [f"i{i}" for i in range(n)],
        [f"s{i}" for i in range(n)],
        pd.DataFrame({"site": site}),
        None,
        {"vae": weak, "cnn-site": strong},
        embedding_attrs={"cnn-site": {"kind": "cnn", "config": "data:\n  label: site\n"}},
    )
    results = run_probes(
        path, config=ProbeConfig(n_permutations=200, n_bootstrap=200, c_grid=(0.1,)), write=False
    )
    vae = next(r for r in results if r["model"] == "vae")
    cnn = next(r for r in results if r["model"] == "cnn-site")
    expected = (vae["score"] - vae["chance"]) / (cnn["score"] - vae["chance"])
    assert vae["normalized_by"] == "cnn-site"
    assert vae["normalized_encoding"] == pytest.approx(expected)
    assert 0 < vae["normalized_encoding"] < 1


def test_infinite_values_count_as_missing_not_as_a_crash(cohort) -> None:
    age = cohort["age"].copy()
    age[:3] = np.inf
    age[3] = -np.inf
    r = probe_arrays(cohort["X"], age, cohort["groups"], "continuous", config=FAST)
    assert r["n_missing"] == 4 and r["n"] == len(age) - 4 and r["encoded"]


def test_the_tuning_score_is_scikit_learns_balanced_accuracy() -> None:
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    from embedx.analysis.linear_probe import balanced_accuracy

    rng = np.random.default_rng(5)
    for trial in range(200):
        n, k = int(rng.integers(2, 60)), int(rng.integers(2, 6))
        y = rng.integers(0, k, n) if trial % 2 else rng.choice(["a", "b", "c"], n)
        pred = rng.integers(0, k + 1, n) if trial % 2 else rng.choice(["a", "b", "c", "d"], n)  # unseen
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            expected = balanced_accuracy_score(y, pred)
        assert balanced_accuracy(y, pred) == pytest.approx(expected, abs=1e-12)


def test_stratified_group_folds_are_scikit_learns_folds() -> None:
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    from embedx.analysis.folds import stratified_group_folds

    rng = np.random.default_rng(11)
    for trial in range(60):
        n_subjects, folds = int(rng.integers(8, 300)), int(rng.integers(2, 6))
        sizes = rng.integers(1, 5, n_subjects)
        groups = np.repeat(rng.permutation(n_subjects) * 7, sizes)  # ids neither sorted nor contiguous
        prevalence = (0.03, 0.2, 0.5)[trial % 3]
        strata = (rng.random(len(groups)) < prevalence).astype(int)
        if trial % 4 == 0:  # three classes
            strata = strata + rng.integers(0, 2, len(groups))
        expected = np.full(len(groups), -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                splits = list(StratifiedGroupKFold(folds, shuffle=True, random_state=trial).split(
                    np.zeros(len(groups)), strata, groups))
            except ValueError:
                with pytest.raises(ValueError):
                    stratified_group_folds(strata, groups, folds, trial)
                continue
        for f, (_, test) in enumerate(splits):
            expected[test] = f
        np.testing.assert_array_equal(stratified_group_folds(strata, groups, folds, trial), expected)


def test_a_continuous_label_fixed_per_subject_is_stratified_by_subject() -> None:
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 4, 400)
    groups = np.repeat(np.arange(400), sizes)
    age = np.repeat(rng.normal(60, 12, 400), sizes)
    fold = stratified_folds(age, groups, 5, seed=0, continuous=True)
    per_subject = pd.Series(fold).groupby(groups).nunique()
    assert (per_subject == 1).all()
    subject_age = pd.Series(age).groupby(groups).first().to_numpy()
    subject_fold = pd.Series(fold).groupby(groups).first().to_numpy()
    quintile = np.searchsorted(np.quantile(subject_age, [0.2, 0.4, 0.6, 0.8]), subject_age)
    counts = pd.crosstab(quintile, subject_fold).to_numpy()
    assert counts.max() - counts.min() <= 1  # each fifth of the subjects is dealt evenly over the folds


def test_c_is_left_untuned_with_a_note_when_a_class_has_fewer_subjects_than_inner_folds() -> None:
    from embedx.analysis.linear_probe import LinearProbe

    X = np.random.default_rng(0).normal(size=(10, 3))
    probe = LinearProbe().fit(X, np.repeat([0, 1], 5), np.repeat([0, 1], 5))  # one subject per class
    assert any("C not tuned" in note for note in probe.notes_), probe.notes_


def test_folds_fitted_on_threads_give_the_serial_result(cohort, monkeypatch) -> None:
    """The folds of a probe run on threads (one per core): the result, score, CI, p-value and out-of-fold
    predictions alike, is the one a serial run gives; and a fit on `rows_of_X` equals a fit on the copy."""
    from embedx import parallel
    from embedx.analysis.linear_probe import LinearProbe

    seen: set[str] = set()
    real_map = parallel.map_in_threads

    def recording(fn, items):
        import threading

        def wrapped(item):
            seen.add(threading.current_thread().name)
            return fn(item)

        return real_map(wrapped, items)

    monkeypatch.setattr("embedx.analysis.probe_core.map_in_threads", recording)
    results = {}
    for threads in ("1", "3"):
        monkeypatch.setenv("EMBEDX_PROBE_THREADS", threads)
        results[threads] = [probe_arrays(cohort["X"], cohort[name], cohort["groups"], kind,
                                         attribute=name, config=FAST)
                            for name, kind in (("a", "categorical"), ("age", "continuous"))]
    assert any(name.startswith("embedx-fold") for name in seen)  # the second run did use the pool
    for serial, threaded in zip(results["1"], results["3"], strict=True):
        for key in ("score", "ci", "p_value", "chance", "auc", "r2", "predicted_classes", "C_per_fold",
                    "notes"):
            assert getattr(serial, key) == getattr(threaded, key), key

    rows = np.arange(0, len(cohort["a"]), 2)
    on_rows = LinearProbe(c_grid=(0.1, 1.0)).fit(cohort["X"], cohort["a"][rows], cohort["groups"][rows],
                                                 rows_of_X=rows)
    on_copy = LinearProbe(c_grid=(0.1, 1.0)).fit(cohort["X"][rows], cohort["a"][rows], cohort["groups"][rows])
    everyone = cohort["X"]
    np.testing.assert_array_equal(on_rows.decision_function(everyone), on_copy.decision_function(everyone))


def test_the_line_under_a_pilot_probe_table_points_to_calibrate() -> None:
    from embedx.analysis.tables import family_line

    pilot = family_line([{"family_size": 3, "permutation": {"permutations": 999}, "n_subjects": 30}])
    assert "A pilot of 30 subjects finds only large effects" in pilot and "embedx calibrate" in pilot
    strata = family_line([{"family_size": 3, "permutation": {"permutations": 999}, "n_subjects": n}
                          for n in (12, 49, 400)])  # within-strata probes differ in size
    assert "2 of these 3 probes rest on fewer than" in strata and "(12-49)" in strata
    cohort = family_line([{"family_size": 3, "permutation": {"permutations": 999}, "n_subjects": 3000}])
    assert "pilot" not in cohort


def test_a_class_too_small_to_probe_is_named_beside_the_verdict() -> None:
    """A 1-subject minority (Sami among White and Black) is left out of the probe; "not encoded" must not
    hide that the group an audit may be for was never tested (it was only in the JSON)."""
    from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(41), 2).astype(str)
    y = np.array(["White"] * 40 + ["Black"] * 40 + ["Sami"] * 2, dtype=object)
    X = rng.normal(size=(len(y), 4))
    result = cross_validated_probe(X, y, groups, "categorical", attribute="ethnicity",
                                   config=ProbeConfig(n_permutations=0, n_bootstrap=0))
    assert result.merged_classes == ("Sami",) and result.n_dropped_small_classes == 2
    left = "left out of this probe (1 subject(s), 2 rows): Sami"
    assert any(left in note for note in result.notes), result.notes


def test_probe_json_survives_a_control_that_stops(synth_store, tmp_path, monkeypatch) -> None:
    """The confound controls run after the probes and may stop on a cohort they cannot harmonise; the probes'
    document is written first, and the error says where it is."""
    import json

    from typer.testing import CliRunner

    from embedx.analysis import combat
    from embedx.cli import app
    from embedx.errors import EmbedxError

    def stop(*args, **kwargs):
        raise EmbedxError("ComBat control: fewer than 2 values of 'site' have enough subjects to harmonise")

    monkeypatch.setattr(combat, "run_confound_controls", stop)
    out = tmp_path / "probes.json"
    args = ["probe", str(synth_store(1.0)), "--attributes", "site", "--name", "pixels-pca", "--permutations",
            "50", "--bootstrap", "20", "--json", str(out), "--no-write", "--controls"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, EmbedxError) and str(out) in str(result.exception)
    assert [p["attribute"] for p in json.loads(out.read_text())["probes"]] == ["site"]


def test_a_left_out_class_note_heads_the_notes_and_repeated_notes_are_merged() -> None:
    from embedx.analysis.tables import note_lines

    filler = [{"model": "vae", "attribute": f"a{i}", "notes": [f"approximate CI {i}"]} for i in range(12)]
    repeated = [{"model": m, "attribute": "site", "notes": ["the same note"]} for m in ("vae", "dae")]
    minority = {"model": "vae", "attribute": "view", "notes": [
        "class(es) seen in fewer than 5 subjects left out of this probe (3 rows): LL"]}
    lines = note_lines([*filler, *repeated, minority])
    assert lines[0].startswith("vae/view: class(es)") and "LL" in lines[0]
    assert "vae/site, dae/site: the same note" not in lines  # cut: alphabetically after the filler
    assert len(lines) == 9 and lines[-1] == "6 more note(s) in the JSON"
    assert "vae/site, dae/site: the same note" in note_lines(repeated)


def test_images_without_a_vector_are_said_under_the_table() -> None:
    """A partial import left 50 of 2,734 images without a vector; the table showed 781 (2684) and no why."""
    from embedx.analysis.tables import note_lines

    results = [{"model": "fm", "attribute": a, "n_total": 2734, "rows_encoded": 2684, "notes": []}
               for a in ("site", "sex")] + [{"model": "vae", "attribute": "site", "n_total": 2734,
                                               "rows_encoded": 2734, "notes": []}]
    lines = note_lines(results)
    assert lines == ["fm: 50 of 2734 images have no vector (not encoded, or not in the imported file) and "
                     "are in none of its probes"]
