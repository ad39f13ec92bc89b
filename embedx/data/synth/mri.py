"""Brain MRI phantoms: small T1-like volumes (scalp, skull, CSF, grey and white matter, ventricles), NIfTI.

Each volume is `(size, size, SLICES)` int16 with `volume[:, :, k]` the k-th axial slice as rendered (rows
top->bottom, columns left->right) and voxel size `FOV_MM / size` x `FOV_MM / size` x `SLICE_MM`. Intensities
are T1-like (WM 110, GM 75, CSF 25, scalp fat 140, air 0) in the same units as the lesion contrasts of seed
001 (50 and 40 above the local tissue), so "HU-like" contrast means the same in both phantom kinds.

The lesion is a sphere entirely inside the brain whose centre lies within half a radius of the middle slice,
so the central slice — what a 2-D model reads by default — always shows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedx.data.synth.common import (
    SiteSignature,
    draw_lesion,
    lesion_profile,
    marker_mask,
    mix,
    neutral_signature,
    texture_noise,
    unsharp,
)

FOV_MM = 240.0
MM_PER_UNIT = FOV_MM / 2.0
SLICES = 16
SLICE_MM = 5.0
SCALP, SKULL, CSF, GM, WM = 140.0, 20.0, 25.0, 75.0, 110.0
MARKER_VALUE = 250.0
INTENSITY_REF = 150.0  # gamma acts on value / INTENSITY_REF

SIGNATURES: dict[str, SiteSignature] = {
    "north": SiteSignature(
        noise=3.0,
        texture={"white": 0.3, "fine": 1.0},
        sharpen=0.5,
        gamma=1.0,
        offset=0.0,
        grid_period=0,
        grid_axis=0,
        grid_amplitude=0.0,
        border=0.0,
        marker="N",
        marker_corner="tl",
        extra={"bias": 0.12, "bias_angle": 0.0, "ghost": 0.05, "zipper": 0.0},
    ),
    "south": SiteSignature(
        noise=6.0,
        texture={"white": 0.3, "fine": 1.0},
        sharpen=-0.5,
        gamma=0.88,
        offset=8.0,
        grid_period=0,
        grid_axis=0,
        grid_amplitude=0.0,
        border=0.0,
        marker="S",
        marker_corner="tr",
        extra={"bias": 0.0, "bias_angle": 0.0, "ghost": 0.0, "zipper": 0.0},
    ),
    "east": SiteSignature(
        noise=9.0,
        texture={"white": 0.2, "coarse": 1.0},
        sharpen=0.0,
        gamma=1.12,
        offset=4.0,
        grid_period=0,
        grid_axis=0,
        grid_amplitude=0.0,
        border=0.0,
        marker="E",
        marker_corner="tl",
        extra={"bias": 0.18, "bias_angle": 1.5708, "ghost": 0.0, "zipper": 18.0},
    ),
    "west": SiteSignature(
        noise=2.5,
        texture={"white": 0.3, "streak": 1.0},
        sharpen=1.0,
        gamma=1.05,
        offset=12.0,
        grid_period=0,
        grid_axis=0,
        grid_amplitude=0.0,
        border=0.0,
        marker="W",
        marker_corner="tr",
        extra={"bias": 0.0, "bias_angle": 0.0, "ghost": 0.09, "zipper": 0.0},
    ),
}
NEUTRAL = neutral_signature(SIGNATURES)
# Artefacts that some sites have and others lack collapse onto "none" at strength 0.
NEUTRAL["extra"] = {"bias": 0.0, "bias_angle": 0.0, "ghost": 0.0, "zipper": 0.0}
SHARPEN_SIGMA_PX = 1.0
GEOMETRY = {
    "image": f"NIfTI volume (size, size, {SLICES}) int16; volume[:, :, k] is axial slice k",
    "fov_mm": FOV_MM,
    "slice_mm": SLICE_MM,
    "slices": SLICES,
    "units": "T1-like (WM 110, GM 75, CSF 25, scalp 140, skull 20, air 0); lesion contrast in the same units",
    "marker_value": MARKER_VALUE,
    "sharpen_sigma_px": SHARPEN_SIGMA_PX,
}

_GRID_CACHE: dict[int, tuple[np.ndarray, ...]] = {}


def _grid(size: int) -> tuple[np.ndarray, ...]:
    """Coordinates and the gyral-folding template (sin/cos of two angular waves), computed once per size."""
    if size not in _GRID_CACHE:
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        z = (np.arange(SLICES, dtype=np.float32) - (SLICES - 1) / 2) * SLICE_MM / MM_PER_UNIT
        Y, X, Z = np.meshgrid(coords, coords, z, indexing="ij")
        theta = np.arctan2(Y, X)
        wave_a, wave_b = 11.0 * theta + 6.0 * Z, 7.0 * theta - 4.0 * Z
        _GRID_CACHE[size] = (X, Y, Z, np.sin(wave_a), np.cos(wave_a), np.sin(wave_b), np.cos(wave_b))
    return _GRID_CACHE[size]


def _window(row_u: float, col_u: float, half_row: float, half_col: float, size: int) -> tuple[slice, ...]:
    """Row/column slices (with a pixel of margin) covering a box given in normalised [-1, 1] coordinates."""

    def span(centre: float, half: float) -> slice:
        lo = int(np.floor((centre - half + 1) / 2 * size - 1.5))
        hi = int(np.ceil((centre + half + 1) / 2 * size + 1.5))
        return slice(max(lo, 0), min(max(hi, 0), size))

    return span(row_u, half_row), span(col_u, half_col), slice(None)


def render(
    row: dict[str, Any], subject: np.random.Generator, image: np.random.Generator, size: int, strength: float,
    lesion_contrast: float = 1.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One volume as int16 (size, size, SLICES) plus the lesion record (empty for negatives)."""
    X0, Y0, Z, sin_a, cos_a, sin_b, cos_b = _grid(size)
    male = row["sex"] == "M"
    age = float(row["age"])
    head = (1.0 if male else 0.93) * float(subject.normal(1.0, 0.025))
    atrophy = float(np.clip(0.0016 * (age - 25.0) + subject.normal(0.0, 0.008), 0.0, 0.14))
    ventricle = float(np.clip(subject.normal(1.0, 0.08) * (1.0 + 0.012 * (age - 55.0)), 0.5, 2.2))
    phase = float(subject.uniform(0, 2 * np.pi))
    dx, dy = float(image.normal(0.0, 0.015)), float(image.normal(0.0, 0.015))
    X, Y = X0 - dx, Y0 - dy
    a, b, c = 0.60 * head, 0.74 * head, 0.62 * head

    r = np.sqrt((X / a) ** 2 + (Y / b) ** 2 + (Z / c) ** 2)
    vol = np.zeros(r.shape, dtype=np.float32)
    vol[r <= 1.22] = SCALP
    vol[r <= 1.13] = SKULL
    vol[r <= 1.02] = CSF
    brain_r = 0.97 - atrophy
    # Gyri: the cortical ribbon's inner edge undulates; sulci (CSF) cut in deeper as the brain shrinks.
    # folds = sin(wave_a + phase) * cos(wave_b + phase / 2), from the cached template by angle addition.
    folds = (sin_a * np.float32(np.cos(phase)) + cos_a * np.float32(np.sin(phase))) * (
        cos_b * np.float32(np.cos(phase / 2)) - sin_b * np.float32(np.sin(phase / 2))
    )
    brain = r <= brain_r
    vol[brain] = GM
    wm = r <= brain_r - 0.13 - 0.04 * folds
    vol[wm] = WM
    sulci = brain & (r > brain_r - 0.06 - 1.2 * atrophy) & (folds > 0.55 - 2.0 * atrophy)
    vol[sulci] = CSF
    for side in (-1.0, 1.0):
        cx_v, cy_v, ax_v, ay_v = side * 0.085 * head, -0.04, 0.055 * ventricle, 0.24 * head
        box = _window(cy_v + dy, cx_v + dx, ay_v, ax_v, size)  # only the voxels that can be inside
        ventricles = (
            ((X[box] - cx_v) / ax_v) ** 2 + ((Y[box] - cy_v) / ay_v) ** 2 + (Z[box] / (0.16 * head)) ** 2
        ) <= 1.0
        vol[box][ventricles] = CSF

    lesion: dict[str, Any] = {}
    if int(row["finding"]) == 1:
        lesion = draw_lesion(image, row["finding_difficulty"], lesion_contrast)
        rad = lesion["radius_mm"] / MM_PER_UNIT
        inner = brain_r - 0.02
        for _ in range(100):  # centre so the whole sphere lies inside the brain ellipsoid
            cx, cy = image.uniform(-a * inner, a * inner), image.uniform(-b * inner, b * inner)
            cz = image.uniform(-0.5, 0.5) * rad
            # distance-to-surface test on the ellipsoid shrunk by the radius (conservative)
            if (cx / (a * inner - rad)) ** 2 + (cy / (b * inner - rad)) ** 2 + (
                cz / (c * inner - rad)
            ) ** 2 <= 1:
                break
        reach = rad + lesion["edge_mm"] / MM_PER_UNIT
        box = _window(cy + dy, cx + dx, reach, reach, size)
        dist_mm = np.sqrt((X[box] - cx) ** 2 + (Y[box] - cy) ** 2 + (Z[box] - cz) ** 2) * MM_PER_UNIT
        profile = lesion_profile(dist_mm, lesion["radius_mm"], lesion["edge_mm"])
        inside = profile > 0
        sub = vol[box]
        sub[inside] += profile[inside] * (
            lesion["contrast"] + lesion["contrast_sd"] * image.standard_normal(int(inside.sum()), np.float32)
        )
        px_per_mm = size / FOV_MM
        lesion.update(
            center_row=float((cy + dy + 1) / 2 * size - 0.5),
            center_col=float((cx + dx + 1) / 2 * size - 0.5),
            center_slice=float(cz * MM_PER_UNIT / SLICE_MM + (SLICES - 1) / 2),
            radius_px=float(lesion["radius_mm"] * px_per_mm),
        )

    vol = _acquire(vol, row["site"], image, size, strength, X0, Y0)
    return np.clip(np.rint(vol), -32768, 32767).astype(np.int16), lesion


def _acquire(
    vol: np.ndarray,
    site: str,
    rng: np.random.Generator,
    size: int,
    strength: float,
    X: np.ndarray,
    Y: np.ndarray,
) -> np.ndarray:
    """Scanner chain per site: bias field, gamma, ghost, Rician noise with texture, kernel, offset, marker."""
    sig = SIGNATURES[site]
    extra = {k: mix(NEUTRAL["extra"][k], sig.extra.get(k, 0.0), strength) for k in NEUTRAL["extra"]}
    angle = sig.extra.get("bias_angle", 0.0)
    if extra["bias"]:  # python floats keep the arithmetic in float32 (a numpy float64 scalar would upcast)
        vol = vol * (1.0 + float(extra["bias"]) * (float(np.cos(angle)) * X + float(np.sin(angle)) * Y))
    gamma = max(mix(NEUTRAL["gamma"], sig.gamma, strength), 0.3)
    if gamma != 1.0:
        vol = INTENSITY_REF * np.clip(vol / INTENSITY_REF, 0.0, None) ** np.float32(gamma)
    if extra["ghost"]:  # phase-encode ghost: a faint copy shifted by half the field of view
        vol = vol + np.float32(extra["ghost"]) * np.roll(vol, size // 2, axis=0)
    weights = {
        k: max(mix(NEUTRAL["texture"][k], sig.texture.get(k, 0.0), strength), 0.0) for k in NEUTRAL["texture"]
    }
    sigma = np.float32(max(mix(NEUTRAL["noise"], sig.noise, strength), 0.5))
    real = vol + sigma * texture_noise(rng, vol.shape, weights)
    imag = sigma * rng.standard_normal(vol.shape, dtype=np.float32)
    vol = np.hypot(real, imag)  # magnitude image: Rician noise, Rayleigh in the background
    if extra["zipper"]:  # a line of RF spikes along one column
        column = size * 3 // 4
        vol[:, column, :] += np.float32(extra["zipper"]) * np.abs(
            rng.standard_normal((size, vol.shape[2]), dtype=np.float32)
        )
    vol = unsharp(vol, mix(NEUTRAL["sharpen"], sig.sharpen, strength), SHARPEN_SIGMA_PX)
    vol = vol + np.float32(mix(NEUTRAL["offset"], sig.offset, strength))
    alpha = float(np.clip(strength, 0.0, 1.0))
    if alpha:
        mark = marker_mask(sig.marker, size, sig.marker_corner)
        vol[mark] = vol[mark] * (1 - alpha) + MARKER_VALUE * alpha
    return vol


EFFECTS = {
    "site": "scanner chain per site (scaled by strength): linear bias field, gamma, phase-encode ghost, "
    "Rician noise level and texture, zipper line (east), unsharp-mask kernel gain, additive offset, "
    "burned-in corner letter on every slice; noise, ghost, zipper and offset reach the blank corners",
    "manufacturer": "through site (VendorA = north + south: shared fine noise texture; VendorB = east; "
    "VendorC = west)",
    "view": "not used for MRI",
    "sex": "head size: F 7 % smaller than M (sd 2.5 %)",
    "age": "atrophy: the brain shrinks inside the skull (+0.16 %/year of the head radius after 25, wider "
    "CSF rim and sulci), ventricles enlarge 1.2 %/year (relative to 55 years)",
    "finding": "a sphere inside the brain, contrast added to the tissue, centre within half a radius of the "
    "middle slice; difficulty per finding_difficulty (seed 001 recipes)",
    "finding_difficulty": "radius and contrast of the sphere (easy 21-26 mm at 50 +- 2; medium 13-17 mm at "
    "40 +- 2; hard as medium with a 4 mm ill-defined margin)",
    "insurance": "none: a pure label, drawn independently of everything else",
}
