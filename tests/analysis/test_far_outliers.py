"""A few absurd values in a continuous attribute are named beside the probe's verdict, not left to hide it.

The review's case: BMI read plainly from the latents (r 0.83 when clean), with 3 entry errors (1e6, -1e5,
9e9) in 300 subjects: the probe printed an MAE of 1.4e8 and "not distinguishable from chance" with no word
on why. The note does not fire on real quantities, heavy-tailed ones included.
"""

from __future__ import annotations

import numpy as np

from embedx.analysis.labels import far_outlier_note
from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe


def test_entry_errors_are_named_beside_the_verdict_and_counted_in_subjects() -> None:
    rng = np.random.default_rng(0)
    n_subjects = 300
    subject = np.repeat(np.arange(n_subjects), 2)  # two images each
    z = rng.normal(size=(n_subjects, 8))
    bmi = 25 + 4 * z[:, 0] + rng.normal(0, 1, n_subjects)
    bmi[[3, 50, 120]] = [1e6, -1e5, 9e9]
    X = (z[subject] + rng.normal(0, 0.3, (len(subject), 8))).astype(np.float32)
    result = cross_validated_probe(X, bmi[subject], subject.astype(str), "continuous", attribute="bmi",
                                   config=ProbeConfig(n_permutations=99, n_bootstrap=100))
    (note,) = [n for n in result.notes if "interquartile" in n]
    assert note.startswith("values of 3 subject(s)") and "9e+09" in note and "blank them" in note
    clean = bmi.copy()
    clean[[3, 50, 120]] = np.nan
    result = cross_validated_probe(X, clean[subject], subject.astype(str), "continuous", attribute="bmi",
                                   config=ProbeConfig(n_permutations=99, n_bootstrap=100))
    assert not any("interquartile" in n for n in result.notes) and result.encoded


def test_real_quantities_do_not_set_it_off() -> None:
    """Normal ages, log-normal lesion volumes (sigma 1) and t(3) scores: 300 cohorts of 2,000 values each."""
    rng = np.random.default_rng(1)
    subjects = np.arange(2000)
    fired = 0
    for _ in range(100):
        for values in (rng.normal(60, 12, 2000), rng.lognormal(0, 1, 2000), rng.standard_t(3, 2000)):
            fired += far_outlier_note(values, subjects) is not None
    assert fired <= 3, fired
    assert far_outlier_note(np.r_[np.full(50, 1.0), 1e9], np.arange(51)) is None  # no spread: nothing to say
