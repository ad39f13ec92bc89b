"""Chest-radiograph phantoms: lungs, mediastinum and heart, spine, ribs, clavicles, diaphragm; 16-bit PNG.

Intensities are HU-like attenuation units (air -950, lung -650, soft tissue 0–60, bone +200–300), so the
seed-001 lesion contrasts (50 and 40 units) mean the same thing in both phantom kinds. A nodule adds its
contrast on top of the lung it sits in. The PNG stores `(value + 2048) * 8` as uint16, so nothing clips.

Who does what to the pixels (the same text goes to ground_truth.json):
- sex: thorax width (M wider) and, for F, breast soft-tissue shadows over the lower lung fields;
- age: heart size grows, rib/clavicle/spine contrast (bone density) falls, the diaphragm sits lower;
- view (acquisition, scaled by strength): AP magnifies the heart and projects the scapulae over the lungs;
- site: see SIGNATURES — noise level and texture, kernel sharpness, gamma, offset, grid, collimation
  border, burned-in letter; all of it reaches the blank corners too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedx.data.synth.common import (
    SiteSignature,
    border_mask,
    draw_lesion,
    grid_pattern,
    lesion_profile,
    marker_mask,
    mix,
    neutral_signature,
    texture_noise,
    unsharp,
)

FOV_MM = 400.0  # nominal detector field of view: the image side in mm
MM_PER_UNIT = FOV_MM / 2.0  # normalised coordinates run over [-1, 1]
PNG_OFFSET, PNG_SCALE = 2048.0, 8.0
AIR, LUNG, SOFT, HEART, MEDIASTINUM, ABDOMEN = -950.0, -650.0, 0.0, 60.0, 40.0, 50.0
BONE_RIB, BONE_CLAVICLE, BONE_SPINE = 220.0, 300.0, 250.0
BORDER_VALUE, MARKER_VALUE = 1400.0, 2600.0

SIGNATURES: dict[str, SiteSignature] = {
    "north": SiteSignature(
        noise=8.0,
        texture={"white": 0.3, "fine": 1.0},
        sharpen=0.6,
        gamma=1.0,
        offset=0.0,
        grid_period=4,
        grid_axis=1,
        grid_amplitude=14.0,
        border=0.0,
        marker="N",
        marker_corner="tl",
    ),
    "south": SiteSignature(
        noise=16.0,
        texture={"white": 0.3, "fine": 1.0},
        sharpen=-0.6,
        gamma=0.85,
        offset=70.0,
        grid_period=4,
        grid_axis=1,
        grid_amplitude=14.0,
        border=0.06,
        marker="S",
        marker_corner="tr",
    ),
    "east": SiteSignature(
        noise=24.0,
        texture={"white": 0.2, "coarse": 1.0},
        sharpen=0.0,
        gamma=1.15,
        offset=-50.0,
        grid_period=6,
        grid_axis=0,
        grid_amplitude=22.0,
        border=0.0,
        marker="E",
        marker_corner="tl",
    ),
    "west": SiteSignature(
        noise=6.0,
        texture={"white": 0.3, "streak": 1.0},
        sharpen=1.2,
        gamma=1.05,
        offset=25.0,
        grid_period=0,
        grid_axis=0,
        grid_amplitude=0.0,
        border=0.03,
        marker="W",
        marker_corner="tr",
    ),
}
NEUTRAL = neutral_signature(SIGNATURES)
SHARPEN_SIGMA_PX = 1.0
GEOMETRY = {
    "image": "2-D radiograph, written as 16-bit grey PNG",
    "fov_mm": FOV_MM,
    "units": "HU-like attenuation (air -950, lung -650, soft tissue 0-60, bone +200-300)",
    "png_encoding": "uint16 = (value + 2048) * 8",
    "marker_value": MARKER_VALUE,
    "border_value": BORDER_VALUE,
    "sharpen_sigma_px": SHARPEN_SIGMA_PX,
}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(coords, coords)  # X (columns, left->right), Y (rows, top->bottom)


def _anatomy(
    subject: np.random.Generator, image: np.random.Generator, row: dict[str, Any]
) -> dict[str, float]:
    """Per-subject anatomy (stable across a subject's images) with small per-image positioning changes."""
    male = row["sex"] == "M"
    age = float(row["age"])
    return {
        "width": float((0.78 if male else 0.70) + subject.normal(0.0, 0.025)),
        "lung_height": float(subject.normal(1.0, 0.03)),
        "heart": float(subject.normal(1.0, 0.05) * (1.0 + 0.004 * (age - 55.0))),
        "density": float(np.clip(1.0 - 0.008 * (age - 55.0) + subject.normal(0.0, 0.04), 0.35, 1.4)),
        "diaphragm": float(0.40 + 0.0015 * (age - 55.0) + subject.normal(0.0, 0.02)),
        "breast": float(subject.normal(1.0, 0.08)) if not male else 0.0,
        "dx": float(image.normal(0.0, 0.015)),
        "dy": float(image.normal(0.0, 0.015)),
    }


def _ellipse(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 <= 1.0


def render(
    row: dict[str, Any], subject: np.random.Generator, image: np.random.Generator, size: int, strength: float,
    lesion_contrast: float = 1.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One radiograph as uint16 (size, size) plus the lesion record (empty for negatives)."""
    X0, Y0 = _grid(size)
    a = _anatomy(subject, image, row)
    X, Y = X0 - a["dx"], Y0 - a["dy"]
    w = a["width"]
    ax_abs = np.abs(X)

    img = np.full((size, size), AIR, dtype=np.float32)
    # Trunk: a rounded rectangle (superellipse), soft tissue thicker towards the midline.
    body = (np.abs(X) / (w + 0.10)) ** 4 + (Y / 1.35) ** 4 <= 1.0
    img[body] = SOFT + 60.0 * (1.0 - np.clip(X[body] / (w + 0.10), -1, 1) ** 2)

    dome = a["diaphragm"] + 0.10 * (ax_abs / w) ** 2 + np.where(X > 0, 0.03, 0.0)
    lung_cx, lung_ax, lung_ay, lung_cy = 0.46 * w, 0.42 * w, 0.62 * a["lung_height"], -0.10
    lungs = _ellipse(X, Y, -lung_cx, lung_cy, lung_ax, lung_ay) | _ellipse(
        X, Y, lung_cx, lung_cy, lung_ax, lung_ay
    )
    lungs &= dome > Y
    img[lungs] = LUNG + 80.0 * (Y[lungs] + 0.5)

    view_ap = row.get("view") == "AP"
    heart_scale = a["heart"] * (1.0 + 0.15 * strength if view_ap else 1.0)
    mediastinum = (np.abs(X) < 0.11) & (Y < 0.35)
    img[mediastinum] = MEDIASTINUM
    heart = _ellipse(X, Y, 0.10, 0.24, 0.30 * heart_scale, 0.21 * heart_scale) & (dome + 0.05 > Y)
    img[heart] = HEART
    abdomen = body & (dome <= Y)
    img[abdomen] = ABDOMEN
    cage = _ellipse(X, Y, 0.0, -0.08, w, 0.72)

    bone = a["density"]
    spine = np.abs(X) < 0.055
    img[spine] += BONE_SPINE * bone * 0.6
    # Posterior ribs: curved bands across each hemithorax, above the diaphragm.
    phase = (Y + 0.62 - 0.30 * (ax_abs / w) ** 2) / 0.13
    ribs = (phase > 0) & (phase < 9) & ((phase % 1.0) < 0.35) & cage & (ax_abs > 0.06) & (dome > Y)
    img[ribs] += BONE_RIB * bone
    # Clavicles: slanted bands from the sternal notch outwards (higher on AP views).
    clav_y = -0.66 - 0.18 * (ax_abs / w) - (0.06 * strength if view_ap else 0.0)
    clavicles = (np.abs(Y - clav_y) < 0.025) & (ax_abs > 0.07) & (ax_abs < 0.85 * w)
    img[clavicles] += BONE_CLAVICLE * bone
    if a["breast"] > 0:
        for side in (-1.0, 1.0):
            shadow = _ellipse(X, Y, side * 0.50 * w, 0.36, 0.30 * a["breast"], 0.20 * a["breast"])
            img[shadow & body] += 70.0
    if view_ap and strength > 0:
        for side in (-1.0, 1.0):
            scapula = _ellipse(X, Y, side * 0.78 * w, -0.30, 0.16, 0.32) & lungs
            img[scapula] += 90.0 * strength

    lesion: dict[str, Any] = {}
    if int(row["finding"]) == 1:
        lesion = draw_lesion(image, row["finding_difficulty"], lesion_contrast)
        r = lesion["radius_mm"] / MM_PER_UNIT
        side = -1.0 if image.random() < 0.5 else 1.0
        for _ in range(50):  # centre inside the lung ellipse shrunk by the radius, and above the diaphragm
            t, u = image.uniform(0, 2 * np.pi), np.sqrt(image.random())
            cx = side * lung_cx + u * max(lung_ax - r, 0.01) * np.cos(t)
            cy = lung_cy + u * max(lung_ay - r, 0.01) * np.sin(t)
            if cy + r < a["diaphragm"]:
                break
        dist_mm = np.hypot(X - cx, Y - cy) * MM_PER_UNIT
        profile = lesion_profile(dist_mm, lesion["radius_mm"], lesion["edge_mm"])
        img += profile * (
            lesion["contrast"] + lesion["contrast_sd"] * image.standard_normal(img.shape, np.float32)
        )
        px_per_mm = size / FOV_MM
        lesion.update(
            center_row=float((cy + a["dy"] + 1) / 2 * size - 0.5),
            center_col=float((cx + a["dx"] + 1) / 2 * size - 0.5),
            radius_px=float(lesion["radius_mm"] * px_per_mm),
        )

    img = _acquire(img, row["site"], image, size, strength)
    return np.clip((img + PNG_OFFSET) * PNG_SCALE, 0, 65535).astype(np.uint16), lesion


def _acquire(img: np.ndarray, site: str, rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """The site's acquisition chain, every parameter interpolated from neutral by `strength`."""
    sig = SIGNATURES[site]
    alpha = float(np.clip(strength, 0.0, 1.0))
    gamma = max(mix(NEUTRAL["gamma"], sig.gamma, strength), 0.3)
    if gamma != 1.0:
        norm = np.clip((img + 1000.0) / 2000.0, 0.0, None)
        img = (-1000.0 + 2000.0 * norm ** np.float32(gamma)).astype(np.float32)
    if sig.grid_period and strength:
        img = img + np.float32(sig.grid_amplitude * strength) * grid_pattern(
            size, sig.grid_period, sig.grid_axis
        )
    if sig.border and alpha:
        frame = border_mask(size, sig.border)
        img[frame] = img[frame] * (1 - alpha) + BORDER_VALUE * alpha
    weights = {
        k: max(mix(NEUTRAL["texture"][k], sig.texture.get(k, 0.0), strength), 0.0) for k in NEUTRAL["texture"]
    }
    sigma = max(mix(NEUTRAL["noise"], sig.noise, strength), 0.5)  # extrapolation (strength > 1) stays valid
    img = img + np.float32(sigma) * texture_noise(rng, img.shape, weights)
    img = unsharp(img, mix(NEUTRAL["sharpen"], sig.sharpen, strength), SHARPEN_SIGMA_PX)
    img = img + np.float32(mix(NEUTRAL["offset"], sig.offset, strength))
    if alpha:
        mark = marker_mask(sig.marker, size, sig.marker_corner)
        img[mark] = img[mark] * (1 - alpha) + MARKER_VALUE * alpha
    return img


EFFECTS = {
    "site": "acquisition chain per site (scaled by strength): noise level and texture (white/fine/coarse/"
    "streak), unsharp-mask kernel gain, gamma, additive offset, anti-scatter grid lines, collimation "
    "border, burned-in corner letter; noise, offset, grid and border reach the blank corners",
    "manufacturer": "through site (VendorA = north + south: shared grid and fine noise texture; VendorB = "
    "east; VendorC = west)",
    "view": "AP (scaled by strength): heart magnified 15 %, scapulae projected over the lung fields, "
    "clavicles higher; PA: none",
    "sex": "thorax half-width 0.78 (M) vs 0.70 (F) of the half-FOV (sd 0.025); F: breast soft-tissue "
    "shadows (+70) over the lower lung fields",
    "age": "heart size +0.4 %/year, bone density (rib, clavicle, spine contrast) -0.8 %/year, "
    "diaphragm lower by 0.0015 half-FOV/year (all relative to 55 years)",
    "finding": "a nodule (disc) inside a lung field, contrast added to the lung; difficulty per "
    "finding_difficulty (seed 001 recipes)",
    "finding_difficulty": "radius and contrast of the nodule (easy 21-26 mm at 50 +- 2; medium 13-17 mm at "
    "40 +- 2; hard as medium with a 4 mm ill-defined margin)",
    "insurance": "none: a pure label, drawn independently of everything else",
}
