"""Pixels vs a model: the reading follows the intervals, both ways, for accuracy and for MAE."""

from __future__ import annotations

import pytest

from embedx.analysis.reference import compare_one, compare_to_reference


def _p(model: str, score: float, ci: tuple[float, float], encoded: bool, metric: str = "balanced_accuracy",
       chance: float = 0.5) -> dict:
    return {"model": model, "attribute": "site", "metric": metric, "score": score, "ci": list(ci),
            "chance": chance, "encoded": encoded}


PX_MAE = _p("px", 7.0, (6.5, 7.5), True, "mae", 11.0)


@pytest.mark.parametrize(
    ("model", "pixels", "reading"),
    [
        (_p("m", 0.52, (0.48, 0.56), False), _p("px", 0.72, (0.68, 0.76), True), "discards"),
        (_p("m", 0.62, (0.58, 0.66), True), _p("px", 0.72, (0.68, 0.76), True), "keeps less"),
        (_p("m", 0.70, (0.66, 0.74), True), _p("px", 0.72, (0.68, 0.76), True), "keeps"),
        (_p("m", 0.90, (0.86, 0.94), True), _p("px", 0.72, (0.68, 0.76), True), "amplifies"),
        (_p("m", 0.60, (0.56, 0.64), True), _p("px", 0.51, (0.47, 0.55), False), "amplifies"),
        (_p("m", 0.50, (0.46, 0.54), False), _p("px", 0.51, (0.47, 0.55), False), "neither"),
        # a verdict that flips inside overlapping intervals is no difference, whichever side is higher
        (_p("m", 0.60, (0.50, 0.70), False), _p("px", 0.58, (0.53, 0.63), True), "unclear"),
        (_p("m", 0.58, (0.53, 0.63), True), _p("px", 0.60, (0.50, 0.70), False), "unclear"),
        # MAE: lower is better, so a model with the higher error keeps less
        (_p("m", 9.0, (8.5, 9.5), True, "mae", 11.0), PX_MAE, "keeps less"),
        (_p("m", 5.0, (4.5, 5.5), True, "mae", 11.0), PX_MAE, "amplifies"),
    ],
)
def test_reading(model: dict, pixels: dict, reading: str) -> None:
    assert compare_one(model, pixels).reading == reading


def test_kept_share_and_the_reference_model_chosen_by_kind() -> None:
    c = compare_one(_p("m", 9.0, (8.5, 9.5), True, "mae", 11.0), _p("px", 7.0, (6.5, 7.5), True, "mae", 11.0))
    assert c.kept == pytest.approx(0.5)
    probes = [_p("vae", 0.6, (0.55, 0.65), True), _p("px", 0.7, (0.65, 0.75), True),
              {**_p("dae", 0.6, (0.5, 0.7), False), "skipped": True}]
    found = compare_to_reference(probes, {"vae": "vae", "px": "pixels", "dae": "dae"})
    assert [(c.model, c.reference) for c in found] == [("vae", "px")]
    assert compare_to_reference(probes, {"vae": "vae", "px": "imported"}) == []


def test_a_model_that_saw_other_intensity_scaling_is_not_read_as_like_for_like() -> None:
    """Per-image percentile scaling (the reference's) removes a global exposure difference that a fixed
    window keeps: the sentence says so, from the stored preprocess of each model."""
    window = '{"size": 64, "intensity": "window", "window": [127.5, 255.0]}'
    percentile = '{"size": 64, "intensity": "percentile", "window": null}'
    probes = [_p("vae", 0.67, (0.6, 0.74), True), _p("px", 0.34, (0.27, 0.41), False)]
    kinds = {"vae": "vae", "px": "pixels"}
    (differs,) = compare_to_reference(probes, kinds, {"vae": window, "px": percentile})
    assert differs.reading == "amplifies" and not differs.like_for_like
    assert "not like for like: vae saw a fixed window (centre 127.5, width 255)" in differs.sentence
    assert "the pixel reference per-image percentile scaling" in differs.sentence
    (same,) = compare_to_reference(probes, kinds, {"vae": percentile, "px": percentile})
    assert same.like_for_like and "like for like" not in same.sentence
    (unknown,) = compare_to_reference(probes, kinds, {"vae": "", "px": percentile})  # imported embeddings
    assert unknown.like_for_like


def test_probes_on_different_rows_are_not_compared() -> None:
    model = {**_p("half", 0.52, (0.48, 0.56), False), "n": 100, "rows_encoded": 100}
    pixels = {**_p("px", 0.72, (0.68, 0.76), True), "n": 200, "rows_encoded": 200}
    c = compare_one(model, pixels)
    assert c.reading == "no reading" and "different rows (n = 100 vs 200)" in c.sentence


def test_no_claim_about_what_neither_side_finds() -> None:
    """Intervals that miss each other near chance say nothing when neither probe is called encoded."""
    worse = compare_one(_p("m", 9.8, (9.76, 9.84), False, "mae", 9.9), _p("px", 9.7, (9.66, 9.74), False,
                                                                           "mae", 9.9))
    better = compare_one(_p("m", 0.55, (0.53, 0.57), False), _p("px", 0.45, (0.43, 0.47), False))
    assert worse.reading == better.reading == "neither"


def test_equal_true_scores_are_rarely_called_different() -> None:
    """Under the null (model and pixels equally readable) a difference needs intervals that miss each other:
    for two independent estimates with equal errors that happens with probability ~0.6 %."""
    import numpy as np

    rng = np.random.default_rng(0)
    se, calls = 0.03, 0
    for _ in range(2000):
        a, b = 0.7 + se * rng.standard_normal(2)
        model = _p("m", float(a), (a - 1.96 * se, a + 1.96 * se), True)
        pixels = _p("px", float(b), (b - 1.96 * se, b + 1.96 * se), True)
        calls += compare_one(model, pixels).reading in ("keeps less", "amplifies", "discards")
    assert calls / 2000 < 0.015
    # and a real gap of 4 standard errors is called most of the time
    found = 0
    for _ in range(500):
        a, b = np.array([0.70, 0.70 + 4 * np.sqrt(2) * se]) + se * rng.standard_normal(2)
        found += compare_one(_p("m", float(a), (a - 1.96 * se, a + 1.96 * se), True),
                             _p("px", float(b), (b - 1.96 * se, b + 1.96 * se), True)).reading == "keeps less"
    assert found / 500 > 0.8


def test_a_continuous_attribute_is_compared_by_the_correlation_its_verdict_rests_on() -> None:
    """The review's case: MAE intervals that overlap (read 'unclear') while the correlations, on which each
    continuous verdict rests, do not: the model reads age plainly (r 0.30 [0.24, 0.36], encoded), the pixels
    barely (r 0.05 [-0.01, 0.11], not encoded)."""
    model = {**_p("m", 11.6, (11.2, 12.0), True, "mae", 12.0), "correlation": 0.30,
             "correlation_ci": [0.24, 0.36]}
    pixels = {**_p("px", 11.9, (11.5, 12.3), False, "mae", 12.0), "correlation": 0.05,
              "correlation_ci": [-0.01, 0.11]}
    old_model, old_pixels = ({k: v for k, v in p.items() if not k.startswith("correlation")}
                             for p in (model, pixels))
    assert compare_one(old_model, old_pixels).reading == "unclear"
    c = compare_one(model, pixels)
    assert c.reading == "amplifies" and c.metric == "correlation" and c.chance == 0.0
    assert "(r)" in c.sentence and c.model_score == pytest.approx(0.30)
    # only one side with a correlation (an older stored probe): both stay on the MAE
    assert compare_one(model, old_pixels).metric == "mae"


def _continuous_probe(name: str, X, age, subjects):
    from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe

    result = cross_validated_probe(X, age, subjects, "continuous", model=name, attribute="age",
                                   config=ProbeConfig(n_permutations=99, n_bootstrap=200))
    return result.to_dict()


def test_continuous_readings_from_real_probes_under_the_null_and_under_a_real_difference() -> None:
    """Real probes of age (correlation CIs from the subject bootstrap): a model and pixels that carry age
    equally are rarely called different; a model that carries none where the pixels carry it is 'discards'."""
    import numpy as np

    differ, discards = 0, 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        n = 200
        index = np.repeat(np.arange(n), 2)  # two images per subject
        subjects = index.astype(str)
        age = rng.normal(60, 12, n)
        signal = (age - 60) / 12
        equal = [np.column_stack([0.5 * signal + rng.normal(size=n), rng.normal(size=(n, 3))])[index]
                 + 0.3 * rng.normal(size=(2 * n, 4)) for _ in range(2)]
        model, pixels = (_continuous_probe(m, x, age[index], subjects)
                         for m, x in zip(("m", "px"), equal, strict=True))
        comparison = compare_one(model, pixels)
        assert comparison.metric == "correlation"
        differ += comparison.reading in ("keeps less", "amplifies", "discards")
        blind = _continuous_probe("m", rng.normal(size=(2 * n, 4)), age[index], subjects)
        discards += compare_one(blind, pixels).reading == "discards"
    assert differ <= 1, differ
    assert discards >= 8, discards
