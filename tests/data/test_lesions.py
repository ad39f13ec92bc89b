"""`embedx data lesions`: seed 001's spheres in the user's volumes — inside the brain, of the stated size and
contrast (measured from the written files), half of each manufacturer positive, names free of PHI."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from embedx.data.lesions import LesionSettings, insert_lesions
from embedx.data.manifest import load_manifest
from embedx.errors import EmbedxError

SPACING = (4.0, 4.0, 5.0)
SHAPE = (48, 48, 24)


def _head_ct(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Air -1000 HU, a 1000 HU skull shell, brain ~30 HU inside (ellipsoid, semi-axes 70 x 70 x 45 mm)."""
    grids = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(SHAPE, SPACING, strict=True)],
                        indexing="ij")
    r = np.sqrt((grids[0] / 70) ** 2 + (grids[1] / 70) ** 2 + (grids[2] / 45) ** 2)
    volume = np.full(SHAPE, -1000.0, np.float32)
    volume[r < 1.12] = 1000.0
    brain = r < 1.0
    volume[brain] = 30.0 + rng.normal(0, 3, int(brain.sum()))
    return np.rint(volume).astype(np.int16), brain


@pytest.fixture(scope="module")
def ct_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    rng = np.random.default_rng(0)
    rows, brains = [], {}
    affine = np.diag([*SPACING, 1.0])
    for i in range(16):
        folder = root / f"DOE^JOHN{i}_MRN{1000 + i}"  # patient-named folders: never in the output names
        folder.mkdir()
        volume, brain = _head_ct(rng)
        nib.save(nib.Nifti1Image(volume, affine), str(folder / "head.nii.gz"))
        path = f"{folder.name}/head.nii.gz"
        brains[path] = brain
        rows.append({"path": path, "subject_id": f"s{i}", "manufacturer": "GE" if i % 2 else "Siemens"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv", brains


def test_spheres_are_inside_the_brain_with_the_seed_sizes_and_contrasts(ct_cohort, tmp_path) -> None:
    manifest, brains = ct_cohort
    out = insert_lesions(manifest, tmp_path / "out", LesionSettings(seed=3))
    table = load_manifest(out).table
    lesions = pd.read_csv(tmp_path / "out" / "lesions.csv")
    negatives = table[table["finding"] == 0]
    positives = table[table["finding"] == 1]
    # half of each manufacturer's subjects positive, one volume per tier per positive subject
    for _, group in table.drop_duplicates("subject_id").groupby("manufacturer"):
        assert (group["finding"] == 1).sum() == 4
    assert len(negatives) == 8 and len(positives) == 8 * 3
    assert set(positives["finding_difficulty"]) == {"easy", "medium", "hard"}
    assert not any("DOE" in p or "MRN" in p for p in positives["path"]) and "DOE" not in lesions.to_csv()
    originals = {row["subject_id"]: row["path"] for _, row in load_manifest(manifest).table.iterrows()}
    for _, lesion in lesions.iterrows():
        source = originals[positives.set_index("path").at[lesion["path"], "subject_id"]]
        before = np.asarray(nib.load(str(manifest.parent / source)).dataobj, dtype=np.float32)
        after = np.asarray(nib.load(str(tmp_path / "out" / lesion["path"])).dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(str(tmp_path / "out" / lesion["path"].replace(".nii.gz", "_mask.nii.gz")
                                       )).dataobj) > 0
        assert mask.sum() == lesion["voxels"] and not (mask & ~brains[source]).any()  # wholly in the brain
        measured_radius = (mask.sum() * math.prod(SPACING) * 3 / (4 * math.pi)) ** (1 / 3)
        assert measured_radius == pytest.approx(lesion["radius_mm"], rel=0.08)
        low, high = (21, 26) if lesion["size"] == "large" else (13, 17)
        assert low <= lesion["radius_mm"] <= high
        expected = 50 if lesion["size"] == "large" else 40
        assert after[mask].mean() == pytest.approx(expected, abs=1.0) and after[mask].std() < 3
        np.testing.assert_array_equal(after[~mask], before[~mask])  # nothing else touched
    # the tiers share each volume's centre; easy keeps every sphere large, hard has the most small ones
    assert lesions.groupby("path").size().max() == 1
    assert (lesions.groupby("subject_id")["centre_mm"].nunique() == 1).all()
    small = lesions[lesions["size"] == "small"].groupby("tier").size()
    assert small.get("easy", 0) == 0 and small.get("hard", 0) >= small.get("medium", 0)


def test_a_given_mask_is_used_and_bad_requests_are_named(ct_cohort, tmp_path) -> None:
    manifest, _ = ct_cohort
    table = pd.read_csv(manifest)
    left = np.zeros(SHAPE, dtype=bool)
    left[8:24, 10:38, 4:20] = True  # a box in one hemisphere, 64 x 112 x 80 mm
    box = nib.Nifti1Image(left.astype(np.uint8), np.diag([*SPACING, 1.0]))
    nib.save(box, str(manifest.parent / "box.nii.gz"))
    table["mask"] = "box.nii.gz"
    table.to_csv(manifest.parent / "with-mask.csv", index=False)
    easy = LesionSettings(difficulties=("easy",))
    out = insert_lesions(manifest.parent / "with-mask.csv", tmp_path / "out", easy)
    for path in load_manifest(out).table.query("finding == 1")["path"]:
        written = tmp_path / "out" / path.replace(".nii.gz", "_mask.nii.gz")
        mask = np.asarray(nib.load(str(written)).dataobj) > 0
        assert mask.any() and not (mask & ~left).any()
    with pytest.raises(EmbedxError, match="--difficulty extreme"):
        insert_lesions(manifest, tmp_path / "x", LesionSettings(difficulties=("extreme",)))
    with pytest.raises(EmbedxError, match="--by 'scanner' is not a column"):
        insert_lesions(manifest, tmp_path / "x", LesionSettings(by="scanner"))


def test_the_built_in_mri_phantoms_take_their_spheres_from_the_same_code(tmp_path) -> None:
    from typer.testing import CliRunner

    from embedx.cli import app

    out = tmp_path / "mri"
    run = CliRunner().invoke(app, ["data", "synth", "--kind", "mri", "--n", "24", "--size", "32", "--spheres",
                                   "--strength", "0.5", "--out", str(out)])
    assert run.exit_code == 0, run.output
    truth = json.loads((out / "phantoms" / "ground_truth.json").read_text())
    assert set(truth["prevalence"].values()) == {0.0}  # the phantoms carry no lesion of their own
    table = load_manifest(out / "manifest.csv").table
    positives = table[table["finding"] == 1]
    assert len(positives) and set(positives["finding_difficulty"]) == {"easy", "medium", "hard"}
    lesions = pd.read_csv(out / "lesions.csv")
    assert lesions["blend"].eq("add").all()  # MRI units: the contrast is added, not set
    phantoms = pd.read_csv(out / "phantoms" / "manifest.csv")
    sizes = lesions.set_index("path")["size"]
    for _, row in positives.iterrows():
        mask = np.asarray(nib.load(str(out / row["lesion_mask"])).dataobj) > 0
        assert mask.any() and not mask[..., 0].any() and not mask[..., -1].any()
        after = np.asarray(nib.load(str(out / row["path"])).dataobj, dtype=np.float32)
        # its source: the subject's phantom that the insertion left unchanged outside the sphere
        (before,) = [v for v in (np.asarray(nib.load(str(out / "phantoms" / p)).dataobj, dtype=np.float32)
                                 for p in phantoms.loc[phantoms["subject_id"] == row["subject_id"], "path"])
                     if np.array_equal(v[~mask], after[~mask])]
        expected = 50 if sizes[row["path"]] == "large" else 40
        assert (after - before)[mask].mean() == pytest.approx(expected, abs=1.0)
