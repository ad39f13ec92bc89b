"""Every point of a large map, as one small image: a 2-D histogram drawn under the sampled scatter.

A browser draws a few tens of thousands of WebGL points at once; 220k or a million points travel as tens of
MB of figure JSON and take the page many seconds to draw. Above the scatter cap the map therefore draws a
density-preserving sample of points and, beneath it, this image of all of them: a rare outlier region that the
sample missed still shows, at the cost of a PNG of a few tens of kB.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

BINS = 400  # cells per side: finer than the points are drawn at the default map size
INK = (40, 40, 40)
MIN_ALPHA = 50  # a cell with one point must still be seen
MAX_ALPHA = 170  # the densest cell stays translucent, so coloured points on top read clearly


@dataclass(frozen=True)
class DensityImage:
    """A PNG data URL and the data-coordinate rectangle it covers (x0, x1, y0, y1)."""

    url: str
    extent: tuple[float, float, float, float]
    points: int


def padded_extent(xy: np.ndarray, pad: float = 0.02) -> tuple[float, float, float, float]:
    """The bounding box of the points, widened by `pad` of each side (a box of zero width gets a unit)."""
    low, high = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
    span = np.where(high > low, high - low, 1.0)
    low, high = low - pad * span, high + pad * span
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


def density_counts(xy: np.ndarray, extent: tuple[float, float, float, float], bins: int = BINS) -> np.ndarray:
    """Points per cell, row 0 at the top (largest y), as an image is laid out."""
    x0, x1, y0, y1 = extent
    counts, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=bins, range=[[y0, y1], [x0, x1]])
    return counts[::-1]


def density_image(xy: np.ndarray, bins: int = BINS) -> DensityImage:
    """The density of all `xy` (rows with finite coordinates) as a grey RGBA image, alpha on a log scale."""
    xy = np.asarray(xy, dtype=np.float64)
    xy = xy[np.isfinite(xy).all(axis=1)]
    extent = padded_extent(xy)
    counts = density_counts(xy, extent, bins)
    scale = np.log1p(counts) / max(np.log1p(counts.max()), 1e-12)
    alpha = np.where(counts > 0, MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * scale, 0).astype(np.uint8)
    rgba = np.empty((*counts.shape, 4), dtype=np.uint8)
    rgba[..., :3] = INK
    rgba[..., 3] = alpha
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", optimize=False, compress_level=6)
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return DensityImage(url=url, extent=extent, points=len(xy))
