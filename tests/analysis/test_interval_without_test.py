"""A probe whose interval excludes chance while its permutation test fails must say so in its verdict.

With no signal a 95 % interval still excludes chance about 1 time in 20; the verdict also needs the
permutation p. A bare "not distinguishable from chance" printed beside [0.51, 0.61] reads as a
contradiction, or worse, the interval is read as the finding. These tests also hold the below-chance
wording, which the permutation branch used to swallow.
"""

from __future__ import annotations

import numpy as np

from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe
from embedx.analysis.probe_result import (
    INTERVAL_WITHOUT_TEST,
    TEST_WITHOUT_INTERVAL,
    VERDICT_ENCODED,
    VERDICT_NOT_FOUND,
    clear_of_chance,
    judge_family,
)


def _result(ci: tuple[float, float], p: float, score: float = 0.56) -> dict:
    return {"model": "m", "attribute": "a", "kind": "binary", "metric": "balanced_accuracy", "score": score,
            "ci": ci, "chance": 0.5, "p_value": p, "permutation": {"permutations": 999}}


def test_interval_clear_of_chance_without_the_test_is_said_in_the_verdict() -> None:
    [r] = judge_family([_result((0.51, 0.61), 0.2)])
    assert not r.encoded and r.verdict == VERDICT_NOT_FOUND + INTERVAL_WITHOUT_TEST


def test_the_note_is_absent_when_the_test_passes_or_the_interval_holds_chance() -> None:
    [passed] = judge_family([_result((0.51, 0.61), 0.001)])
    [plain] = judge_family([_result((0.47, 0.61), 0.2)])
    assert passed.encoded and passed.verdict == VERDICT_ENCODED
    assert not plain.encoded and plain.verdict == VERDICT_NOT_FOUND


def test_a_passed_test_with_an_interval_that_reaches_chance_is_said_in_the_verdict() -> None:
    """Holm p 0.03 beside [0.488, 0.599] read 'not distinguishable from chance' with no word of why."""
    [r] = judge_family([_result((0.488, 0.599), 0.03)])
    assert not r.encoded and r.verdict == VERDICT_NOT_FOUND + TEST_WITHOUT_INTERVAL
    failed, _ = judge_family([_result((0.488, 0.599), 0.03), _result((0.47, 0.52), 0.5)])  # Holm: 0.06
    assert not failed.encoded and failed.verdict == VERDICT_NOT_FOUND


def test_below_chance_is_said_when_permutations_ran() -> None:
    [r] = judge_family([_result((0.35, 0.45), 0.9, score=0.40)])
    assert not r.encoded and r.verdict.startswith(VERDICT_NOT_FOUND) and "below chance" in r.verdict


def test_a_real_null_probe_with_a_narrow_interval_carries_the_note() -> None:
    """Seed 36 of this null cohort (labels independent of the latents; the first of 37 seeds): its interval
    excludes chance, the permutation test does not reject."""
    rng = np.random.default_rng(36)
    label = np.arange(300) % 2
    rng.shuffle(label)
    rows = np.repeat(np.arange(300), 2)
    X = rng.normal(size=(300, 16))[rows] + 0.7 * rng.normal(size=(600, 16))
    r = cross_validated_probe(X, label[rows], rows.astype(str), "binary",
                              config=ProbeConfig(n_permutations=199, n_bootstrap=500, seed=36))
    assert clear_of_chance(r.to_dict()) and r.p_value > 0.05
    assert not r.encoded and r.verdict.endswith(INTERVAL_WITHOUT_TEST)
