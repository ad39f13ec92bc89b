"""The shift study's verdict, checked where the truth is known, on simulated model scores (no training).

Each simulated model scores a test image by what the image shows plus its own noise. Under the null the
training group does not enter the score at all, yet group B's lesions are fainter, so every model does
worse on B: the old own-vs-other-groups gap calls that a shift in ~40 % of cohorts, the paired contrast
(same test subjects on both sides) must not. Under an effect a model scores its own group's lesions
higher, and the contrast must find it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from shift_sim import simulated_design, simulated_records

from embedx.analysis.shift_contrasts import (
    NO_EVIDENCE,
    OWN_BETTER,
    OWN_WORSE,
    paired_contrasts,
)
from embedx.analysis.shift_design import ALL, Design, gaps, summarise


def _cohort(
    rng: np.random.Generator,
    *,
    groups: tuple[str, ...] = ("A", "B"),
    n_per_group: int = 200,
    fainter: float = 0.6,
    own_bonus: float = 0.0,
    seed_sd: float = 0.0,
    replicates: int = 3,
) -> tuple[Design, list[dict[str, Any]]]:
    """One subject per image, 30 % held out. The last group's lesions are `fainter` (sd units); a model's
    score on a positive of its own training group gains `own_bonus`; `seed_sd` gives each trained model a
    lasting luck of its own on positives (what a training seed does), beyond its per-image noise."""
    g = np.repeat(groups, n_per_group)
    y = rng.random(len(g)) < 0.5
    is_test = rng.random(len(g)) < 0.3
    separation = np.where(g == groups[-1], 1.8 - fainter, 1.8)
    image = y * separation + rng.normal(0, 1, len(g))
    design = simulated_design(np.arange(len(g)), g, y, is_test, groups)
    return design, simulated_records(rng, design, image, 0.9, replicates=replicates, own_bonus=own_bonus,
                                     seed_sd=seed_sd)


def _headline(design: Design, records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    return [c for c in paired_contrasts(design, records, ["auroc"], n_boot=200, seed=seed) if c["headline"]]


def test_a_harder_test_group_is_not_a_shift_for_the_paired_contrast_though_the_old_gap_calls_it() -> None:
    rng = np.random.default_rng(0)
    called, any_called, subject_covered, old_gap_called = [], [], [], []
    for draw in range(200):
        design, records = _cohort(rng)
        heads = _headline(design, records, seed=draw)
        assert [c["test"] for c in heads] == ["A", "B"] and all(c["versus"] != ALL for c in heads)
        verdicts = [c["verdict"] != NO_EVIDENCE for c in heads]
        called += verdicts
        any_called.append(any(verdicts))
        subject_covered += [c["ci_subjects"][0] <= 0 <= c["ci_subjects"][1] for c in heads]
        old = gaps(summarise(design, records, ["auroc"], n_boot=0), design.groups, "auroc")
        old_gap_called.append(max(x["gap"] for x in old if x["train"] != ALL) >= 0.10)
    assert np.mean(old_gap_called) >= 0.25, np.mean(old_gap_called)  # the defect: ~42 % in the review
    assert np.mean(called) <= 0.10, np.mean(called)  # per contrast (1.2 % in 300 cohorts)
    assert np.mean(any_called) <= 0.12, np.mean(any_called)  # some contrast of a cohort (2.3 %)
    # The subject-bootstrap part alone is a 95 % interval here (its models differ per image only).
    assert 0.90 <= np.mean(subject_covered) <= 0.985, np.mean(subject_covered)


def test_a_lucky_training_seed_is_not_a_shift_either() -> None:
    """Models that differ as a whole (one seed converged better) fool an interval over test subjects
    alone; the training-replicate term keeps the false-shift rate down."""
    rng = np.random.default_rng(1)
    called, subject_only_called = [], []
    for draw in range(120):
        for c in _headline(*_cohort(rng, seed_sd=0.3), seed=draw):
            assert c["train_sd"] is not None
            called.append(c["verdict"] != NO_EVIDENCE)
            subject_only_called.append(not c["ci_subjects"][0] <= 0 <= c["ci_subjects"][1])
    assert np.mean(subject_only_called) >= 0.2, np.mean(subject_only_called)  # 25 % in 300 cohorts
    assert np.mean(called) <= 0.10, np.mean(called)  # 2.5 %


def test_a_model_that_fits_its_own_group_is_found() -> None:
    rng = np.random.default_rng(2)
    found, wrong_way, p_values = [], [], []
    for draw in range(60):
        for c in _headline(*_cohort(rng, own_bonus=0.8), seed=draw):
            found.append(c["verdict"] == OWN_BETTER)
            wrong_way.append(c["verdict"] == OWN_WORSE)
            p_values.append(c["p_value"])
            assert c["difference"] > 0
    assert np.mean(found) >= 0.8, np.mean(found)  # 88 % of contrasts in 300 cohorts
    assert not any(wrong_way)
    assert np.median(p_values) < 0.01
    # and the other way round: a model that is worse on its own group is named so
    design, records = _cohort(np.random.default_rng(3), own_bonus=-1.2)
    assert {c["verdict"] for c in _headline(design, records, seed=0)} == {OWN_WORSE}


def test_three_groups_test_own_against_the_others_mean_with_holm_over_the_headlines() -> None:
    design, records = _cohort(np.random.default_rng(4), groups=("A", "B", "C"), own_bonus=0.8,
                              n_per_group=150)
    rows = paired_contrasts(design, records, ["auroc", "specificity"], n_boot=200, seed=0)
    heads = [c for c in rows if c["headline"]]
    assert {(c["metric"], c["test"], c["versus"]) for c in heads} == {
        (m, t, "others") for m in ("auroc", "specificity") for t in "ABC"}
    a_vs = {c["versus"]: c for c in rows if (c["metric"], c["test"]) == ("auroc", "A")}
    assert set(a_vs) == {"B", "C", "others", ALL}
    assert a_vs["others"]["versus_groups"] == ["B", "C"]
    assert a_vs["others"]["other"] == pytest.approx((a_vs["B"]["other"] + a_vs["C"]["other"]) / 2)
    assert a_vs["B"]["p_holm"] is None and a_vs[ALL]["p_holm"] is None  # outside the family
    for c in heads:
        assert c["p_holm"] >= c["p_value"] and c["replicates"] == [3, 3, 3]
        low, high = c["ci"]
        assert low <= c["difference"] <= high
    assert all(c["verdict"] == OWN_BETTER for c in heads if c["metric"] == "auroc")


def test_the_contrast_uses_the_cells_resamples_and_only_rows_both_models_scored() -> None:
    design, records = _cohort(np.random.default_rng(5), replicates=1)
    rows = {(c["test"], c["versus"]): c for c in paired_contrasts(design, records, ["auroc"], n_boot=300)}
    cells = {(s["train"], s["test"]): s for s in summarise(design, records, ["auroc"], n_boot=300)}
    own, other = cells[("A", "A")], cells[("B", "A")]
    c = rows[("A", "B")]
    assert c["own"] == pytest.approx(own["auroc_mean"]) and c["other"] == pytest.approx(other["auroc_mean"])
    assert c["train_sd"] is None and c["ci"] == c["ci_subjects"]  # one replicate: no training term
    assert c["n_test_subjects"] == own["n_test_subjects"]
    # a model scored on fewer rows (a file unreadable in a later run): every contrast of the tier uses the
    # rows all models share
    short = [dict(r, rows=r["rows"][5:], score=r["score"][5:]) if r["train"] == "B" else r for r in records]
    c2 = {(x["test"], x["versus"]): x for x in paired_contrasts(design, short, ["auroc"], n_boot=0)}
    dropped = design.group[records[0]["rows"][:5]]
    assert c2[("A", "B")]["n_test_subjects"] == own["n_test_subjects"] - int((dropped == "A").sum())
    assert c2[("A", "B")]["ci"] is None and c2[("A", "B")]["verdict"] == "no interval"  # --bootstrap 0


def _result(design: Design, records: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarise(design, records, ["auroc", "specificity"], n_boot=200)
    return {
        "experiment": "shift", "dims": 2, "task": "classify", "by": "scanner", "target": "finding",
        "tiers": [ALL], "groups": design.groups, "train_groups": design.train_groups,
        "metrics": ["auroc", "specificity"], "headline": "auroc",
        "settings": {"replicates": 3, "model": "cnn"}, "summary": summary,
        "contrasts": paired_contrasts(design, records, ["auroc", "specificity"], n_boot=200),
        "gaps": gaps(summary, design.groups, "auroc"),
    }


def test_the_cli_prints_cell_intervals_and_the_paired_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    from embedx.cli.experiment import _print_matrix

    result = _result(*_cohort(np.random.default_rng(9)))
    _print_matrix(result)
    out = capsys.readouterr().out
    a_a = next(s for s in result["summary"] if (s["train"], s["test"]) == ("A", "A"))
    assert f"[{a_a['auroc_ci'][0]:.2f}, {a_a['auroc_ci'][1]:.2f}]" in out  # the cell's interval, not only sd
    assert "same test subjects" in out and "tested on B: trained on B" in out
    assert "gap" not in out  # the confounded gap is no longer printed
    heads = [c for c in result["contrasts"] if c["headline"] and c["metric"] == "auroc"]
    assert all(c["verdict"] in out for c in heads)
    old = {k: v for k, v in result.items() if k != "contrasts"}  # a result written before the contrasts
    _print_matrix(old)
    assert "confounded" in capsys.readouterr().out


def test_the_report_tables_the_contrasts_and_flags_old_gaps(tmp_path) -> None:
    from embedx.report.sections import Collector, shift_section

    result = _result(*_cohort(np.random.default_rng(9)))
    html = shift_section([result], Collector(tmp_path / "report"))
    assert "95 % CI" in html and "no evidence of a shift" in html and "p (Holm)" in html
    assert "headline contrasts of auroc hold after Holm" in html
    old = shift_section([{k: v for k, v in result.items() if k != "contrasts"}], Collector(tmp_path / "r2"))
    assert "Not a test of the seed" in old and "<td>" in old
