"""Known-answer tests for the seeds' control experiments: cross-site (Zech), background patches (Dhar &
Shamir), KS tests per PCA mode (chexploration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from embedx.analysis.background import auto_positions, background_control
from embedx.analysis.cross_site import cross_site
from embedx.analysis.distribution import distribution_tests_arrays
from embedx.data.manifest import load_manifest
from embedx.data.synth import generate_cohort
from embedx.errors import EmbedxError
from embedx.store.h5store import Store, write_store_from_arrays

CONFOUNDED = {"north": 0.1, "south": 0.9, "east": 0.1, "west": 0.9}


def _pixel_store(folder: Path, n: int, prevalence: dict[str, float] | None, seed: int) -> Path:
    manifest_path = generate_cohort(
        "cxr", n, folder, size=32, strength=1.0, seed=seed, prevalence=prevalence, workers=1
    )
    manifest = load_manifest(manifest_path)
    pixels = np.stack(
        [np.asarray(Image.open(manifest.absolute_path(i)), dtype=np.float32).ravel() for i in range(n)]
    )
    latents = PCA(n_components=24, random_state=0).fit_transform(pixels).astype(np.float32)
    table = manifest.table
    return write_store_from_arrays(
        folder / "store.h5",
        manifest.sample_ids(),
        table["subject_id"].to_numpy(),
        table[manifest.attributes],
        manifest.schema,
        {"pixels": latents},
    )


@pytest.fixture(scope="module")
def confounded_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pixel_store(tmp_path_factory.mktemp("zech"), 480, CONFOUNDED, seed=3)


def test_cross_site_reproduces_internal_above_external(confounded_store: Path) -> None:
    """Zech's pattern on a cohort built to show it.

    Construction: B's synthetic chest phantoms at full acquisition strength (each site has its own
    noise, kernel, gamma, grid and marker, so pixel PCA — the fixed, training-free "latents" here —
    separates the sites almost perfectly), with the finding's prevalence set per site to 10 / 90 / 10 /
    90 %. A probe trained across several sites can then rank images by *site* and thereby by finding: its
    internal (grouped CV) AUC over the training sites is high, while on a held-out single site that
    shortcut is worth nothing and only the lesion signal is left. So the leave-one-site-out internal AUC
    must exceed the external one, with a subject-bootstrap CI of the difference above zero, and the pooled
    AUC (which contains the between-site ranking) must exceed the AUC of the same pooled predictions
    within each site.
    """
    result = cross_site(confounded_store, "finding", "site", n_bootstrap=300, seed=0)
    head = result["internal_vs_external"]
    assert head["internal_auc"] > head["external_auc"] + 0.05
    assert head["ci"][0] > 0, head
    assert head["verdict"].startswith("internal > external")
    within = [v["auc"] for v in result["pooled"]["by_site"].values() if v["auc"] is not None]
    assert result["pooled"]["auc"] > np.mean(within)
    assert result["prevalence"]["south"] > 0.8 and result["prevalence"]["north"] < 0.2
    k = len(result["sites"])
    assert np.asarray(result["matrix"], dtype=float).shape == (k, k)
    with Store.open(confounded_store) as store:
        stored = store.read_analysis("controls", "cross_site__pixels__finding__site")
    assert stored["internal_vs_external"]["difference"] == pytest.approx(head["difference"])


def test_cross_site_without_confounding_shows_no_gap(tmp_path: Path) -> None:
    """Same cohort recipe with equal prevalence everywhere: the site is still encoded, but it no longer
    predicts the finding, so there is no shortcut to lose and the internal-external gap's CI covers zero."""
    store = _pixel_store(tmp_path, 480, dict.fromkeys(CONFOUNDED, 0.4), seed=3)
    head = cross_site(store, "finding", "site", n_bootstrap=300, seed=0, write=False)["internal_vs_external"]
    assert head["ci"][0] <= 0 <= head["ci"][1], head


def test_cross_site_by_manufacturer_and_bad_targets(confounded_store: Path) -> None:
    result = cross_site(confounded_store, "finding", "manufacturer", n_bootstrap=0, write=False)
    assert set(result["sites"]) <= {"VendorA", "VendorB", "VendorC"} and len(result["sites"]) >= 2
    with pytest.raises(EmbedxError, match="binary target"):
        cross_site(confounded_store, "site", "manufacturer", write=False)
    with pytest.raises(EmbedxError, match="no attribute"):
        cross_site(confounded_store, "finding", "scanner", write=False)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    base = tmp_path_factory.mktemp("background")
    return {
        s: generate_cohort("cxr", 200, base / f"s{s:g}", size=48, strength=s, seed=5, workers=1)
        for s in (1.0, 0.0)
    }


def test_background_patches_reveal_the_site_signature(phantoms: dict[float, Path], tmp_path: Path) -> None:
    """Strength 1: every site's noise / grid / offset lives in the empty corners too -> site found."""
    store = write_store_from_arrays(
        tmp_path / "s.h5", ["a", "b"], ["p", "q"], pd.DataFrame({"x": [1, 2]}), None, {}
    )
    result = background_control(
        phantoms[1.0], "site", patch=8, size=48, n_permutations=30, n_bootstrap=300, store_path=store
    )
    assert result["encoded"], result
    assert result["ci"][0] > result["chance"] + 0.2
    assert result["p_value"] < 0.05 and result["positions"] == [[0, 0], [0, 40], [40, 0], [40, 40]]
    with Store.open(store) as s:
        assert s.read_analysis("controls", "background__site")["score"] == pytest.approx(result["score"])


def test_background_patches_find_nothing_when_site_is_a_pure_label(phantoms: dict[float, Path]) -> None:
    """Strength 0: all sites share one acquisition, the site is only a label -> chance on the background."""
    result = background_control(phantoms[0.0], "site", patch=8, size=48, n_permutations=30, n_bootstrap=300)
    assert not result["encoded"], result
    assert result["ci"][0] <= result["chance"]


def test_background_cnn_learns_the_signature_from_patches(phantoms: dict[float, Path]) -> None:
    """`--cnn`: the seed-000 CNN trained on the stacked corner patches finds the strength-1 site too."""
    result = background_control(
        phantoms[1.0], "site", patch=8, size=48, n_permutations=0, n_bootstrap=200, cnn=True, cnn_epochs=6
    )
    cnn = result["cnn"]
    assert cnn["encoded"] and cnn["ci"][0] > cnn["chance"] + 0.2, cnn


def test_auto_positions_pick_flat_dark_background_not_anatomy() -> None:
    """Images with a bright, textured 'body' that moves between images and dark flat surroundings: the
    automatically chosen cells must all lie outside every body; on the phantoms they touch the edge."""
    rng = np.random.default_rng(0)
    size, patch = 48, 6
    images = np.full((60, size, size), -0.9) + rng.normal(0, 0.01, (60, size, size))
    body = np.zeros((size, size), dtype=bool)
    for img in images:
        r0, c0 = rng.integers(10, 16, 2)
        img[r0 : r0 + 24, c0 : c0 + 24] = rng.normal(0.3, 0.3, (24, 24))
        body[r0 : r0 + 24, c0 : c0 + 24] = True
    positions = auto_positions(images, patch)
    assert len(positions) == 4
    for r, c in positions:
        assert not body[r : r + patch, c : c + patch].any(), (r, c)


def test_background_auto_mode_runs_on_phantoms(phantoms: dict[float, Path]) -> None:
    result = background_control(
        phantoms[1.0], "site", patch=8, size=48, auto=True, n_permutations=0, n_bootstrap=0
    )
    assert result["selection"].startswith("auto") and len(result["positions"]) == 4
    for r, c in result["positions"]:
        assert r in (0, 40) or c in (0, 40)


def test_ks_flags_a_shifted_mode_and_not_identical_groups() -> None:
    rng = np.random.default_rng(0)
    n = 600
    group = rng.choice(["A", "B"], n)
    sham = rng.choice(["x", "y", "z"], n)  # drawn independently of everything: must not separate
    z = rng.normal(size=(n, 8))
    z[group == "B", :4] += 1.5  # a shift shared by four latent units: the leading PCA mode after scaling
    one_each = np.arange(n).astype(str)  # independent rows: one subject id per row, said explicitly
    frame = pd.DataFrame({"group": group, "sham": sham})
    result = distribution_tests_arrays(z, frame, n_modes=5, groups=one_each)
    flagged = [t for t in result["tests"] if t["significant"]]
    assert any(t["attribute"] == "group" and t["mode"] == 1 for t in flagged)
    assert all(t["attribute"] == "group" for t in flagged)
    assert result["summary"]["sham"]["pairs_separated"] == 0
    # the text names the pair, and says of the sham only that nothing was detected (not that none differ)
    assert any(line.startswith("group: 1/1 pairs differ (A vs B)") for line in result["text"]), result["text"]
    (sham_line,) = [line for line in result["text"] if line.startswith("sham:")]
    assert "no difference detected" in sham_line and "a probe" in sham_line
    assert result["correction"].startswith("Benjamini-Yekutieli")
    # BY is stricter than the raw p-values: the q of every test is at least its p.
    assert all(t["q_value"] >= t["p_value"] for t in result["tests"])
    assert result["test_unit"] == "one image per subject" and result["units_tested"] == n
    subjects = np.repeat(np.arange(n // 3), 3).astype(str)
    per_subject = distribution_tests_arrays(z, pd.DataFrame({"group": group}), n_modes=5, groups=subjects)
    assert per_subject["test_unit"] == "one image per subject" and per_subject["units_tested"] == n // 3


def _repeated_images_cohort(seed: int, effect: float = 0.0, n_subj: int = 150, per: int = 3):
    """Three alike images per subject; site c (20 %) shifted by `effect` SD on 3 of 12 latents."""
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_subj), per)
    site = rng.choice(["a", "b", "c"], n_subj, p=[0.5, 0.3, 0.2])
    z = rng.normal(size=(n_subj, 12))[subj] + 0.3 * rng.normal(size=(len(subj), 12))
    z[site[subj] == "c", :3] += effect
    frame = pd.DataFrame({"site": site[subj], "sex": rng.choice(["F", "M"], n_subj)[subj],
                          "age": rng.uniform(20, 90, n_subj)[subj]})
    return z, frame, subj.astype(str)


def test_ks_needs_subject_ids_and_holds_its_error_rate_with_repeated_images() -> None:
    """Images as the unit flagged a difference in 76.5 % of null cohorts (/tmp/review-controls/dist_null.py):
    that path must not be taken by omission. With subject ids: false flags <= ~5 %, a real shift found."""
    z, frame, subj = _repeated_images_cohort(0)
    with pytest.raises((TypeError, EmbedxError)):
        distribution_tests_arrays(z, frame, n_modes=6)  # type: ignore[call-arg]
    with pytest.raises(EmbedxError):
        distribution_tests_arrays(z, frame, n_modes=6, groups=None)  # type: ignore[arg-type]
    with pytest.raises(EmbedxError):
        distribution_tests_arrays(z, frame, n_modes=6, groups=subj[:-1])
    false_flags = 0
    for seed in range(60):
        z, frame, subj = _repeated_images_cohort(seed)
        result = distribution_tests_arrays(z, frame, n_modes=6, seed=seed, groups=subj)
        assert result["units_tested"] == 150
        false_flags += any(t["significant"] for t in result["tests"])
    assert false_flags <= 6  # 60 cohorts at alpha 0.05: P(>= 7) = 0.03
    found = 0
    for seed in range(20):
        z, frame, subj = _repeated_images_cohort(1000 + seed, effect=1.5)
        tests = distribution_tests_arrays(z, frame, n_modes=6, seed=seed, groups=subj)["tests"]
        found += any(t["significant"] and t["attribute"] == "site" and "c" in (t["group_a"], t["group_b"])
                     for t in tests)
    assert found >= 18


def test_control_background_cli_writes_strict_json(phantoms: dict[float, Path], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from embedx.cli import app

    out = tmp_path / "bg.json"
    result = CliRunner().invoke(
        app,
        [
            "control",
            "background",
            "--manifest",
            str(phantoms[1.0]),
            "--attribute",
            "site",
            "--patch",
            "8",
            "--size",
            "48",
            "--permutations",
            "20",
            "--bootstrap",
            "100",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "verdict: acquisition signature" in result.output
    data = json.loads(out.read_text())  # strict JSON: NaN would not parse back as a number
    assert f"{data['n_subjects']} subjects ({data['n']} images)" in result.output
    assert data["attribute"] == "site" and data["control"] == "background"
    # an unreadable image without --json: its row and reason are printed, not "listed in the JSON"
    import pandas as pd

    table = pd.read_csv(phantoms[1.0])
    table["path"] = [str((phantoms[1.0].parent / p).resolve()) for p in table["path"]]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    table.loc[3, "path"] = str(tmp_path / "broken.png")
    table.to_csv(tmp_path / "broken.csv", index=False)
    printed = CliRunner().invoke(app, ["control", "background", "--manifest", str(tmp_path / "broken.csv"),
                                       "--attribute", "site", "--patch", "8", "--size", "48",
                                       "--permutations", "20", "--bootstrap", "100"])
    assert printed.exit_code == 0, printed.output
    assert "1 image(s) could not be read and were skipped:" in printed.output
    assert "row 4, line 5: " in printed.output and "listed in the JSON" not in printed.output
    bad = CliRunner().invoke(
        app, ["control", "background", "--manifest", str(phantoms[1.0]), "--attribute", "scanner"]
    )
    assert bad.exit_code != 0 and "no attribute 'scanner'" in str(bad.exception or bad.output)


def test_the_cross_site_verdict_reads_the_gaps_ci_in_both_directions() -> None:
    from embedx.analysis.cross_site import gap_verdict

    assert gap_verdict(0.02, 0.2).startswith("internal > external")
    assert gap_verdict(-0.15, -0.01).startswith("external > internal")  # p < 0.05 must not read "no gap"
    assert gap_verdict(-0.1, 0.1).startswith("no internal-external gap")
    assert gap_verdict(None, None).startswith("no internal-external gap")


def test_a_site_is_scored_only_with_five_positive_and_five_negative_subjects() -> None:
    """Site C has 12 positive images but from 3 subjects (4 each): the rule counts subjects, as every
    interval of the matrix resamples subjects, and the reason says so; prevalence is over subjects."""
    from embedx.analysis.cross_site import cross_site_arrays

    rng = np.random.default_rng(0)
    subjects, sites, positive = [], [], []
    for site, n_pos, n_neg in (("A", 12, 12), ("B", 12, 12), ("C", 3, 12)):
        for i in range(n_pos + n_neg):
            images = 4 if site == "C" and i < n_pos else 1
            subjects += [f"{site}{i}"] * images
            sites += [site] * images
            positive += [i < n_pos] * images
    y = np.array(positive)
    X = rng.normal(size=(y.size, 4)) + y[:, None]
    result = cross_site_arrays(X, y, np.array(sites), np.array(subjects), folds=3, n_bootstrap=20, tune=False)
    assert result.sites == ["A", "B"]
    assert result.skipped_sites["C"].startswith("too few subjects to score: 3 with a positive image, 12")
    assert result.subjects == {"A": 24, "B": 24} and result.positive_subjects == {"A": 12, "B": 12}
    assert result.prevalence["A"] == pytest.approx(0.5)
