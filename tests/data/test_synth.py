"""Known-answer checks of the synthetic cohorts: they inject exactly what ground_truth.json claims.

The classifiers are deliberately simple (logistic regression on a dozen pixel statistics, or on a PCA of
block-averaged pixels) with subject-grouped 5-fold CV, so a pass means the signal is plainly in the pixels
and a chance result means it is not there for anything simple to find.

Chance tolerance: under "no signal" the cross-validated balanced accuracy of a K-class problem with n images
is close to a Binomial(n, 1/K)/n proportion, sd = sqrt((1/K)(1-1/K)/n). We allow chance + 4 sd (false alarm
about 3e-5 per check). Any real leak of the site signature gives accuracies far above that (0.9+ at
strength 1), so the bound separates "absent" from "present" with a wide margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from embedx.data.synth import common, cxr, generate_cohort, mri, read_ground_truth
from embedx.errors import EmbedxError

N, SIZE = 320, 48


def _load(folder: Path) -> tuple[pd.DataFrame, np.ndarray]:
    table = pd.read_csv(folder / "manifest.csv")
    images = []
    for p in table["path"]:
        if p.endswith(".png"):
            images.append(np.asarray(Image.open(folder / p), dtype=np.float32))
        else:
            vol = np.asarray(nib.load(folder / p).dataobj, dtype=np.float32)
            images.append(vol[:, :, vol.shape[2] // 2])
    return table, np.stack(images)


@pytest.fixture(scope="session")
def cxr_s1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    out = tmp_path_factory.mktemp("cxr_s1")
    generate_cohort("cxr", N, out, size=SIZE, strength=1.0, seed=1)
    return (out, *_load(out))


@pytest.fixture(scope="session")
def cxr_s0(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    out = tmp_path_factory.mktemp("cxr_s0")
    generate_cohort("cxr", N, out, size=SIZE, strength=0.0, seed=1)
    return (out, *_load(out))


@pytest.fixture(scope="session")
def mri_s1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    out = tmp_path_factory.mktemp("mri_s1")
    generate_cohort("mri", 160, out, size=32, strength=1.0, seed=2)
    return (out, *_load(out))


def _stats(images: np.ndarray) -> np.ndarray:
    """A handful of pixel statistics per image: level, spread, percentiles, edges, line energy, corners."""
    flat = images.reshape(len(images), -1)
    dx = np.diff(images, axis=2)
    dy = np.diff(images, axis=1)
    c = images.shape[1] // 8
    corners = [images[:, :c, :c], images[:, :c, -c:], images[:, -c:, :c], images[:, -c:, -c:]]
    feats = [
        flat.mean(1),
        flat.std(1),
        *np.percentile(flat, [5, 25, 50, 75, 95], axis=1),
        np.abs(dx).mean((1, 2)),
        np.abs(dy).mean((1, 2)),
        *[k.mean((1, 2)) for k in corners],
        *[k.std((1, 2)) for k in corners],
    ]
    return np.stack(feats, 1)


def _corner_stats(images: np.ndarray) -> np.ndarray:
    """Statistics of the two bottom corner patches only (no marker there): the background-patch control."""
    c = images.shape[1] // 8
    feats = []
    for patch in (images[:, -c:, :c], images[:, -c:, -c:]):
        feats += [
            patch.mean((1, 2)),
            patch.std((1, 2)),
            np.abs(np.diff(patch, axis=1)).mean((1, 2)),
            np.abs(np.diff(patch, axis=2)).mean((1, 2)),
        ]
    return np.stack(feats, 1)


def _pca_pixels(images: np.ndarray, block: int = 3) -> np.ndarray:
    n, h, w = images.shape
    small = (
        images[:, : h - h % block, : w - w % block]
        .reshape(n, h // block, block, w // block, block)
        .mean((2, 4))
    )
    return small.reshape(n, -1)


def _cv_balanced_accuracy(features: np.ndarray, labels: pd.Series, groups: pd.Series, pca: int = 0) -> float:
    steps = [StandardScaler()] + ([PCA(pca, random_state=0)] if pca else [])
    model = make_pipeline(*steps, LogisticRegression(max_iter=2000, C=1.0))
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    pred = cross_val_predict(model, features, labels.to_numpy(), groups=groups.to_numpy(), cv=cv)
    return float(balanced_accuracy_score(labels, pred))


def _chance_bound(labels: pd.Series) -> float:
    k = labels.nunique()
    return 1 / k + 4 * np.sqrt((1 / k) * (1 - 1 / k) / len(labels))


def test_site_found_at_strength_1(cxr_s1) -> None:
    _, table, images = cxr_s1
    assert _cv_balanced_accuracy(_stats(images), table["site"], table["subject_id"]) > 0.95


def test_site_at_chance_at_strength_0(cxr_s0) -> None:
    _, table, images = cxr_s0
    score = _cv_balanced_accuracy(_stats(images), table["site"], table["subject_id"])
    assert score < _chance_bound(table["site"]), score
    corners = _cv_balanced_accuracy(_corner_stats(images), table["site"], table["subject_id"])
    assert corners < _chance_bound(table["site"]), corners


def test_corner_patches_alone_recover_site(cxr_s1) -> None:
    _, table, images = cxr_s1
    assert _cv_balanced_accuracy(_corner_stats(images), table["site"], table["subject_id"]) > 0.9


def test_no_effect_label_at_chance(cxr_s1) -> None:
    _, table, images = cxr_s1
    feats = np.concatenate([_stats(images), _pca_pixels(images)], 1)
    score = _cv_balanced_accuracy(feats, table["insurance"], table["subject_id"], pca=20)
    assert score < _chance_bound(table["insurance"]), score


def test_view_is_acquisition(cxr_s1, cxr_s0) -> None:
    """AP vs PA (magnified heart, scapulae) is found at strength 1 and gone at strength 0."""
    for (_, table, images), present in ((cxr_s1, True), (cxr_s0, False)):
        score = _cv_balanced_accuracy(
            _pca_pixels(images, block=2), table["view"], table["subject_id"], pca=30
        )
        assert (score > 0.85) if present else (score < _chance_bound(table["view"])), (present, score)


def _age_mae_ratio(pixels: np.ndarray, table: pd.DataFrame) -> float:
    """Cross-validated ridge MAE on pixel PCA over the median-baseline MAE (< 1: age is in the pixels)."""
    model = make_pipeline(StandardScaler(), PCA(20, random_state=0), Ridge(alpha=10.0))
    pred = cross_val_predict(model, pixels, table["age"], groups=table["subject_id"], cv=GroupKFold(5))
    baseline = mean_absolute_error(table["age"], np.full(len(table), table["age"].median()))
    return float(mean_absolute_error(table["age"], pred) / baseline)


def test_anatomy_stays_at_strength_0(cxr_s0) -> None:
    _, table, images = cxr_s0
    pixels = _pca_pixels(images)
    assert _cv_balanced_accuracy(pixels, table["sex"], table["subject_id"], pca=20) > 0.8
    assert _age_mae_ratio(pixels, table) < 0.8


def test_mri_site_and_nifti(mri_s1) -> None:
    folder, table, images = mri_s1
    vol = nib.load(folder / table["path"][0])
    assert vol.shape == (32, 32, mri.SLICES)
    assert np.allclose(vol.header.get_zooms(), (mri.FOV_MM / 32, mri.FOV_MM / 32, mri.SLICE_MM))
    assert _cv_balanced_accuracy(_stats(images), table["site"], table["subject_id"]) > 0.9
    pixels = _pca_pixels(images, block=2)
    assert _cv_balanced_accuracy(pixels, table["sex"], table["subject_id"], pca=20) > 0.75
    assert _age_mae_ratio(pixels, table) < 0.9
    score = _cv_balanced_accuracy(
        np.concatenate([_stats(images), pixels], 1), table["insurance"], table["subject_id"], pca=20
    )
    assert score < _chance_bound(table["insurance"]), score


def test_lesion_is_the_seed_recipe() -> None:
    """Render the same positive twice, once with zero contrast: the difference is exactly the lesion."""
    row = {
        "subject_id": "s",
        "site": "east",
        "manufacturer": "VendorB",
        "view": "PA",
        "sex": "F",
        "age": 50.0,
        "finding": 1,
        "finding_difficulty": "easy",
        "insurance": "public",
    }
    size = 128

    def draw(module, contrast: float) -> tuple[np.ndarray, dict]:
        saved = dict(common.LESION_RECIPES["easy"])
        common.LESION_RECIPES["easy"]["contrast"] = contrast
        try:
            ss = np.random.SeedSequence(7)
            return module.render(
                row, np.random.default_rng(ss), np.random.default_rng(ss.spawn(1)[0]), size, 0.0
            )
        finally:
            common.LESION_RECIPES["easy"].update(saved)

    for module, scale in ((cxr, cxr.PNG_SCALE), (mri, 1.0)):
        with_lesion, lesion = draw(module, 50.0)
        without, _ = draw(module, 0.0)
        diff = (with_lesion.astype(np.float64) - without) / scale
        if diff.ndim == 3:
            diff = diff[:, :, round(lesion["center_slice"])]
        assert 21 <= lesion["radius_mm"] <= 26
        rows, cols = np.mgrid[:size, :size]
        dist = np.hypot(rows - lesion["center_row"], cols - lesion["center_col"])
        inner = dist < lesion["radius_px"] * (0.8 if module is cxr else 0.6)
        assert abs(diff[inner].mean() - 50.0) < 1.0
        assert np.abs(diff[dist > lesion["radius_px"] + 1.5]).max() <= 1.0


def test_lesion_contrast_multiplies_the_recipe_and_is_recorded(tmp_path: Path) -> None:
    """`--lesion-contrast 4`: the same positive differs from its contrast-1 twin by 3 x 50 inside the
    nodule and by nothing outside it; lesions.csv and ground_truth.json carry the scaled contrast."""
    row = {"subject_id": "s", "site": "north", "manufacturer": "VendorA", "view": "PA", "sex": "M",
           "age": 60.0, "finding": 1, "finding_difficulty": "easy", "insurance": "public"}

    def draw(scale: float) -> tuple[np.ndarray, dict]:
        ss = np.random.SeedSequence(11)  # fresh each time: spawn() advances the sequence
        return cxr.render(row, np.random.default_rng(ss), np.random.default_rng(ss.spawn(1)[0]), 128, 0.0,
                          lesion_contrast=scale)

    plain, lesion = draw(1.0)
    strong, strong_lesion = draw(4.0)
    diff = (strong.astype(np.float64) - plain) / cxr.PNG_SCALE
    rows, cols = np.mgrid[:128, :128]
    dist = np.hypot(rows - lesion["center_row"], cols - lesion["center_col"])
    assert abs(diff[dist < 0.8 * lesion["radius_px"]].mean() - 150.0) < 3.0
    assert np.abs(diff[dist > lesion["radius_px"] + 1.5]).max() <= 1.0
    assert strong_lesion["contrast"] == 200.0 and lesion["contrast"] == 50.0
    folder = generate_cohort("cxr", 30, tmp_path / "c", size=24, seed=2, prevalence=0.6,
                             lesion_contrast=4.0).parent
    assert read_ground_truth(folder)["lesion_contrast"] == 4.0
    contrasts = pd.read_csv(folder / "lesions.csv")["contrast"]
    assert len(contrasts) and set(contrasts) <= {200.0, 160.0}  # easy 50 x 4; medium and hard 40 x 4
    with pytest.raises(EmbedxError, match="--lesion-contrast"):
        generate_cohort("cxr", 3, tmp_path / "bad", size=24, lesion_contrast=0.0)


def test_difficulty_proportions_and_prevalence() -> None:
    prevalence = common.resolve_prevalence({"north": 0.6, "south": 0.05})
    cohort = common.draw_cohort(6000, 3, prevalence, with_view=True).table
    by_site = cohort.groupby("site")["finding"].mean()
    assert abs(by_site["north"] - 0.6) < 0.05 and abs(by_site["south"] - 0.05) < 0.03
    assert abs(by_site["east"] - common.DEFAULT_PREVALENCE) < 0.05
    shares = cohort.loc[cohort["finding"] == 1, "finding_difficulty"].value_counts(normalize=True)
    for name, expected in common.DIFFICULTY_SHARES.items():
        assert abs(shares[name] - expected) < 0.04, (name, shares[name])
    assert (cohort.loc[cohort["finding"] == 0, "finding_difficulty"] == "").all()
    per_subject = cohort.groupby("subject_id").size()
    assert per_subject.min() >= 1 and per_subject.max() <= 3 and (per_subject > 1).mean() > 0.4
    assert (cohort.groupby("subject_id")["site"].nunique() == 1).all()


def test_deterministic_bytes(tmp_path: Path) -> None:
    for kind in ("cxr", "mri"):
        a = generate_cohort(kind, 10, tmp_path / f"{kind}_a", size=24, seed=5, workers=1).parent
        b = generate_cohort(kind, 10, tmp_path / f"{kind}_b", size=24, seed=5, workers=2).parent
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert len(files) == 10 + 4
        for rel in files:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = generate_cohort("cxr", 10, tmp_path / "cxr_c", size=24, seed=6).parent
    generate_cohort("mri", 3, c, size=16, seed=6)  # a smaller cohort of another kind over the same folder
    assert sorted(p.name for p in (c / "images").iterdir()) == [f"00000{i}.nii.gz" for i in range(3)]
    c = generate_cohort("cxr", 10, c, size=24, seed=6).parent
    assert (c / "images/000000.png").read_bytes() != (tmp_path / "cxr_a/images/000000.png").read_bytes()


def test_ground_truth_and_schema(cxr_s1, cxr_s0) -> None:
    folder1, table, _ = cxr_s1
    truth1 = read_ground_truth(folder1)
    assert truth1["attributes"]["site"]["in_pixels"] is True
    assert truth1["attributes"]["insurance"]["in_pixels"] is False
    assert truth1["attributes"]["sex"]["in_pixels"] is True
    truth0 = read_ground_truth(cxr_s0[0])
    assert truth0["attributes"]["site"]["in_pixels"] is False
    assert truth0["attributes"]["view"]["in_pixels"] is False
    assert truth0["attributes"]["age"]["in_pixels"] is True
    assert truth1["n"] == len(table) == N
    assert sum(truth1["difficulty_counts"].values()) == int(table["finding"].sum())
    lesions = pd.read_csv(folder1 / "lesions.csv")
    assert set(lesions["path"]) == set(table.loc[table["finding"] == 1, "path"])
    assert (table.groupby("site")["manufacturer"].nunique() == 1).all()

    from embedx.data.manifest import load_manifest

    manifest = load_manifest(folder1 / "manifest.csv")
    assert manifest.schema["site"].role == "acquisition" and not manifest.schema["site"].inferred
    assert manifest.schema["age"].kind == "continuous"


def test_cli_synth(tmp_path: Path) -> None:
    from embedx.cli import app

    out = tmp_path / "c"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "synth",
            "--kind",
            "mri",
            "--n",
            "6",
            "--size",
            "24",
            "--out",
            str(out),
            "--strength",
            "0.5",
            "--prevalence",
            "north=1,south=0",
        ],
    )
    assert result.exit_code == 0, result.output
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["strength"] == 0.5 and truth["prevalence"]["north"] == 1.0
    assert len(list((out / "images").glob("*.nii.gz"))) == 6
    assert (out / "manifest.yaml").exists()
    bad = CliRunner().invoke(app, ["data", "synth", "--kind", "ct", "--n", "2", "--out", str(tmp_path / "d")])
    assert bad.exit_code != 0
