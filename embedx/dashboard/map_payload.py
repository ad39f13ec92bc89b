"""What the explorer's map sends the browser: packed binary columns, not a chart library's figure.

Plotly cost a browser ~2.3 s before it drew a single point (bench/dashboard_floor.py), and a 30k-point figure
travelled as MB of JSON. The map is now embedx's own canvas (`map_canvas.js`); this module builds its data:
the drawn points' coordinates (float32), row ids (int32), colour codes (uint16) and flags (uint8, bit 0 =
selected), each as base64 of little-endian bytes — 15 bytes a point — plus the legend or colour bar, the
density image of every row, and the highlighted rows. No Streamlit here, so the payload is testable alone.

Every drawn point carries its global store row id; a click returns it as Plotly did (`customdata`), and a
box or lasso returns its outline in data coordinates, which `selection_events.rows_in_regions` maps to every
row inside.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pandas as pd

from embedx.dashboard.density import DensityImage, padded_extent
from embedx.dashboard.figures import MISSING_COLOUR, PALETTE
from embedx.dashboard.shaping import MISSING_LABEL, category_labels, fair_sample

# Above this many drawn points, hover shows the row id and colour value only: the attribute text of 30k points
# is 3 MB, most of what the browser would wait for.
HOVER_TEXT_MAX = 10_000
HIGHLIGHT_MAX = 20_000
MAX_CATEGORIES = 200  # colours of a categorical attribute; the rarer values are drawn as one grey group
OTHER_LABEL = "(other values)"  # rings drawn for a highlighted cluster; the density image shows the rest
SCALE_STEPS = 256  # colours of a continuous attribute's scale; code SCALE_STEPS is "missing"
SELECTED = 1  # flag bit of a point in the kept selection


def packed(values: np.ndarray, dtype: str) -> str:
    """Little-endian bytes of `values` as `dtype`, base64: what the canvas reads into a typed array."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def unpacked(text: str, dtype: str) -> np.ndarray:
    """The inverse of `packed` (the tests read payloads back with it)."""
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def marker_size(n: int) -> float:
    """Pixels per point: big for a few points, small where tens of thousands would hide the density."""
    return 7.0 if n < 2_000 else 5.0 if n < 20_000 else 3.0 if n < 100_000 else 2.0


def viridis(steps: int = SCALE_STEPS) -> list[str]:
    from matplotlib import colormaps

    rgba = colormaps["viridis"](np.linspace(0.0, 1.0, steps))
    return ["#{:02x}{:02x}{:02x}".format(*(round(float(c) * 255) for c in colour[:3])) for colour in rgba]


def _colours(colour: pd.Series | None, categorical: bool, rows: np.ndarray,
             population: np.ndarray | None = None) -> dict[str, Any]:
    """Codes per drawn point into `colours`, with the legend (categories, counted over `population`, every
    row on the map, when `rows` is a sample of it) or the scale (continuous)."""
    if colour is None:
        codes = np.zeros(len(rows), dtype=np.uint16)
        return {"codes": codes, "colours": [PALETTE[0]], "legend": [], "scale": None}
    if categorical:
        every = category_labels(colour).to_numpy()
        counts = pd.Series(every[population if population is not None else rows]).value_counts()
        labels = every[rows]
        values = sorted(pd.unique(labels), key=lambda v: (v == MISSING_LABEL, v))
        if len(values) > MAX_CATEGORIES:  # the most frequent keep their colour; the rest share one
            kept = set(counts.index[: MAX_CATEGORIES - 1])
            labels = np.where(pd.Series(labels).isin(kept | {MISSING_LABEL}).to_numpy(), labels, OTHER_LABEL)
            counts = counts.groupby(lambda v: v if v in kept or v == MISSING_LABEL else OTHER_LABEL).sum()
            values = sorted(pd.unique(labels), key=lambda v: (v in (MISSING_LABEL, OTHER_LABEL), v))
        codes = np.zeros(len(rows), dtype=np.uint16)
        legend, colours = [], []
        for index, value in enumerate(values):
            codes[labels == value] = index
            grey = value in (MISSING_LABEL, OTHER_LABEL)
            tint = MISSING_COLOUR if grey else PALETTE[index % len(PALETTE)]
            colours.append(tint)
            legend.append({"name": str(value), "colour": tint, "count": int(counts.get(value, 0))})
        return {"codes": codes, "colours": colours, "legend": legend, "scale": None}
    values = colour.to_numpy(dtype=float)[rows]
    present = ~np.isnan(values)
    if not present.any():  # nothing to scale: every drawn point is missing
        legend = [{"name": MISSING_LABEL, "colour": MISSING_COLOUR, "count": len(rows)}]
        return {"codes": np.zeros(len(rows), dtype=np.uint16), "colours": [MISSING_COLOUR], "legend": legend,
                "scale": None}  # fmt: skip
    low, high = float(np.min(values[present])), float(np.max(values[present]))
    span = high - low if high > low else 1.0
    codes = np.full(len(rows), SCALE_STEPS, dtype=np.uint16)
    codes[present] = np.clip(np.rint((values[present] - low) / span * (SCALE_STEPS - 1)), 0, SCALE_STEPS - 1)
    missing = int((~present).sum())
    legend = [{"name": MISSING_LABEL, "colour": MISSING_COLOUR, "count": missing}] if missing else []
    scale = {"name": str(colour.name), "low": low, "high": high}
    return {"codes": codes, "colours": [*viridis(), MISSING_COLOUR], "legend": legend, "scale": scale}


def map_payload(
    xy: np.ndarray,
    rows: np.ndarray,
    colour: pd.Series | None,
    categorical: bool,
    hover: np.ndarray | None,
    selected: np.ndarray | None = None,
    highlight: np.ndarray | None = None,
    title: str = "",
    height: int = 560,
    density: DensityImage | None = None,
    view: str = "",
    population: np.ndarray | None = None,
) -> dict[str, Any]:
    """The canvas map of `rows` (global ids) at `xy[rows]`, coloured by `colour` (aligned with store rows).

    `selected` (row ids) is drawn as the kept selection, the rest faded; `highlight` (row ids, e.g. a cluster)
    is ringed, up to `HIGHLIGHT_MAX` of them. `hover` (one line per store row) is what a point shows on
    hover besides its row id. `density` (the image of every row, when `rows` is a sample) is drawn beneath,
    and the view spans it. `view` names what the axes show (by default their extent): the browser keeps its
    zoom while it is unchanged, e.g. across a recolour. `population` (every row on the map, when `rows` is a
    sample) is what the legend counts.
    """
    rows = np.asarray(rows, dtype=np.int64)
    selected = np.asarray(selected if selected is not None else [], dtype=np.int64)
    flags = np.where(np.isin(rows, selected), SELECTED, 0).astype(np.uint8)
    ringed, rings = np.empty(0, dtype=np.int64), None
    if highlight is not None and len(highlight):
        ringed = fair_sample(np.asarray(highlight, dtype=np.int64), HIGHLIGHT_MAX)
        rings = {"n": len(ringed), "xy": packed(xy[ringed], "<f4"), "total": len(highlight)}
    spanned = xy[np.concatenate([rows, ringed])]
    spanned = spanned[np.isfinite(spanned).all(axis=1)]
    extent = padded_extent(spanned) if len(spanned) else (0.0, 1.0, 0.0, 1.0)
    if density is not None:
        extent = density.extent
    colours = _colours(colour, categorical, rows, population)
    return {
        "n": len(rows),
        "xy": packed(xy[rows], "<f4"),
        "ids": packed(rows, "<i4"),
        "codes": packed(colours["codes"], "<u2"),
        "flags": packed(flags, "u1"),
        "any_selected": len(selected) > 0,  # the sample fades even when no selected row is drawn
        "colours": colours["colours"],
        "legend": colours["legend"],
        "scale": colours["scale"],
        "highlight": rings,
        "hover": None if hover is None else [str(h) for h in np.asarray(hover)[rows]],
        "size": marker_size(len(rows)),
        "extent": [float(v) for v in extent],
        "density": None if density is None else {"url": density.url, "extent": list(density.extent)},
        "title": title,
        "height": int(height),
        "view": view or ",".join(f"{v:.9g}" for v in extent),
    }
