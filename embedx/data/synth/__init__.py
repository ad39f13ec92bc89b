"""Known-answer synthetic cohorts: images whose acquisition and anatomical signals are known exactly.

`generate_cohort` writes images, `manifest.csv` (+ sidecar `manifest.yaml`), `ground_truth.json` (what each
attribute does to the pixels, and which attributes do nothing) and `lesions.csv` (where each lesion is). Every
known-answer test in embedx — probes must find site and sex, must not find insurance; controls must see the
site in blank corners — runs on these cohorts.
"""

from __future__ import annotations

import gzip
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedx.data.synth import common, cxr, mri
from embedx.errors import EmbedxError
from embedx.progress import progress_bar

KINDS = ("cxr", "mri")
# (kind, role) per attribute column; the sidecar YAML declares these so no inference is needed.
SCHEMA: dict[str, tuple[str, str]] = {
    "site": ("categorical", "acquisition"),
    "manufacturer": ("categorical", "acquisition"),
    "view": ("binary", "acquisition"),
    "sex": ("binary", "demographic"),
    "age": ("continuous", "demographic"),
    "finding": ("binary", "clinical"),
    "finding_difficulty": ("categorical", "clinical"),
    "insurance": ("categorical", "demographic"),
}
_CHUNK = 64
# Beyond 1 the signatures are extrapolated (noise and texture weights clamped at their floors); past 3 the
# exaggeration stops meaning anything.
MAX_STRENGTH = 3.0
_LESION_BASE = ["path", "radius_mm", "contrast", "contrast_sd", "edge_mm", "center_row", "center_col"]
LESION_COLUMNS = {"cxr": [*_LESION_BASE, "radius_px"], "mri": [*_LESION_BASE, "center_slice", "radius_px"]}


def generate_cohort(
    kind: str,
    n: int,
    out: str | Path,
    size: int = 128,
    strength: float = 1.0,
    seed: int = 0,
    prevalence: dict[str, float] | float | None = None,
    workers: int | None = None,
    lesion_contrast: float = 1.0,
) -> Path:
    """Write a synthetic cohort of `n` images into `out` and return the manifest path.

    `strength` scales every acquisition signature (site, manufacturer, view): 0 makes them pure labels,
    1 is the documented signature, larger values exaggerate it. Anatomy (sex, age) and the finding are not
    scaled. `prevalence` maps site -> finding prevalence (Zech-style confounding); default 0.30 everywhere.
    `lesion_contrast` multiplies the seed-001 lesion contrasts: at 1 a nodule is subtle at 64-128 px (a
    probe finds it weakly, a few-minute detector not at all); 4-8 makes it plain for supervised experiments.
    The output is byte-identical for the same arguments, whatever `workers` is.
    """
    if kind not in KINDS:
        raise EmbedxError(f"unknown synthetic kind {kind!r}; choose one of {', '.join(KINDS)}")
    if size < 16:
        raise EmbedxError(f"--size must be at least 16 pixels, got {size}")
    if not 0 <= strength <= MAX_STRENGTH:
        raise EmbedxError(f"--strength must lie in [0, {MAX_STRENGTH:g}], got {strength}")
    if not 0 < lesion_contrast <= 50:
        raise EmbedxError(f"--lesion-contrast must lie in (0, 50], got {lesion_contrast}")
    prevalences = common.resolve_prevalence(prevalence)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    _remove_stale_images(out / "images")
    cohort = common.draw_cohort(n, seed, prevalences, with_view=(kind == "cxr"))
    suffix = ".png" if kind == "cxr" else ".nii.gz"
    paths = [f"images/{i:06d}{suffix}" for i in range(n)]

    records = cohort.table.to_dict("records")
    # Each job carries only its own rows and seeds, so the work shipped to a worker does not grow with n.
    jobs = [
        (
            kind,
            out,
            size,
            strength,
            lesion_contrast,
            i,
            records[i : i + _CHUNK],
            cohort.subject_seeds[i : i + _CHUNK],
            cohort.image_seeds[i : i + _CHUNK],
        )
        for i in range(0, n, _CHUNK)
    ]
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n * size * size * (16 if kind == "mri" else 1) >= 4e6 else 1
    lesions: list[dict[str, Any]] = []
    with progress_bar(n, f"synth {kind}", unit="img") as advance:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for done in pool.map(_render_chunk, jobs):
                    lesions.extend(done)
                    advance(len(done))
        else:
            for job in jobs:
                done = _render_chunk(job)
                lesions.extend(done)
                advance(len(done))

    table = cohort.table.copy()
    table.insert(0, "path", paths)
    manifest_path = out / "manifest.csv"
    _write_manifest(table, manifest_path)
    lesion_rows = [{"path": paths[i], **rec} for i, rec in enumerate(lesions) if rec]
    pd.DataFrame(lesion_rows, columns=LESION_COLUMNS[kind]).to_csv(out / "lesions.csv", index=False)
    truth = ground_truth(kind, n, size, strength, seed, prevalences, table, lesion_contrast)
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return manifest_path


def _remove_stale_images(folder: Path) -> None:
    """Delete images a previous run left here (only our own NNNNNN.png / NNNNNN.nii.gz names), so that the
    folder holds exactly the cohort the manifest describes."""
    import re

    ours = re.compile(r"^\d{6}\.(png|nii\.gz)$")
    for path in folder.iterdir():
        if path.is_file() and ours.match(path.name):
            path.unlink()


def _render_chunk(job: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Render and write rows [start, stop); returns one lesion record per row (empty dict when none)."""
    kind, out, size, strength, lesion_contrast, start, rows, subject_seeds, image_seeds = job
    records: list[dict[str, Any]] = []
    for offset, row in enumerate(rows):
        i = start + offset
        subject = np.random.default_rng(subject_seeds[offset])
        image = np.random.default_rng(image_seeds[offset])
        if kind == "cxr":
            pixels, lesion = cxr.render(row, subject, image, size, strength, lesion_contrast)
            _write_png(out / "images" / f"{i:06d}.png", pixels)
        else:
            volume, lesion = mri.render(row, subject, image, size, strength, lesion_contrast)
            _write_nifti(out / "images" / f"{i:06d}.nii.gz", volume, size)
        records.append(lesion)
    return records


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG", compress_level=1)


def _write_nifti(path: Path, volume: np.ndarray, size: int) -> None:
    """int16 NIfTI, gzip'd with mtime 0 so that the bytes depend on the pixels only."""
    import nibabel as nib

    spacing = mri.FOV_MM / size
    affine = np.diag([spacing, spacing, mri.SLICE_MM, 1.0])
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    raw = image.to_bytes()
    with (
        open(path, "wb") as fh,
        gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1, mtime=0, filename="") as gz,
    ):
        gz.write(raw)


def _write_manifest(table: pd.DataFrame, path: Path) -> None:
    """Manifest + sidecar through the manifest module; the schema is declared, never inferred."""
    try:
        from embedx.data.manifest import write_manifest
        from embedx.data.schema import AttributeSpec
    except ImportError:  # manifest module not present yet: same files, written directly
        import yaml

        table.to_csv(path, index=False)
        data = {"attributes": {k: {"kind": kr[0], "role": kr[1]} for k, kr in SCHEMA.items() if k in table}}
        path.with_suffix(".yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return
    schema = {name: AttributeSpec(name, k, r) for name, (k, r) in SCHEMA.items() if name in table.columns}
    write_manifest(table, path, schema)


def ground_truth(
    kind: str,
    n: int,
    size: int,
    strength: float,
    seed: int,
    prevalence: dict[str, float],
    table: pd.DataFrame,
    lesion_contrast: float = 1.0,
) -> dict[str, Any]:
    """The answer key: per attribute, whether and how it reaches the pixels at this strength."""
    module = cxr if kind == "cxr" else mri
    acquisition_on = strength > 0
    confounded = len(set(prevalence.values())) > 1
    attributes: dict[str, dict[str, Any]] = {}
    for name, (attr_kind, role) in SCHEMA.items():
        if name not in table.columns:
            continue
        in_pixels = True
        scaled = role == "acquisition"
        if scaled:
            in_pixels = acquisition_on
        if name == "insurance":
            in_pixels = False
        entry: dict[str, Any] = {
            "in_pixels": in_pixels,
            "kind": attr_kind,
            "role": role,
            "effect": module.EFFECTS[name]
            if in_pixels
            else (
                "none at strength 0 (acquisition signatures removed); a pure label"
                if scaled
                else module.EFFECTS[name]
            ),
            "strength": strength if scaled else (1.0 if in_pixels else 0.0),
            "scaled_by_strength": scaled,
        }
        if name in ("site", "manufacturer") and confounded:
            entry["confounded_via"] = "finding (site-dependent prevalence)"
        # A known-answer check compares "in the pixels" with "found by a probe". Difficulty grades the
        # lesions of positives only (medium vs hard differ by a 4 mm margin), so whether a probe resolves it
        # depends on the image size: it is recorded, not used as a known answer.
        entry["known_answer"] = name != "finding_difficulty"
        attributes[name] = entry
    counts = table["finding_difficulty"].replace("", np.nan).value_counts().to_dict()
    return {
        "kind": kind,
        "n": n,
        "n_subjects": int(table["subject_id"].nunique()),
        "size": size,
        "seed": seed,
        "strength": strength,
        "lesion_contrast": lesion_contrast,
        "prevalence": prevalence,
        "attributes": attributes,
        "sites": {
            s: {"manufacturer": common.MANUFACTURER_OF_SITE[s], **_signature_dict(module.SIGNATURES[s])}
            for s in common.SITES
        },
        "neutral_signature": module.NEUTRAL,
        "lesion_recipes": common.LESION_RECIPES,
        "difficulty_shares": common.DIFFICULTY_SHARES,
        "difficulty_counts": {str(k): int(v) for k, v in counts.items()},
        "geometry": module.GEOMETRY,
        "files": {
            "manifest": "manifest.csv",
            "schema": "manifest.yaml",
            "lesions": "lesions.csv",
            "images": "images/",
        },
    }


def _signature_dict(sig: common.SiteSignature) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(sig)


def read_ground_truth(folder: str | Path) -> dict[str, Any]:
    """Load `ground_truth.json` from a cohort folder (or the file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / "ground_truth.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise EmbedxError(
            f"{path}: no ground_truth.json (was this folder made by `embedx data synth`?)"
        ) from err


__all__ = ["KINDS", "SCHEMA", "generate_cohort", "ground_truth", "read_ground_truth"]
