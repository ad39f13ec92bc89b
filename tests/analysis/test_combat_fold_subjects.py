"""ComBat control: every training fold must hold at least 2 *subjects* of every site, not 2 images.

Subjects are the unit of every split in embedx. Counting images, a site of three patients with four images
each passed whenever one training fold kept a single patient (four images of one person), and ComBat then
estimated that site's scale from one patient's spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.analysis.combat import _folds_covering_sites, probe_after_combat
from embedx.analysis.probe_core import ProbeConfig
from embedx.errors import EmbedxError


def _sites(small_subjects: int, images: int = 4, big: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Sites a and b: `big` one-image subjects each; site c: `small_subjects` subjects of `images` images."""
    groups = [f"a{i}" for i in range(big)] + [f"b{i}" for i in range(big)]
    site = ["a"] * big + ["b"] * big
    for i in range(small_subjects):
        groups += [f"c{i}"] * images
        site += ["c"] * images
    return np.array(groups), np.array(site)


def _subjects_per_training_fold(fold: np.ndarray, groups: np.ndarray, site: np.ndarray) -> int:
    return min(
        len(np.unique(groups[(fold != f) & (site == s)])) for f in np.unique(fold) for s in np.unique(site)
    )


def test_every_training_fold_holds_two_subjects_of_every_site() -> None:
    groups, site = _sites(small_subjects=3)
    for seed in range(10):  # counting images, about half of these draws kept one patient of site c
        fold = _folds_covering_sites(groups, site, 5, seed)
        assert _subjects_per_training_fold(fold, groups, site) >= 2


def test_a_site_of_two_patients_is_left_out_and_named_however_many_images() -> None:
    groups, site = _sites(small_subjects=2, images=10)
    with pytest.raises(EmbedxError, match="too few subjects"):
        _folds_covering_sites(groups, site, 5, 0)
    rng = np.random.default_rng(0)
    n = len(site)
    frame = pd.DataFrame({"site": site, "sex": rng.choice(["F", "M"], n), "age": rng.uniform(20, 90, n)})
    result = probe_after_combat(rng.normal(size=(len(site), 4)), frame, groups,
                                {"site": "categorical", "sex": "binary", "age": "continuous"}, probe=["site"],
                                config=ProbeConfig(n_permutations=9, n_bootstrap=20, c_grid=(1.0,)))
    assert list(result.excluded_sites) == ["c"]  # 20 images, 2 patients: left out, not counted as 20
    assert result.excluded_sites["c"].startswith("2 subject(s)")
    assert result.n == 120
