"""ComBat control: 'site still encoded after harmonisation' under a site confounded with age, and its power.

Sites that differ in age mix, latents that rightly carry age, and a site signature that is a pure location /
scale shift (ComBat's own model). Harmonised blind, the site stayed readable through age in every cohort
(reproduction: /tmp/review-controls/combat_null.py, scenario age_confounded: 60 of 60 cohorts). The site
probe after harmonisation now reads the latents net of the covariates' fitted effects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from embedx.analysis.combat import probe_after_combat
from embedx.analysis.probe_core import ProbeConfig

KINDS = {"site": "categorical", "sex": "binary", "age": "continuous"}


def _cohort(seed: int, interaction: bool = False, n: int = 300, dim: int = 8):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n)
    p_a = 1 / (1 + np.exp(-(age - 55) / 8))  # older patients go to site a
    p = np.stack([p_a, np.full(n, 0.5), np.full(n, 0.5)], 1)
    site = (rng.random(n)[:, None] > np.cumsum(p / p.sum(1, keepdims=True), 1)).sum(1)
    X = rng.normal(size=(n, dim))
    X = X * rng.uniform(0.6, 1.6, (3, dim))[site] + rng.normal(0, 1.0, (3, dim))[site]
    X[:, :2] += ((age - 55) / 12)[:, None]  # biology: age
    if interaction:  # a site signature in the sign of a product: no per-feature shift or scale removes it
        X[:, 2] = np.abs(X[:, 2]) * np.sign(X[:, 3]) * np.where(site == 0, 1.0, -1.0)
    frame = pd.DataFrame({"site": np.array(["a", "b", "c"])[site], "sex": rng.choice(["F", "M"], n),
                          "age": age})
    return X, frame, np.arange(n).astype(str)


def _after_site(seed: int, interaction: bool = False, kernel: str = "linear"):
    cfg = ProbeConfig(n_permutations=49, n_bootstrap=200, c_grid=(1.0,), kernel=kernel, seed=seed)
    X, frame, groups = _cohort(seed, interaction)
    out = probe_after_combat(X, frame, groups, KINDS, probe=["site"], config=cfg)
    return out.before[0], out.after[0]


def test_a_site_confounded_with_age_is_not_called_still_encoded_through_age() -> None:
    runs = [_after_site(seed) for seed in range(8)]
    assert all(before.encoded for before, _ in runs)  # the raw latents do carry the site
    assert sum(after.encoded for _, after in runs) <= 1  # blind transform: 8 of 8 "still encoded"
    assert all("covariate term removed" in after.harmonised["transform"] for _, after in runs)


def test_a_site_signature_that_combat_cannot_remove_is_still_found() -> None:
    found = [_after_site(100 + seed, interaction=True, kernel="rbf")[1].encoded for seed in range(4)]
    assert sum(found) >= 3
