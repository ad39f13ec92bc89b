"""The probe's verdicts on imbalanced and null labels: p-values calibrated, rare effects found, chance exact.

Null labels are drawn at random per subject (or per image, for labels that vary within a subject) on real
latents: pixel PCA of a phantom cohort, whose images share subjects. With no link between labels and images,
the share of raw p < 0.05 must be about 5 % and the mean p about 0.5, whatever the label's kind or balance.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from embedx.analysis.probe_core import LinearProbe, ProbeConfig, cross_validated_probe
from embedx.analysis.probe_result import ProbeResult, judge_family

NULL = ProbeConfig(n_permutations=199, n_bootstrap=0, c_grid=(0.1,))


def _null_label(kind: int, codes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Eight kinds of label with no pixel effect, constant within subject or varying within it."""
    n_subjects, n = int(codes.max()) + 1, len(codes)
    prevalence = (0.02, 0.05, 0.2, 0.5)[kind % 4]
    if kind < 4:
        return (rng.random(n_subjects) < prevalence).astype(int)[codes], "binary"
    if kind == 4:
        return rng.integers(0, 3, n_subjects)[codes], "categorical"
    if kind == 5:
        return rng.normal(50, 10, n_subjects)[codes], "continuous"
    if kind == 6:
        return (rng.random(n) < 0.3).astype(int), "binary"  # varies within subject (like a view)
    return rng.normal(50, 10, n_subjects)[codes] + rng.normal(0, 2, n), "continuous"  # age at each visit


@pytest.mark.slow
def test_p_values_are_calibrated_on_null_labels(phantom_latents) -> None:
    X, subjects = phantom_latents["X"], phantom_latents["subjects"]
    codes = np.unique(subjects, return_inverse=True)[1]
    rng = np.random.default_rng(2026)
    p_values, kinds = [], []
    for i in range(240):
        y, kind = _null_label(i % 8, codes, rng)
        r = cross_validated_probe(X, y, subjects, kind, config=NULL)  # type: ignore[arg-type]
        if r.p_value is not None:
            p_values.append(r.p_value)
            kinds.append(i % 8)
    p = np.asarray(p_values)
    assert len(p) >= 200, "too many null labels were skipped"
    share = float(np.mean(p < 0.05))
    assert 0.02 <= share <= 0.08, share
    assert abs(float(p.mean()) - 0.5) <= 0.05, p.mean()
    for kind in range(8):  # no kind of label is systematically anti-conservative
        assert np.mean(p[np.asarray(kinds) == kind] < 0.05) <= 0.2


def _rare_cohort(prevalence: float, effect: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2,000 subjects x 1-2 images, 48 correlated features; the label shifts one latent factor by `effect`."""
    rng = np.random.default_rng(seed)
    n_subjects = 2000
    sizes = rng.integers(1, 3, n_subjects)
    codes = np.repeat(np.arange(n_subjects), sizes)
    label = (rng.random(n_subjects) < prevalence).astype(int)
    factors = rng.normal(size=(n_subjects, 8))
    factors[:, 0] += effect * label
    mixing = rng.normal(size=(8, 48))
    X = factors[codes] @ mixing + rng.normal(size=(len(codes), 48))
    return X, label[codes], codes.astype(str)


@pytest.mark.parametrize("prevalence", [0.02, 0.05])
def test_rare_attribute_with_a_moderate_effect_is_found(prevalence: float) -> None:
    X, y, subjects = _rare_cohort(prevalence, effect=1.2, seed=int(prevalence * 100))
    cfg = ProbeConfig(n_permutations=200, n_bootstrap=300)
    found = cross_validated_probe(X, y, subjects, "binary", config=cfg)
    assert found.encoded, found.to_dict()
    assert found.score > 0.6 and found.ci[0] > 0.5
    # a class-balanced linear SVM on the same latents finds it too: the probe is not weaker than that
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    svm = make_pipeline(StandardScaler(), LinearSVC(C=0.1, class_weight="balanced"))
    pred = cross_val_predict(svm, X, y, groups=subjects, cv=folds)
    balanced = np.mean([np.mean(pred[y == c] == c) for c in (0, 1)])
    assert found.score > balanced - 0.05
    null = cross_validated_probe(X, np.random.default_rng(1).permutation(y), subjects, "binary", config=cfg)
    assert not null.encoded


def test_rare_attribute_with_no_effect_is_not_found() -> None:
    for prevalence in (0.02, 0.05):
        X, y, subjects = _rare_cohort(prevalence, effect=0.0, seed=11)
        r = cross_validated_probe(
            X, y, subjects, "binary", config=ProbeConfig(n_permutations=200, n_bootstrap=300)
        )
        assert not r.encoded and r.p_value > 0.01


def test_chance_is_one_over_k_and_a_constant_predictor_is_never_encoded() -> None:
    rng = np.random.default_rng(3)
    subjects = np.arange(300).astype(str)
    y = rng.integers(0, 3, 300)
    X = rng.normal(size=(300, 6))
    r = cross_validated_probe(
        X, y, subjects, "categorical", config=ProbeConfig(n_permutations=50, n_bootstrap=200)
    )
    assert r.chance == 1 / 3
    # a probe whose every prediction is one class scores exactly chance and is flagged, whatever the p-value
    constant = ProbeResult(
        model="m",
        attribute="a",
        kind="binary",
        metric="balanced_accuracy",
        score=0.5,
        ci=(0.5, 0.5),
        chance=0.5,
        p_value=0.001,
        degenerate=True,
    )
    nearly = constant.replace(score=0.52, ci=(0.505, 0.53))
    for result in judge_family([constant, nearly]):
        assert not result.encoded
    assert not judge_family([constant.replace(degenerate=False)])[0].encoded  # CI on chance: not clear of it


def test_a_probe_that_predicts_one_class_is_degenerate() -> None:
    rng = np.random.default_rng(4)
    X = np.zeros((200, 4))  # no information at all: every prediction is the same
    y = (rng.random(200) < 0.3).astype(int)
    r = cross_validated_probe(
        X, y, np.arange(200).astype(str), "binary", config=ProbeConfig(n_permutations=50, n_bootstrap=100)
    )
    assert r.degenerate and not r.encoded and "single value" in r.verdict


def test_linear_probe_is_a_scikit_learn_estimator() -> None:
    from sklearn.base import clone

    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] + 0.3 * rng.normal(size=300) > 1.2).astype(int)  # ~12 % positives
    probe = LinearProbe(c_grid=(0.01, 0.1, 1.0), seed=1)
    twin = clone(probe)
    assert twin.get_params() == probe.get_params()
    probe.fit(X, y, groups=np.repeat(np.arange(150), 2))
    assert probe.C_ in (0.01, 0.1, 1.0) and list(probe.classes_) == [0, 1]
    assert probe.decision_function(X).shape == (300,)
    predicted = probe.predict(X)
    assert 0.05 < predicted.mean() < 0.5  # class-balanced: the minority class is predicted
    regression = LinearProbe(task="regression").fit(X, X[:, 1] * 3)
    assert np.corrcoef(regression.predict(X), X[:, 1])[0, 1] > 0.95


def test_a_failing_c_grid_is_reported_not_hidden() -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(40, 3))
    y = np.array([0, 1] * 20)
    probe = LinearProbe(c_grid=(0.1, 1.0), inner_folds=2).fit(X, y, groups=np.zeros(40))  # one subject
    assert any("not tuned" in note for note in probe.notes_)


def test_probe_result_round_trips_through_its_json_form() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] > 0).astype(int)
    r = cross_validated_probe(
        X, y, np.arange(200).astype(str), "binary", config=ProbeConfig(n_permutations=50, n_bootstrap=100)
    )
    data = r.to_dict()
    assert ProbeResult.from_dict(data).to_dict() == data
    assert data["permutation"]["folds"] == "label-free subject folds" and data["bootstrap"]["dropped"] == 0
    assert r["score"] == data["score"] and dict(r) == data


def test_a_label_tied_to_image_position_is_testable() -> None:
    """'First image frontal, then lateral' in every subject, and the latents see the view: found."""
    rng = np.random.default_rng(12)
    subjects = np.repeat(np.arange(150), 2)
    view = np.tile([0, 1], 150)
    X = rng.normal(size=(300, 8)) + 1.5 * view[:, None] * (np.arange(8) < 2)
    r = cross_validated_probe(
        X, view, subjects.astype(str), "binary", config=ProbeConfig(n_permutations=199, n_bootstrap=200)
    )
    assert r.encoded and r.p_value < 0.01 and r.permutation["mixing"] > 0.9


def test_a_label_that_cannot_be_permuted_is_untestable_not_absent() -> None:
    """Unique row counts and one mistyped row: the verdict says the test cannot decide, and why."""
    rng = np.random.default_rng(13)
    sizes = np.arange(5, 65)
    subjects = np.repeat(np.arange(60), sizes)
    sex = np.repeat(np.arange(60) % 2, sizes)
    sex[np.flatnonzero(subjects == 59)[0]] ^= 1
    X = rng.normal(size=(len(sex), 6)) + sex[:, None]
    r = cross_validated_probe(
        X, sex, subjects.astype(str), "binary", config=ProbeConfig(n_permutations=99, n_bootstrap=100)
    )
    assert r.untestable and not r.encoded and r.verdict.startswith("untestable")
    assert judge_family([r])[0].family_size == 0  # not counted as a test


def test_a_perfect_probe_of_a_rare_class_is_not_degenerate() -> None:
    rng = np.random.default_rng(14)
    y = np.zeros(1500, dtype=int)
    y[:8] = 1  # 0.5 % prevalence
    X = rng.normal(size=(1500, 4)) + 6.0 * y[:, None]
    r = cross_validated_probe(
        X, y, np.arange(1500).astype(str), "binary", config=ProbeConfig(n_permutations=199, n_bootstrap=200)
    )
    assert r.score > 0.95 and not r.degenerate and r.encoded


def test_a_ci_from_few_subjects_of_a_class_comes_from_refits_or_is_flagged_approximate() -> None:
    """Subject-bootstrap intervals over fixed out-of-fold predictions covered 79-87 % at 7-12 subjects of a
    class: a pilot's CI comes from refits on subject resamples (tests/analysis/test_probe_pilot_ci.py), one
    too large to refit (> REFIT_MAX_ROWS rows) says it is approximate, and one from hundreds does neither."""
    from embedx.analysis.probe_core import REFIT_MAX_ROWS

    rng = np.random.default_rng(0)
    cfg = ProbeConfig(n_permutations=99, n_bootstrap=100)
    subjects = np.repeat(np.arange(40), 2).astype(str)
    y = np.repeat(rng.random(40) < 0.3, 2).astype(int)
    small = cross_validated_probe(rng.normal(size=(80, 8)), y, subjects, "binary", config=cfg)
    assert any(note.startswith("pilot-sized CI (") for note in small.notes), small.notes
    assert small.bootstrap["over"] == "refits on subject resamples"
    n = REFIT_MAX_ROWS + 200
    rare = np.zeros(n, dtype=int)
    rare[:12] = 1
    big = cross_validated_probe(rng.normal(size=(n, 4)), rare, np.arange(n).astype(str), "binary", config=cfg)
    assert any(note.startswith("approximate CI: 12 subjects") for note in big.notes), big.notes
    assert big.bootstrap["over"] == "out-of-fold predictions"
    y = (rng.random(600) < 0.3).astype(int)
    one_each = np.arange(600).astype(str)
    large = cross_validated_probe(rng.normal(size=(600, 8)), y, one_each, "binary", config=cfg)
    assert not any(note.startswith(("approximate CI", "pilot-sized")) for note in large.notes)


@pytest.mark.parametrize("kind", ["categorical", "continuous"])
def test_an_attribute_with_every_value_missing_says_so(kind: str) -> None:
    y = np.array([None] * 20, dtype=object) if kind == "categorical" else np.full(20, np.nan)
    X = np.random.default_rng(0).normal(size=(20, 4))
    r = cross_validated_probe(X, y, np.arange(20).astype(str), kind, config=ProbeConfig(n_permutations=9))
    assert r.skipped == "every value of the attribute is missing" and not r.encoded


def test_no_verdict_only_where_the_permutations_could_not_have_passed_holm() -> None:
    """Mixed permutation counts (stored runs re-judged together): a probe with 20 permutations can still pass
    Holm when the others' p are smaller, and then it is encoded, not 'no verdict'; alone among equals it
    cannot, and says so; a probe with no permutation test at all has no verdict either."""
    base = {"model": "m", "kind": "categorical", "metric": "balanced_accuracy", "score": 0.95,
            "ci": (0.92, 0.97), "chance": 0.5, "n": 500}  # fmt: skip

    def probe(name: str, p: float | None, permutations: int) -> dict:
        return {**base, "attribute": name, "p_value": p,
                "permutation": {"p_value": p, "permutations": permutations}}  # fmt: skip

    few, many = probe("few", 1 / 21, 20), probe("many", 0.001, 999)
    judged = {r.attribute: r for r in judge_family([few, many, probe("also", 0.001, 999)])}
    assert judged["few"].encoded and judged["few"].verdict == "encoded"  # Holm: 1 x 1/21 < 0.05
    judged = {r.attribute: r for r in judge_family([few, probe("a", 1 / 21, 20), probe("b", 1 / 21, 20)])}
    assert judged["few"].verdict.startswith("no verdict: 20 permutations cannot reach")
    judged = {r.attribute: r for r in judge_family([probe("untested", None, 0), many])}
    assert judged["untested"].verdict == "no verdict: no permutation test was run (permutations = 0)"


def test_an_attribute_whose_rows_are_not_encoded_is_not_called_missing() -> None:
    X = np.full((12, 4), np.nan)
    y = np.array(["A", "B"] * 6, dtype=object)
    r = cross_validated_probe(X, y, np.arange(12).astype(str), "binary", config=ProbeConfig(n_permutations=9))
    assert r.skipped == "no row with a value of the attribute has been encoded by this model"
