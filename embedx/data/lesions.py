"""`embedx data lesions`: seed 001's synthetic spheres, inserted into the user's own volumes.

Seed 001 placed one sphere wholly inside the brain of half of the examinations (balanced by manufacturer):
"easy" spheres of radius 21-26 mm with intensities ~ N(50, 2) HU; the "medium" set kept 80 % of the
positives as they were and gave the other 20 % radius 13-17 mm at N(40, 2) HU; the "hard" set did the same
for 35 %. The centres were drawn once and kept, so the tiers differ only in the spheres. This does that:

- the mask: a `mask` column (a NIfTI per row), or threshold-and-fill — CT (values in HU): soft tissue
  between -20 and 100 HU, the largest connected part, holes filled; other volumes: above Otsu's threshold,
  the same clean-up. A sphere's centre is drawn where the distance to the mask's edge (in millimetres,
  from the voxel spacing) exceeds its radius, so every sphere lies wholly inside the mask;
- the spheres: radius in millimetres, voxels inside set to N(mean, sd) ("replace", the seed's CT recipe)
  or raised by it ("add", for volumes not in HU, e.g. MRI in arbitrary units); `--blend auto` picks
  "replace" for CT-like volumes;
- the output: one NIfTI per positive per tier (same affine and header), a lesion mask beside it, a manifest
  (`finding`, `finding_difficulty`; negatives keep their own file), and `lesions.csv` (centre in voxels and
  millimetres, radius, contrast, blend). New files are named by sample id, never by the input's name (which
  often carries the patient's).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedx.data.manifest import Manifest, load_manifest, write_manifest
from embedx.errors import EmbedxError
from embedx.privacy import scrub_path

log = logging.getLogger(__name__)

LARGE = {"radius_mm": (21.0, 26.0), "mean": 50.0, "sd": 2.0}
SMALL = {"radius_mm": (13.0, 17.0), "mean": 40.0, "sd": 2.0}
SMALL_SHARE = {"easy": 0.0, "medium": 0.20, "hard": 0.35}
CT_MIN = -500.0  # a volume whose minimum is below this holds air in HU: a CT
MAX_TRIES = 200


@dataclass(frozen=True)
class LesionSettings:
    difficulties: tuple[str, ...] = ("easy", "medium", "hard")
    fraction: float = 0.5
    by: str | None = "manufacturer"
    blend: str = "auto"  # auto | replace | add
    seed: int = 0
    target: str = "finding"


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of the histogram."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mean_below = np.cumsum(hist * centres) / np.maximum(weight, 1)
    mean_all = (hist * centres).sum() / total
    between = weight * (total - weight) * (mean_below - (mean_all * total - mean_below * weight)
                                           / np.maximum(total - weight, 1)) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def brain_mask(volume: np.ndarray, ct: bool) -> np.ndarray:
    """Threshold-and-fill: the largest connected body of tissue, holes filled (3-D)."""
    from scipy import ndimage

    tissue = (volume > -20) & (volume < 100) if ct else volume > otsu_threshold(volume[volume > volume.min()])
    labels, count = ndimage.label(tissue)
    if count == 0:
        return np.zeros(volume.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def place_sphere(mask: np.ndarray, spacing: tuple[float, ...], radius_mm: float, rng: np.random.Generator
                 ) -> np.ndarray | None:
    """A centre (voxel index) whose distance to the mask's edge exceeds the radius, or None."""
    from scipy import ndimage

    # Padded with background: beyond the field of view is outside too (a slab must not cut a sphere).
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[(slice(1, -1),) * mask.ndim]
    candidates = np.argwhere(depth > radius_mm + max(spacing))
    if candidates.size == 0:
        return None
    return candidates[int(rng.integers(len(candidates)))]


def sphere(shape: tuple[int, ...], spacing: tuple[float, ...], centre: np.ndarray, radius_mm: float
           ) -> np.ndarray:
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing, strict=True)],
                        indexing="ij", sparse=True)
    return sum(g ** 2 for g in grids) <= radius_mm ** 2


def _positives(table: pd.DataFrame, by: str | None, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Half (`fraction`) of each group positive, by subject so a subject's volumes share their label."""
    positive = np.zeros(len(table), dtype=bool)
    groups = table[by].fillna("(missing)").astype(str) if by else pd.Series("all", index=table.index)
    for _, rows in table.groupby(groups.to_numpy()).groups.items():
        subjects = table.loc[rows, "subject_id"].unique()
        chosen = rng.permutation(subjects)[: round(fraction * len(subjects))]
        positive[np.asarray(rows)[table.loc[rows, "subject_id"].isin(chosen).to_numpy()]] = True
    return positive


def _name(path: str, tier: str) -> str:
    return hashlib.sha256(f"{path}\x00{tier}".encode()).hexdigest()[:16]


def insert_lesions(manifest: str | Path | Manifest, out: str | Path, settings: LesionSettings | None = None
                   ) -> Path:
    """Write the lesion cohort into `out`; returns its manifest (see the module docstring)."""
    import nibabel as nib

    settings = settings or LesionSettings()
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    unknown = [d for d in settings.difficulties if d not in SMALL_SHARE]
    if unknown or not settings.difficulties:
        raise EmbedxError(f"--difficulty {','.join(settings.difficulties)}: use easy, medium and/or hard")
    if not 0 < settings.fraction < 1:
        raise EmbedxError(f"--fraction must lie in (0, 1), got {settings.fraction}")
    if settings.by and settings.by not in man.table.columns:
        raise EmbedxError(f"--by {settings.by!r} is not a column of {man.source}")
    if settings.blend not in ("auto", "replace", "add"):
        raise EmbedxError(f"--blend {settings.blend!r}: use auto, replace or add")
    table = man.table.reset_index(drop=True)
    not_nifti = [i for i, p in enumerate(table["path"]) if not str(p).lower().endswith((".nii", ".nii.gz"))]
    if not_nifti:
        raise EmbedxError(f"{man.source}: lesions go into NIfTI volumes; row {not_nifti[0] + 1} is "
                          f"{table.at[not_nifti[0], 'path']!r}")
    out = Path(out)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed)
    positive = _positives(table, settings.by, settings.fraction, rng)
    rows_out: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    for i, row in table.iterrows():
        source = man.absolute_path(int(i))
        if not positive[i]:
            rows_out.append({**row.to_dict(), "path": str(source.resolve()), settings.target: 0,
                             f"{settings.target}_difficulty": ""})
            continue
        try:
            image = nib.load(str(source))
            volume = np.asarray(image.dataobj, dtype=np.float32)
        except Exception as err:  # nibabel raises many types for a broken file
            skipped.append(f"row {i + 1}: {scrub_path(str(err), source)}")
            continue
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        ct = float(volume.min()) < CT_MIN
        blend = ("replace" if ct else "add") if settings.blend == "auto" else settings.blend
        if "mask" in table.columns and isinstance(row.get("mask"), str) and row["mask"]:
            mask_path = Path(row["mask"]) if Path(row["mask"]).is_absolute() else man.root / row["mask"]
            mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
        else:
            mask = brain_mask(volume, ct)
        large_radius = float(rng.uniform(*LARGE["radius_mm"]))
        small_radius = float(rng.uniform(*SMALL["radius_mm"]))
        centre = place_sphere(mask, spacing, large_radius, rng)  # drawn once: every tier shares it
        if centre is None:
            skipped.append(f"row {i + 1}: no place inside the mask fits a {large_radius:.0f} mm sphere")
            continue
        small_draw = float(rng.random())
        for tier in settings.difficulties:
            spec = SMALL if small_draw < SMALL_SHARE[tier] else LARGE
            radius = small_radius if spec is SMALL else large_radius
            ball = sphere(volume.shape[:3], spacing, centre, radius)
            values = rng.normal(spec["mean"], spec["sd"], int(ball.sum())).astype(np.float32)
            lesioned = volume.copy()
            lesioned[ball] = values if blend == "replace" else lesioned[ball] + values
            name = _name(str(source), tier)
            dtype = image.get_data_dtype()
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                lesioned = np.clip(np.rint(lesioned), info.min, info.max)
            header = image.header.copy()
            header.set_slope_inter(1, 0)
            nib.save(nib.Nifti1Image(lesioned.astype(dtype), image.affine, header),
                     str(out / "volumes" / f"{name}.nii.gz"))
            nib.save(nib.Nifti1Image(ball.astype(np.uint8), image.affine),
                     str(out / "volumes" / f"{name}_mask.nii.gz"))
            rows_out.append({**row.to_dict(), "path": f"volumes/{name}.nii.gz", settings.target: 1,
                             f"{settings.target}_difficulty": tier,
                             "lesion_mask": f"volumes/{name}_mask.nii.gz"})
            centre_mm = [float(c * s) for c, s in zip(centre, spacing, strict=True)]
            records.append({"path": f"volumes/{name}.nii.gz", "subject_id": row["subject_id"], "tier": tier,
                            "size": "small" if spec is SMALL else "large",
                            "centre_voxel": list(map(int, centre)),
                            "centre_mm": centre_mm, "radius_mm": radius, "contrast_mean": spec["mean"],
                            "contrast_sd": spec["sd"], "blend": blend, "voxels": int(ball.sum())})
    if skipped:
        log.warning("%d volume(s) got no lesion and are left out:\n  %s", len(skipped),
                    "\n  ".join(skipped[:20]))
    if not records:
        raise EmbedxError(f"{man.source}: no lesion could be placed ({'; '.join(skipped[:3])})")
    frame = pd.DataFrame(rows_out)
    frame["lesion_mask"] = frame.get("lesion_mask", pd.Series(dtype=object)).fillna("")
    pd.DataFrame(records).to_csv(out / "lesions.csv", index=False)
    schema = dict(man.schema)
    from embedx.data.schema import AttributeSpec

    schema[settings.target] = AttributeSpec(settings.target, "binary", "clinical")
    schema[f"{settings.target}_difficulty"] = AttributeSpec(f"{settings.target}_difficulty", "categorical",
                                                            "clinical")
    frame = frame.drop(columns=[c for c in ("mask",) if c in frame.columns])
    kept = {k: v for k, v in schema.items() if k in frame.columns}
    return write_manifest(frame, out / "manifest.csv", kept)
