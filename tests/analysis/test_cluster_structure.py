"""k-means partitions any cloud: its solution must be told apart from what it carves out of a Gaussian one.

Latents are simulated the way a cohort's are: each subject has its own point and its 1-12 images scatter
around it (a subject effect), in 16-d (isotropic) or rotated onto a spectrum falling from 5 to 0.2
(anisotropic: the case where a split along the long axis has a high silhouette without any islands).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.analysis.cluster_structure import NO_STRUCTURE, structure_sentence
from embedx.analysis.clusters import cluster_latents, run_clusters
from embedx.data.schema import AttributeSpec
from embedx.store.h5store import Store, write_store_from_arrays

SEEDS = range(10)


def subject_of_image(rng: np.random.Generator, n_subjects: int) -> np.ndarray:
    """Subject index per image: 1-12 images per subject (geometric, mean 4)."""
    return np.repeat(np.arange(n_subjects), np.clip(rng.geometric(0.25, n_subjects), 1, 12))


def gaussian_latents(kind: str, seed: int, n_subjects: int = 150) -> np.ndarray:
    """One Gaussian cloud (subject effect + image noise), no cluster structure of any kind."""
    rng = np.random.default_rng(seed)
    subject = subject_of_image(rng, n_subjects)
    d = 16 if kind == "isotropic" else 32
    z = rng.normal(size=(n_subjects, d))[subject] + rng.normal(size=(len(subject), d))
    if kind == "anisotropic":  # rotated, so that standardising each column cannot undo the spectrum
        z = z @ (np.linalg.qr(rng.normal(size=(d, d)))[0] * np.geomspace(5, 0.2, d)).T
    return z.astype(np.float32)


def separated_latents(seed: int, n_subjects: int = 150, groups: int = 5) -> np.ndarray:
    """Five groups in 8-d, centres drawn N(0, (4/sqrt 2)^2) apart, subject sd 1, image sd 0.7."""
    rng = np.random.default_rng(seed)
    subject = subject_of_image(rng, n_subjects)
    centres = rng.normal(0, 4 / np.sqrt(2), (groups, 8))
    own = centres[rng.integers(0, groups, n_subjects)] + rng.normal(size=(n_subjects, 8))
    return (own[subject] + rng.normal(0, 0.7, (len(subject), 8))).astype(np.float32)


def rare_island_latents(seed: int, n_subjects: int = 300, shift: float = 6.0) -> np.ndarray:
    """A Gaussian cloud (16-d, subject effect); 3 % of subjects shifted by ``shift`` sd in 4 dimensions."""
    rng = np.random.default_rng(seed)
    subject = subject_of_image(rng, n_subjects)
    z = rng.normal(size=(n_subjects, 16))[subject] + rng.normal(size=(len(subject), 16))
    rare = np.zeros(n_subjects, dtype=bool)
    rare[rng.choice(n_subjects, round(0.03 * n_subjects), replace=False)] = True
    z[rare[subject], :4] += shift
    return z.astype(np.float32)


@pytest.mark.parametrize("kind", ["isotropic", "anisotropic"])
def test_gaussian_latents_are_not_called_cluster_structure(kind: str) -> None:
    """The review saw k = 2, 11 or 12 with silhouette ~0.05 on such latents, printed as 'N clusters'.
    Measured with this generator: 0 of 20 seeds flagged, isotropic or anisotropic, at 1,100 rows."""
    flagged = []
    for seed in SEEDS:
        clustering = cluster_latents(gaussian_latents(kind, seed), "kmeans", seed=seed)
        test = clustering.structure
        assert test is not None and test["draws"] == 5
        # the reference is the same procedure on a cloud of the same shape: its silhouette is about as high
        assert abs(test["silhouette"] - test["reference_silhouette"]) < 0.03
        flagged.append(test["found"])
    assert sum(flagged) <= 1, flagged  # at least 9 of 10 seeds say: no structure


def test_separated_groups_are_cluster_structure_in_every_seed() -> None:
    for seed in range(5):
        clustering = cluster_latents(separated_latents(seed), "kmeans", seed=seed)
        test = clustering.structure
        assert test is not None and test["found"], test
        assert test["silhouette"] > test["reference_silhouette"] + 0.1
        assert "silhouette" in test["criteria"]


def test_a_rare_separated_island_is_found_mostly_and_partly_by_its_own_silhouette() -> None:
    """3 % of subjects shifted 6 sd in 4 of 16 dimensions. The island barely moves the partition's
    silhouette when k-means cuts it out together with a split of the other 97 %; the island statistic (its
    most distinct cluster against the reference's) finds it then. When the chosen k = 2 splits the big
    cloud instead, neither statistic can: measured 8 of these 10 seeds found (2 only by the island
    statistic), 17 / 20 with another generator; 4 sd instead of 6: 6 / 20 (docs/probes-and-fairness.md)."""
    found = []
    for seed in range(10):
        test = cluster_latents(rare_island_latents(seed), "kmeans", seed=seed).structure
        assert test is not None
        found.append(test["criteria"])
    assert sum(bool(c) for c in found) >= 7, found
    assert any(c == ["island"] for c in found), found  # the rare group the whole silhouette misses


def test_hdbscan_leaves_a_gaussian_cloud_unclustered_and_says_so() -> None:
    """HDBSCAN has its own null: a unimodal cloud is all noise, so it needs no Gaussian reference."""
    cloud = cluster_latents(gaussian_latents("anisotropic", 0), "hdbscan", seed=0)
    assert (cloud.labels == -1).all()
    assert cloud.structure is not None and cloud.structure["found"] is False
    groups = cluster_latents(separated_latents(0), "hdbscan", seed=0)
    assert groups.structure is not None and groups.structure["found"] is True


def _store(tmp_path, z: np.ndarray) -> str:
    rng = np.random.default_rng(0)
    n = len(z)
    attrs = pd.DataFrame({"site": rng.choice(["a", "b", "c"], n), "age": rng.normal(60, 10, n)})
    schema = {
        "site": AttributeSpec("site", "categorical", "acquisition"),
        "age": AttributeSpec("age", "continuous", "demographic"),
    }
    return write_store_from_arrays(
        tmp_path / "s.h5", [f"id{i}" for i in range(n)], [f"p{i}" for i in range(n)], attrs, schema, {"m": z}
    )


def test_the_verdict_reaches_the_store_the_cli_and_the_report(tmp_path) -> None:
    from typer.testing import CliRunner

    from embedx.cli import app
    from embedx.report.cluster_section import cluster_section

    path = _store(tmp_path, gaussian_latents("isotropic", 1, n_subjects=80))
    result = run_clusters(path, "m", seed=0)
    assert result["structure"] is False
    assert isinstance(result["reference_silhouette"], float)
    assert result["structure_test"]["found"] is False
    with Store.open(path) as store:
        stored = store.read_analysis("clusters", "m")
    assert stored["structure"] is False and stored["structure_test"]["reference_silhouette"] is not None
    assert NO_STRUCTURE in structure_sentence(stored)
    assert NO_STRUCTURE in cluster_section({"m": stored})
    output = CliRunner().invoke(app, ["clusters", str(path), "--json", str(tmp_path / "c.json")])
    assert output.exit_code == 0, output.output
    assert NO_STRUCTURE in output.output and " groups (kmeans" in output.output
    assert '"structure": false' in (tmp_path / "c.json").read_text()

    separated = tmp_path / "sep"
    separated.mkdir()
    path = _store(separated, separated_latents(0, n_subjects=80))
    stored = run_clusters(path, "m", seed=0)
    assert stored["structure"] is True
    section = cluster_section({"m": stored})
    assert "cluster structure beyond a Gaussian cloud" in section and NO_STRUCTURE not in section


def test_a_result_without_the_test_is_shown_as_untested() -> None:
    """Clusters written before the test existed: no verdict invented, a pointer to rerun."""
    from embedx.report.cluster_section import cluster_section

    old = {"model": "m", "method": "kmeans", "n_clusters": 2, "silhouette": 0.05, "clusters": []}
    assert structure_sentence(old) is None
    assert "rerun <code>embedx clusters</code>" in cluster_section({"m": old})


def pilot_latents(seed: int, groups: int = 1, n_subjects: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A pilot: 30 patients with 2-6 images each, scattered 0.7 around their own point in 32-d; with
    ``groups`` > 1 the patients' points come from that many separated centres (4 sd apart on average)."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), rng.integers(2, 7, n_subjects))
    centres = rng.normal(0, 4 / np.sqrt(2), (groups, 32)) if groups > 1 else np.zeros((1, 32))
    own = centres[rng.integers(0, groups, n_subjects)] + rng.normal(size=(n_subjects, 32))
    return (own[subject] + rng.normal(0, 0.7, (len(subject), 32))).astype(np.float32), subject


def test_a_pilots_clumps_of_patients_are_not_structure_but_groups_of_patients_are() -> None:
    """Each patient's images clump, and 30 clumps are easy for k-means to separate: against a plain Gaussian
    cloud the review's pilots were 'cluster structure' in 10 of 10 seeds. The reference now has the same
    subject effect and images per subject: 0 of 10 measured. Patients from three separated centres are
    still structure (5 of 5 measured)."""
    def structure(seed: int, groups: int = 1) -> dict:
        z, subject = pilot_latents(seed, groups)
        return cluster_latents(z, "kmeans", seed=seed, groups=subject).structure

    clumps = [structure(seed) for seed in range(8)]
    assert sum(t["found"] for t in clumps) <= 1, [t["found"] for t in clumps]
    assert all("subject effect" in t["reference"] for t in clumps)
    without_subjects = cluster_latents(pilot_latents(0)[0], "kmeans", seed=0).structure
    assert without_subjects["found"]  # the plain reference: the clumps pass for islands
    separated = [structure(seed, groups=3) for seed in range(5)]
    assert sum(t["found"] for t in separated) >= 4, [t["found"] for t in separated]
