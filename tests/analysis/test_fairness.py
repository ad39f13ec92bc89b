"""Fairness: numbers equal fairlearn's, a known TPR gap is found, small groups are marked, not dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    true_positive_rate,
)
from statsmodels.stats.proportion import proportion_confint

from embedx.analysis.fairness import FairnessConfig, fairness_arrays, fairness_from_predictions, run_fairness
from embedx.analysis.fairness_metrics import GroupRules
from embedx.analysis.probe_core import ProbeConfig
from embedx.analysis.results import FAIRNESS_FIELDS
from embedx.errors import EmbedxError
from embedx.store.h5store import Store

FAST = FairnessConfig(
    probe=ProbeConfig(c_grid=(0.1, 1.0)),
    rules=GroupRules(n_bootstrap=200, n_bootstrap_auc=30, n_permutations=200),
)


def _block(group: str, positives: int, tp: int, negatives: int, fp: int) -> pd.DataFrame:
    """Rows of one group with exactly `tp` of `positives` and `fp` of `negatives` predicted positive."""
    y = np.r_[np.ones(positives), np.zeros(negatives)].astype(int)
    pred = np.r_[np.ones(tp), np.zeros(positives - tp), np.ones(fp), np.zeros(negatives - fp)].astype(int)
    prob = np.where(pred == 1, 0.8, 0.2) + np.linspace(-0.05, 0.05, len(y))
    return pd.DataFrame({"group": group, "y": y, "pred": pred, "prob": prob})


def _hand_built() -> pd.DataFrame:
    frame = pd.concat(
        [
            _block("A", 50, 40, 50, 5),  # TPR 0.8, FPR 0.1
            _block("B", 50, 25, 50, 5),  # TPR 0.5, FPR 0.1
            _block("C", 4, 4, 6, 0),  # n = 10: too small to judge
        ],
        ignore_index=True,
    )
    frame["subject"] = [f"s{i}" for i in range(len(frame))]
    return frame


def test_known_tpr_gap_and_small_group_marked_not_dropped() -> None:
    f = _hand_built()
    out = fairness_from_predictions(
        "group", f["group"].to_numpy(object), f["y"], f["prob"], f["pred"], f["subject"], FAST.rules
    )
    assert out["by_group"]["A"]["tpr"] == pytest.approx(0.8)
    assert out["by_group"]["B"]["tpr"] == pytest.approx(0.5)
    assert out["equal_opportunity_difference"] == pytest.approx(0.3)
    assert out["equalized_odds_difference"] == pytest.approx(0.3)  # FPR equal, so EO = TPR gap
    assert out["by_group"]["C"]["too_small"] is True and out["by_group"]["C"]["n"] == 10
    assert out["groups_excluded_from_gaps"] == ["C"]
    assert not out["by_group"]["A"]["too_small"]
    low, high = out["by_group"]["A"]["ci"]["tpr"]
    assert low < 0.8 < high
    small = out["by_group"]["C"]  # 4 positive subjects: no interval of zero width passed off as certainty
    assert small["ci"]["tpr"] == [None, None] and small["ci"]["auc"] == [None, None]
    assert small["ci"]["fpr"][0] is not None and "fewer than 5 subjects" in small["ci_note"]
    one = f[f["group"] == "A"].copy()  # one subject's 7 images: its accuracy and ECE cannot be resampled
    one.loc[one.index[:7], ["group", "subject"]] = ["D", "d0"]
    merged = pd.concat([f[f["group"] != "A"], one], ignore_index=True)
    lone = fairness_from_predictions("group", merged["group"].to_numpy(object), merged["y"], merged["prob"],
                                     merged["pred"], merged["subject"], FAST.rules)["by_group"]["D"]
    assert lone["n_subjects"] == 1 and lone["n"] == 7
    missing = merged["group"].to_numpy(object).copy()
    missing[:3] = None  # three rows (of three subjects) without the sensitive attribute
    counted = fairness_from_predictions("group", missing, merged["y"], merged["prob"], merged["pred"],
                                        merged["subject"], FAST.rules)
    assert counted["n_missing_sensitive"] == 3 and counted["n_missing_sensitive_subjects"] == 3
    assert counted["n_subjects"] == merged["subject"].nunique() - 3
    assert all(lone["ci"][k] == [None, None] for k in ("ece", "accuracy", "selection_rate", "auc"))


def test_numbers_equal_fairlearns_own_functions() -> None:
    rng = np.random.default_rng(0)
    n = 600
    s = rng.choice(["x", "y", "z"], n, p=[0.5, 0.3, 0.2])
    y = rng.integers(0, 2, n)
    prob = np.clip(0.35 * y + 0.2 * (s == "x") + rng.uniform(0, 0.5, n), 0, 1)
    pred = (prob > 0.5).astype(int)
    out = fairness_from_predictions(
        "s", s.astype(object), y, prob, pred, np.arange(n).astype(str), FAST.rules
    )
    assert set(FAIRNESS_FIELDS) - {"target"} <= set(out)
    assert out["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=s)
    )
    assert out["demographic_parity_ratio"] == pytest.approx(
        demographic_parity_ratio(y, pred, sensitive_features=s)
    )
    assert out["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=s)
    )
    assert out["equal_opportunity_difference"] == pytest.approx(
        equal_opportunity_difference(y, pred, sensitive_features=s)
    )
    frame = MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=pred, sensitive_features=s)
    for g in "xyz":
        assert out["by_group"][g]["tpr"] == pytest.approx(frame.by_group[g])
        assert out["by_group"][g]["n"] == int(np.sum(s == g))


def test_single_class_group_gives_nan_auc_with_a_reason() -> None:
    f = _hand_built()
    f.loc[f["group"] == "C", "y"] = 1  # group C: positives only
    out = fairness_from_predictions(
        "group", f["group"].to_numpy(object), f["y"], f["prob"], f["pred"], f["subject"], FAST.rules
    )
    assert out["by_group"]["C"]["auc"] is None  # undefined (NaN; null in the JSON form)
    assert "one class" in out["by_group"]["C"]["auc_note"]
    assert out["by_group"]["C"]["fpr"] is None and "no negatives" in out["by_group"]["C"]["fpr_note"]
    assert out["by_group"]["C"]["tpr"] == 0.4  # 4 of its 10 positives are predicted positive


def test_a_sensitive_attribute_of_one_value_is_named_as_such() -> None:
    """'scanner: GE' everywhere got 'fewer than 2 groups large enough to compare': a question of size, which
    it is not."""
    from embedx.analysis.tables import gap_summary

    f = _hand_built()
    f = f[f["group"] == "A"]
    out = fairness_from_predictions(
        "scanner", f["group"].to_numpy(object), f["y"], f["prob"], f["pred"], f["subject"], FAST.rules
    )
    assert out["gaps_note"] == "the sensitive attribute has one value (A): no groups to compare"
    assert gap_summary(out) == 'gaps not tested (not "no gap"): ' + out["gaps_note"]


def test_probe_fairness_on_the_synthetic_cohort(synth_store) -> None:
    path = synth_store(1.0)
    results = run_fairness(path, "sex", ["site", "age"], model="pixels-pca", config=FAST)
    by = {r["sensitive"]: r for r in results}
    assert set(by) == {"site", "age", "site|age"}  # each attribute and their intersection
    assert set(by["site"]["by_group"]) == {"north", "south", "east", "west"}
    assert set(by["age"]["by_group"]) <= {"<40", "40-59", "60-79", "80+"}
    assert "never on the scored fold" in by["site"]["operating_point"]["rule"]
    assert len(by["site"]["operating_point"]["thresholds_per_fold"]) == 5
    assert by["site"]["overall"]["auc"] > 0.85  # sex is in the pixels
    assert any(g["too_small"] for g in by["site|age"]["by_group"].values())
    with Store.open(path) as store:
        stored = store.read_analysis("fairness", "pixels-pca__sex__site")
    assert stored["demographic_parity_difference"] == pytest.approx(
        by["site"]["demographic_parity_difference"]
    )


def test_continuous_target_gets_per_group_mae() -> None:
    rng = np.random.default_rng(1)
    n = 300
    sex = rng.choice(["F", "M"], n)
    age = rng.uniform(20, 90, n)
    X = np.c_[age / 10 + rng.normal(0, 1, n), rng.normal(size=(n, 4))]
    out = fairness_arrays(
        X,
        age,
        pd.DataFrame({"sex": sex}),
        np.arange(n).astype(str),
        target_kind="continuous",
        sensitive_kinds={"sex": "binary"},
        target_name="age",
        config=FAST,
    )
    assert out[0]["by_group"]["F"]["mae"] > 0 and out[0]["mae_difference"] is not None
    assert out[0]["demographic_parity_difference"] is None


def test_multiclass_target_needs_a_positive_class() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 3))
    target = np.array(["a", "b", "c"] * 20, dtype=object)
    with pytest.raises(EmbedxError, match="--positive"):
        fairness_arrays(
            X,
            target,
            pd.DataFrame({"sex": ["F", "M"] * 30}),
            np.arange(60).astype(str),
            target_kind="categorical",
            sensitive_kinds={},
            config=FAST,
        )


def test_fairness_cli_prints_groups_and_writes_json(synth_store, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from embedx.cli import app

    out = tmp_path / "fair.json"
    args = [
        "fairness",
        str(synth_store(1.0)),
        "--target",
        "sex",
        "--sensitive",
        "site",
        "--model",
        "pixels-pca",
        "--bootstrap",
        "100",
        "--json",
        str(out),
        "--no-write",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "north" in result.output and "DP diff" in result.output
    doc = json.loads(out.read_text())
    assert doc["probes"] == [] and doc["fairness"][0]["target"] == "sex"
    assert doc["fairness"][0]["sensitive"] == "site"
    north = doc["fairness"][0]["by_group"]["north"]
    assert north["n"] > 0
    # subjects first (the too-small rule and every interval count them), images beside: "87 (358)"
    assert f"{north['n_subjects']} ({north['n']})" in result.output
    assert f"{north['positive_subjects']} ({north['positives']})" in result.output


def test_gap_evidence_under_the_null_and_under_a_real_gap() -> None:
    """No gap among five groups: the permutation p is about uniform, and the interval of the largest gap
    (picked after looking) still excludes 0 in about 5 % of cohorts, not the third that a +-1.96 se
    interval around it did. A real TPR gap: p small and the interval clear of 0."""
    rules = GroupRules(n_bootstrap=200, n_bootstrap_auc=5, n_permutations=199, min_group_n=20)
    rng = np.random.default_rng(10)
    p_values, excludes = [], []
    for _ in range(50):
        n_subjects = 400
        sizes = rng.integers(1, 3, n_subjects)
        codes = np.repeat(np.arange(n_subjects), sizes)
        group = rng.choice(list("abcde"), n_subjects)[codes].astype(object)
        y = (rng.random(len(codes)) < 0.3).astype(int)
        prob = np.clip(0.3 * y + rng.uniform(0, 0.7, len(codes)), 0, 1)
        pred = (prob > 0.5).astype(int)
        out = fairness_from_predictions("g", group, y, prob, pred, codes.astype(str), rules)
        for name in (
            "demographic_parity_difference",
            "equal_opportunity_difference",
            "equalized_odds_difference",
        ):
            gap = out.gaps[name]
            low, high = gap["ci"]
            assert low <= gap["signed_difference"] <= high
            excludes.append(low > 0)
        p_values.append(out.gaps["demographic_parity_difference"]["p_value"])
    p = np.asarray(p_values)
    assert np.mean(p < 0.05) <= 0.12 and 0.35 < p.mean() < 0.65
    assert np.mean(excludes) <= 0.12
    f = _hand_built()
    real = fairness_from_predictions(
        "group", f["group"].to_numpy(object), f["y"], f["prob"], f["pred"], f["subject"], rules
    )
    tpr_gap = real.gaps["equal_opportunity_difference"]
    assert tpr_gap["pair"] == ["A", "B"] and tpr_gap["signed_difference"] == pytest.approx(0.3)
    assert tpr_gap["ci"][0] > 0 and tpr_gap["p_value"] < 0.01


def test_too_small_counts_subjects_not_images() -> None:
    """40 images of 10 patients are 10 subjects: too few to judge at min_group_n=30."""
    f = _hand_built()
    few = pd.DataFrame(
        {
            "group": "D",
            "y": [1, 0] * 20,
            "pred": [1, 0] * 20,
            "prob": [0.8, 0.2] * 20,
            "subject": np.repeat([f"d{i}" for i in range(10)], 4),
        }
    )
    f = pd.concat([f, few], ignore_index=True)
    out = fairness_from_predictions(
        "group", f["group"].to_numpy(object), f["y"], f["prob"], f["pred"], f["subject"], FAST.rules
    )
    d = out["by_group"]["D"]
    assert d["n"] == 40 and d["n_subjects"] == 10 and d["too_small"]
    assert "D" in out["groups_excluded_from_gaps"]


def test_weighted_auc_and_ece_resamples_match_explicit_subject_resamples() -> None:
    from sklearn.metrics import roc_auc_score

    from embedx.analysis.fairness_metrics import _auc_ece_replicates, expected_calibration_error
    from embedx.analysis.stats import SubjectIndex, percentile_ci

    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(300), rng.integers(1, 4, 300))
    y = (rng.random(len(subjects)) < 0.3).astype(int)
    prob = np.clip(0.3 * y + rng.uniform(0, 0.7, len(subjects)), 0, 1)
    index = SubjectIndex(subjects)
    auc, ece = _auc_ece_replicates(
        np.zeros(len(y), dtype=int),
        y,
        prob,
        index,
        1,
        GroupRules(n_bootstrap_auc=1500),
        np.random.default_rng(1),
    )
    explicit = np.array(
        [
            (roc_auc_score(y[rows], prob[rows]), expected_calibration_error(y[rows], None, prob[rows]))
            for rows in (index.resample_rows(np.random.default_rng(2 + b)) for b in range(1500))
        ]
    )
    np.testing.assert_allclose(percentile_ci(auc[:, 0]), percentile_ci(explicit[:, 0]), atol=0.012)
    np.testing.assert_allclose(percentile_ci(ece[:, 0]), percentile_ci(explicit[:, 1]), atol=0.012)


def test_a_small_group_with_the_same_rate_but_more_spread_is_no_gap_and_a_real_one_is_found() -> None:
    """Equal TPR (0.8) in both groups, but the 60-subject group's predictions are all-or-nothing per subject
    while the majority's vary image to image; and equal MAE (5) with the minority's errors far more spread.
    Exchanging group labels called these gaps in 33 % and 29 % of cohorts; the Welch bootstrap-t must stay
    near 5 %, and still find a TPR of 0.5 against 0.8 in a 100-subject group of all-or-nothing subjects."""
    from embedx.analysis.fairness_gaps import studentized_pair_interval, studentized_test
    from embedx.analysis.stats import permutation_pvalue

    rng = np.random.default_rng(7)
    eligible = np.array([0, 1])
    misses: list[bool] = []

    def tpr_cohort(minority_tpr: float, minority: int, all_or_nothing: bool) -> float:
        n_subjects = 700 + minority
        group = (np.arange(n_subjects) >= 700).astype(int)
        positive = rng.random(n_subjects) < 0.3
        q = np.where(group == 1, minority_tpr, 0.8)
        if all_or_nothing:
            q = np.where(group == 1, (rng.random(n_subjects) < q).astype(float), q)
        codes = np.repeat(np.arange(n_subjects), 6)
        pred = (rng.random(len(codes)) < q[codes]).astype(float)
        rows = np.flatnonzero(positive[codes])
        draws = studentized_test(group[codes], pred, codes, rows, eligible, 199, rng)
        low, high = studentized_pair_interval([draws], 0, 0, 1)
        truth = 0.8 - minority_tpr
        misses.append(not low <= truth <= high)  # the majority's minus the minority's TPR
        return permutation_pvalue(draws.observed, draws.null)

    def mae_cohort() -> float:
        n_subjects = 740
        group = (np.arange(n_subjects) >= 700).astype(int)
        err = rng.gamma(2.0, 2.5, n_subjects)  # mean 5
        big = rng.random(n_subjects) < 0.15
        spread = np.where(big, rng.gamma(2.0, 9.6, n_subjects), rng.gamma(2.0, 1.25, n_subjects))  # mean 5
        err = np.where(group == 1, spread, err)
        codes = np.repeat(np.arange(n_subjects), rng.integers(1, 7, n_subjects))
        abs_err = np.abs(err[codes] + rng.normal(0, 0.3, len(codes)))
        every_row = np.arange(len(codes))
        draws = studentized_test(group[codes], abs_err, codes, every_row, eligible, 199, rng)
        return permutation_pvalue(draws.observed, draws.null)

    rates = np.array([tpr_cohort(0.8, 60, True) for _ in range(300)])
    maes = np.array([mae_cohort() for _ in range(300)])
    # exchanging group labels: 33 % and 29 %; measured here 1.3 % and 9.7 % (a 40-subject group of skewed
    # errors: a parametric Welch t-test rejects 12 % of these cohorts)
    assert np.mean(rates < 0.05) <= 0.08, np.mean(rates < 0.05)
    assert np.mean(maes < 0.05) <= 0.12, np.mean(maes < 0.05)
    found = np.array([tpr_cohort(0.5, 100, True) for _ in range(100)])
    assert np.mean(found < 0.05) >= 0.7, np.mean(found < 0.05)  # 0.88 measured
    assert np.mean(misses) <= 0.08, np.mean(misses)  # the bootstrap-t interval holds the true difference


def test_gap_p_values_are_corrected_with_holm_per_model() -> None:
    """Every tested gap of one model in one family; another model's gaps in their own."""
    from statsmodels.stats.multitest import multipletests

    from embedx.analysis.fairness import holm_over_gaps
    from embedx.analysis.fairness_metrics import FairnessResult

    def result(model: str, sensitive: str, ps: tuple[float, float, float]) -> FairnessResult:
        names = ("demographic_parity_difference", "equal_opportunity_difference", "equalized_odds_difference")
        gaps = {name: {"p_value": p} for name, p in zip(names, ps, strict=True)}
        gaps["demographic_parity_ratio"] = {"p_value": ps[0]}
        return FairnessResult(target="finding", sensitive=sensitive, by_group={}, gaps=gaps, model=model)

    results = [result("a", "sex", (0.001, 0.04, 0.2)), result("a", "age", (0.01, 0.5, 0.03)),
               result("b", "sex", (0.04, 0.9, 0.9))]  # fmt: skip
    judged = holm_over_gaps(results)
    raw = [0.001, 0.04, 0.2, 0.01, 0.5, 0.03]
    expected = multipletests(raw, method="holm")[1]
    got = [judged[i].gaps[k]["p_holm"] for i in (0, 1) for k in (
        "demographic_parity_difference", "equal_opportunity_difference", "equalized_odds_difference")]
    np.testing.assert_allclose(got, expected)
    assert judged[0].gaps["demographic_parity_ratio"]["p_holm"] == judged[0].gaps[
        "demographic_parity_difference"]["p_holm"]
    assert judged[2].gaps["demographic_parity_difference"]["p_holm"] == pytest.approx(0.12)  # 3 tests of b
    assert judged[0].gaps["equal_opportunity_difference"]["significant"] is False  # raw 0.04, Holm 0.16


def test_equalized_odds_is_tested_where_one_of_its_rates_has_no_variance() -> None:
    """TPR 1.0 in both groups and FPR 0.1 vs 0.5: the TPR test is undefined (no variance anywhere), the FPR
    one decides equalized odds; equal opportunity, a gap of exactly 0 with nothing to test, gets p = 1."""
    rng = np.random.default_rng(3)
    n = 400
    group = np.repeat(["a", "b"], n // 2).astype(object)
    y = np.tile([1, 0], n // 2)
    fpr = np.where(group == "a", 0.1, 0.5)
    pred = np.where(y == 1, 1, (rng.random(n) < fpr).astype(int))
    prob = np.clip(0.5 * pred + rng.uniform(0, 0.5, n), 0, 1)
    rules = GroupRules(n_bootstrap=100, n_bootstrap_auc=5, n_permutations=199)
    out = fairness_from_predictions("g", group, y, prob, pred, np.arange(n).astype(str), rules)
    assert out.gaps["equalized_odds_difference"]["p_value"] < 0.01
    assert out.gaps["equal_opportunity_difference"]["p_value"] == 1.0


def test_age_bands_are_listed_youngest_first_and_other_groups_in_text_order() -> None:
    from embedx.analysis.fairness_metrics import display_order

    assert sorted(["80+", "40-59", "<40", "60-79"], key=display_order) == ["<40", "40-59", "60-79", "80+"]
    assert sorted(["1.2+", "0.5-<1.2", "<0.5"], key=display_order) == ["<0.5", "0.5-<1.2", "1.2+"]
    assert sorted(["M", "F", "x"], key=display_order) == ["F", "M", "x"]
    intersections = ["F|80+", "M|<40", "F|40-59", "F|<40"]  # part by part: "F|<40" sorted as text came last
    assert sorted(intersections, key=display_order) == ["F|<40", "F|40-59", "F|80+", "M|<40"]


def test_a_groups_rate_at_zero_or_one_gets_an_interval_of_its_subjects_not_zero_width() -> None:
    """Group C's FPR is 0 of 6 negative subjects and every resample says 0: the interval is [0, 0] unless
    it is floored at the Wilson interval, which allows a true FPR to 0.39; A's 50 subjects give 0.07."""
    f = _hand_built()
    out = fairness_from_predictions(
        "group", f["group"].to_numpy(object), f["y"], f["prob"], f["pred"], f["subject"], FAST.rules
    )
    low, high = out["by_group"]["C"]["ci"]["fpr"]
    assert low == 0.0 and high == pytest.approx(proportion_confint(0, 6, method="wilson")[1])
    a = _block("A", 50, 50, 50, 0).assign(subject=lambda d: [f"a{i}" for i in range(len(d))])
    b = _block("B", 50, 40, 50, 5).assign(subject=lambda d: [f"b{i}" for i in range(len(d))])
    f = pd.concat([a, b], ignore_index=True)
    out = fairness_from_predictions(
        "group", f["group"].to_numpy(object), f["y"], f["prob"], f["pred"], f["subject"], FAST.rules
    )
    assert out["by_group"]["A"]["ci"]["tpr"] == pytest.approx(
        [proportion_confint(50, 50, method="wilson")[0], 1.0])


def test_only_an_age_by_name_is_cut_into_age_bands() -> None:
    """`average_income` (about 22,000) was cut at 40/60/80 years: every subject in "80+", never audited."""
    from embedx.analysis.labels import is_age_name
    from embedx.analysis.stats import band

    assert all(is_age_name(n) for n in ("age", "Age", "age_at_scan", "PatientAge", "AgeYears", "patient age"))
    assert not any(is_age_name(n) for n in ("average_income", "stage", "dosage", "percentage", "wage"))
    income = np.linspace(15_000, 30_000, 40)
    assert len(set(band(income, name="average_income"))) == 4  # quartiles, not one "80+"
    ages = band(np.array([30.0, 50.0, 70.0, 90.0]), name="PatientAge")
    assert set(ages) == {"<40", "40-59", "60-79", "80+"}
