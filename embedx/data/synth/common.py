"""What the two phantom kinds share: who is in the cohort, what each site does to the pixels, the lesion.

The cohort is drawn first (subjects, their sites, demographics, findings) from one seeded generator, and each
image is then rendered from its own `SeedSequence([seed, row])` stream. That split is what makes the output
byte-identical for a seed whether the images are rendered in one process or several.

Acquisition effects are written as *parameters per site*; `strength` interpolates every one of them between a
shared neutral value (strength 0: all sites identical, so site is a pure label) and the site's own value
(strength 1). Anatomy (sex, age) and the finding never depend on strength: they stay in the pixels at 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from embedx.errors import EmbedxError

SITES = ("north", "south", "east", "west")
MANUFACTURER_OF_SITE = {"north": "VendorA", "south": "VendorA", "east": "VendorB", "west": "VendorC"}
INSURANCE = ("public", "private", "self-pay")
DEFAULT_PREVALENCE = 0.30

# Lesion recipes after seed 001 (Easy/Medium/Hard_Spheres): radius in mm, contrast in HU-like units with a
# per-pixel standard deviation of 2. The seed has two recipes (large/bright and small/faint); "hard" here is
# the small/faint recipe with an ill-defined margin (linear edge ramp), so that the three labels differ.
LESION_RECIPES: dict[str, dict[str, Any]] = {
    "easy": {"radius_mm": (21.0, 26.0), "contrast": 50.0, "contrast_sd": 2.0, "edge_mm": 0.0},
    "medium": {"radius_mm": (13.0, 17.0), "contrast": 40.0, "contrast_sd": 2.0, "edge_mm": 0.0},
    "hard": {"radius_mm": (13.0, 17.0), "contrast": 40.0, "contrast_sd": 2.0, "edge_mm": 4.0},
}
# Share of positives per difficulty (brief: hard 20 %, medium 35 %, the rest easy).
DIFFICULTY_SHARES = {"easy": 0.45, "medium": 0.35, "hard": 0.20}

# Noise textures: each is white Gaussian noise filtered with this (row, col) Gaussian sigma in pixels and
# rescaled to unit variance; a site's noise is a weighted mix. Streaks mimic detector line noise.
NOISE_TEXTURES = {"white": (0.0, 0.0), "fine": (0.7, 0.7), "coarse": (1.8, 1.8), "streak": (0.0, 2.5)}


@dataclass(frozen=True)
class SiteSignature:
    """One site's acquisition signature (values at strength 1, in HU-like units per output pixel)."""

    noise: float  # noise standard deviation
    texture: dict[str, float]  # weights over NOISE_TEXTURES
    sharpen: float  # unsharp-mask gain: < 0 smooths (soft kernel), > 0 sharpens
    gamma: float  # applied to normalised intensity
    offset: float  # added everywhere, background included
    grid_period: int  # anti-scatter grid line period in pixels (0: no grid)
    grid_axis: int  # 0: horizontal lines, 1: vertical lines
    grid_amplitude: float
    border: float  # collimation border width as a fraction of the side (0: none)
    marker: str  # burned-in letter
    marker_corner: str  # "tl" | "tr" | "bl" | "br"
    extra: dict[str, float] = field(default_factory=dict)  # kind-specific (bias field, ghost, ...)


@dataclass
class Cohort:
    """The drawn cohort: one row per image, before any pixel is rendered."""

    table: pd.DataFrame  # subject_id, site, manufacturer, sex, age, insurance, finding, ...
    image_seeds: list[np.random.SeedSequence]  # per image: acquisition noise, lesion placement
    subject_seeds: list[np.random.SeedSequence]  # per image, shared by a subject's images: its anatomy


def mix(neutral: float, own: float, strength: float) -> float:
    """Interpolate one acquisition parameter: strength 0 -> neutral, 1 -> the site's own value."""
    return float(neutral + strength * (own - neutral))


def neutral_signature(signatures: dict[str, SiteSignature]) -> dict[str, Any]:
    """Shared neutral values that strength 0 collapses every site onto (means over sites)."""
    sigs = list(signatures.values())
    textures = {k: float(np.mean([s.texture.get(k, 0.0) for s in sigs])) for k in NOISE_TEXTURES}
    extra_keys = sorted({k for s in sigs for k in s.extra})
    return {
        "noise": float(np.mean([s.noise for s in sigs])),
        "texture": textures,
        "sharpen": 0.0,
        "gamma": 1.0,
        "offset": 0.0,
        "extra": {k: float(np.mean([s.extra.get(k, 0.0) for s in sigs])) for k in extra_keys},
    }


def resolve_prevalence(prevalence: dict[str, float] | float | None) -> dict[str, float]:
    """Per-site finding prevalence; sites not named keep the default. Unknown sites are an error."""
    if prevalence is None:
        return dict.fromkeys(SITES, DEFAULT_PREVALENCE)
    if isinstance(prevalence, (int, float)):
        prevalence = dict.fromkeys(SITES, float(prevalence))
    unknown = sorted(set(prevalence) - set(SITES))
    if unknown:
        raise EmbedxError(f"prevalence: unknown site(s) {', '.join(unknown)} (sites are {', '.join(SITES)})")
    out = dict.fromkeys(SITES, DEFAULT_PREVALENCE)
    for site, p in prevalence.items():
        if not 0.0 <= float(p) <= 1.0:
            raise EmbedxError(f"prevalence for site {site!r} must lie in [0, 1], got {p}")
        out[site] = float(p)
    return out


def parse_prevalence(text: str | None) -> dict[str, float] | None:
    """`'north=0.5,south=0.05'` -> dict, naming the bad item on error (CLI input)."""
    if not text:
        return None
    out: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError as err:
            raise EmbedxError(
                f"--prevalence: cannot read {item!r}; expected site=probability, e.g. north=0.5"
            ) from err
    return out


def draw_cohort(n: int, seed: int, prevalence: dict[str, float], with_view: bool) -> Cohort:
    """Subjects with 1–3 images each; subject-level site/sex/age/insurance, image-level finding and view."""
    if n < 1:
        raise EmbedxError(f"--n must be at least 1, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0401]))
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(int(rng.integers(1, 4)))
    counts[-1] -= sum(counts) - n
    n_subjects = len(counts)
    # Pseudonymous ids: a random permutation of numbers, carrying no order or meaning.
    numbers = rng.permutation(np.arange(10_000, 10_000 + 10 * n_subjects))[:n_subjects]
    subject_site = rng.choice(SITES, size=n_subjects)
    subject_sex = rng.choice(np.array(["F", "M"]), size=n_subjects)
    subject_age = np.clip(rng.normal(55.0, 15.0, size=n_subjects), 18.0, 90.0)
    subject_insurance = rng.choice(INSURANCE, size=n_subjects)
    rows: list[dict[str, Any]] = []
    subject_seeds: list[np.random.SeedSequence] = []
    for s, count in enumerate(counts):
        for k in range(count):
            site = str(subject_site[s])
            finding = int(rng.random() < prevalence[site])
            difficulty = ""
            if finding:
                u = rng.random()
                difficulty = (
                    "hard"
                    if u < DIFFICULTY_SHARES["hard"]
                    else ("medium" if u < DIFFICULTY_SHARES["hard"] + DIFFICULTY_SHARES["medium"] else "easy")
                )
            row: dict[str, Any] = {
                "subject_id": f"sub-{numbers[s]:06d}",
                "site": site,
                "manufacturer": MANUFACTURER_OF_SITE[site],
                "sex": str(subject_sex[s]),
                # follow-up images of a subject are taken up to two years later
                "age": round(float(subject_age[s]) + (k * float(rng.uniform(0.2, 1.0))), 1),
                "insurance": str(subject_insurance[s]),
                "finding": finding,
                "finding_difficulty": difficulty,
            }
            if with_view:
                row["view"] = "AP" if rng.random() < 0.4 else "PA"
            rows.append(row)
            subject_seeds.append(np.random.SeedSequence([seed, 0x5B1EC7, s]))
    table = pd.DataFrame(rows)
    order = (
        ["subject_id", "site", "manufacturer"]
        + (["view"] if with_view else [])
        + ["sex", "age", "finding", "finding_difficulty", "insurance"]
    )
    table = table[order]
    seeds = [np.random.SeedSequence([seed, 0x1A9E, i]) for i in range(n)]
    return Cohort(table=table, image_seeds=seeds, subject_seeds=subject_seeds)


# --- pixel helpers -------------------------------------------------------------------------------------


def texture_noise(rng: np.random.Generator, shape: tuple[int, ...], weights: dict[str, float]) -> np.ndarray:
    """Unit-variance noise whose spatial texture is the weighted mix of NOISE_TEXTURES.

    One white field is drawn whatever the weights (so the random stream does not depend on the site) and
    filtered in the Fourier domain with the mixed transfer function (circular, i.e. scipy's mode="wrap"),
    rescaled so the output variance is exactly 1. 3-D arrays (rows, cols, slices) are filtered in-plane.
    """
    from scipy import fft

    plane = tuple(shape[:2])
    transfer = _transfer(plane, tuple(round(float(weights.get(k, 0.0)), 12) for k in NOISE_TEXTURES))
    if len(shape) == 2:
        white = rng.standard_normal(shape, dtype=np.float32)
        return fft.irfft2(fft.rfft2(white) * transfer, s=plane).astype(np.float32)
    white = rng.standard_normal((shape[2], *plane), dtype=np.float32)  # slices first: contiguous planes
    noise = fft.irfft2(fft.rfft2(white) * transfer, s=plane).astype(np.float32)
    return np.moveaxis(noise, 0, -1)


_TRANSFER_CACHE: dict[tuple[tuple[int, ...], tuple[float, ...]], np.ndarray] = {}


def _transfer(plane: tuple[int, ...], weights: tuple[float, ...]) -> np.ndarray:
    """rfft2-domain transfer function of the texture mix (a Gaussian low-pass per texture), unit variance."""
    key = (plane, weights)
    if key not in _TRANSFER_CACHE:
        fr = np.fft.fftfreq(plane[0])[:, None]
        fc = np.fft.rfftfreq(plane[1])[None, :]
        total = np.zeros((plane[0], plane[1] // 2 + 1))
        for w, (sr, sc) in zip(weights, NOISE_TEXTURES.values(), strict=True):
            if w:
                total = total + w * np.exp(-2.0 * np.pi**2 * ((sr * fr) ** 2 + (sc * fc) ** 2))
        # Output variance of circularly filtered unit white noise = mean |H|^2 over the full spectrum.
        full = np.concatenate([total, total[:, 1 : (plane[1] + 1) // 2][:, ::-1]], axis=1)
        variance = float(np.mean(full**2))
        _TRANSFER_CACHE[key] = (total / np.sqrt(variance if variance > 0 else 1.0)).astype(np.float32)
    return _TRANSFER_CACHE[key]


def unsharp(image: np.ndarray, gain: float, sigma: float) -> np.ndarray:
    """Reconstruction-kernel look: gain > 0 sharpens (and roughens noise), < 0 smooths; 2-D per slice."""
    if gain == 0.0:
        return image
    full_sigma = sigma if image.ndim == 2 else (sigma, sigma, 0.0)
    blurred = ndimage.gaussian_filter(image, full_sigma, mode="nearest")
    return image + np.float32(gain) * (image - blurred)


# 5x7 bitmaps of the burned-in marker letters.
_GLYPHS = {
    "N": ["10001", "11001", "10101", "10011", "10001", "10001", "10001"],
    "S": ["01111", "10000", "10000", "01110", "00001", "00001", "11110"],
    "E": ["11111", "10000", "10000", "11110", "10000", "10000", "11111"],
    "W": ["10001", "10001", "10001", "10101", "10101", "11011", "10001"],
}


def marker_mask(letter: str, size: int, corner: str) -> np.ndarray:
    """Boolean (size, size) mask of the letter, scaled with the image and inset from the given corner."""
    glyph = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]], dtype=bool)
    scale = max(1, size // 48)
    glyph = np.kron(glyph, np.ones((scale, scale), dtype=bool))
    inset = max(1, size // 32)
    mask = np.zeros((size, size), dtype=bool)
    h, w = glyph.shape
    r0 = inset if corner[0] == "t" else size - inset - h
    c0 = inset if corner[1] == "l" else size - inset - w
    mask[r0 : r0 + h, c0 : c0 + w] = glyph
    return mask


def border_mask(size: int, fraction: float) -> np.ndarray:
    """Collimation border: a frame of the given width (fraction of the side) around the image."""
    mask = np.zeros((size, size), dtype=bool)
    width = round(fraction * size)
    if width > 0:
        mask[:width, :] = mask[-width:, :] = True
        mask[:, :width] = mask[:, -width:] = True
    return mask


def grid_pattern(size: int, period: int, axis: int) -> np.ndarray:
    """Anti-scatter grid: thin lines every `period` pixels (1 on lines, 0 elsewhere)."""
    lines = (np.arange(size) % period == 0).astype(np.float32) if period > 0 else np.zeros(size, np.float32)
    return np.broadcast_to(lines[:, None] if axis == 0 else lines[None, :], (size, size)).astype(np.float32)


def lesion_profile(dist_mm: np.ndarray, radius_mm: float, edge_mm: float) -> np.ndarray:
    """1 inside the lesion, 0 outside; a linear `edge_mm` ramp across an ill-defined margin."""
    if edge_mm <= 0:
        return (dist_mm <= radius_mm).astype(np.float32)
    return np.clip((radius_mm + edge_mm / 2 - dist_mm) / edge_mm, 0.0, 1.0).astype(np.float32)


def draw_lesion(rng: np.random.Generator, difficulty: str, contrast_scale: float = 1.0) -> dict[str, float]:
    """One lesion of the seed-001 recipe; `contrast_scale` multiplies its contrast (1: the seed's)."""
    recipe = LESION_RECIPES[difficulty]
    lo, hi = recipe["radius_mm"]
    return {
        "radius_mm": float(rng.uniform(lo, hi)),
        "contrast": float(recipe["contrast"]) * float(contrast_scale),
        "contrast_sd": float(recipe["contrast_sd"]),
        "edge_mm": float(recipe["edge_mm"]),
    }


def file_digest(path: Path) -> str:
    """sha256 of a file (used by the determinism test and recorded nowhere else)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
