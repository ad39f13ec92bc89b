"""A map's selection events read back as store rows: what the browser sent, in Plotly's selection shape
(`{"selection": {"points": [{"customdata": row}], "box": [...], "lasso": [...], "serial": ...}}`), turned into
global row ids and folded into the kept selection. No Streamlit here; `widgets.absorb_selection` uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.path import Path as Outline  # imported with the page, not on the first lasso (~0.15 s)


def selected_row_ids(event: Any) -> np.ndarray:
    """Global row ids of a Streamlit plotly selection event, read from each point's `customdata`.

    Works for box, lasso and click selections alike; per-trace `point_index` is deliberately ignored.
    """
    if event is None:
        return np.empty(0, dtype=np.int64)
    selection = (
        event.get("selection", event) if isinstance(event, Mapping) else getattr(event, "selection", None)
    )
    if selection is None:
        return np.empty(0, dtype=np.int64)
    points = (
        selection.get("points", []) if isinstance(selection, Mapping) else getattr(selection, "points", [])
    )
    ids: list[int] = []
    for point in points or []:
        custom = point.get("customdata") if isinstance(point, Mapping) else None
        if custom is None:
            continue
        if isinstance(custom, (list, tuple)):
            if not custom:
                continue
            custom = custom[0]
        try:
            ids.append(int(custom))
        except (TypeError, ValueError):
            continue
    return np.unique(np.asarray(ids, dtype=np.int64))


def rows_in_regions(event: Any, xy: np.ndarray, on_map: np.ndarray) -> np.ndarray:
    """Rows of the `on_map` mask (over the store's rows) whose map position lies inside the event's box(es)
    or lasso outline(s), as sorted row ids.

    The browser draws a sample of a large map; this maps the drawn outline back to every row it covers. Only
    the rows inside an outline's bounding box are tested against the polygon: a lasso over a tenth of a
    million rows took 0.15-0.3 s when every row was.
    """
    selection = (
        event.get("selection", event) if isinstance(event, Mapping) else getattr(event, "selection", None)
    )
    if not isinstance(selection, Mapping) or not on_map.any():
        return np.empty(0, dtype=np.int64)
    boxes, lassos = selection.get("box") or [], selection.get("lasso") or []
    if not boxes and not lassos:  # a click: its point is in `points`
        return np.empty(0, dtype=np.int64)
    x, y = xy[:, 0], xy[:, 1]
    found: list[np.ndarray] = []
    for box in boxes:
        (x0, x1), (y0, y1) = sorted(box["x"][:2]), sorted(box["y"][:2])
        found.append(np.flatnonzero(on_map & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)))
    for lasso in lassos:
        outline = np.column_stack([np.asarray(lasso["x"], dtype=float), np.asarray(lasso["y"], dtype=float)])
        if len(outline) < 3:
            continue
        (x0, y0), (x1, y1) = outline.min(axis=0), outline.max(axis=0)
        near = np.flatnonzero(on_map & (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))
        found.append(near[Outline(outline).contains_points(xy[near])])
    if not found:
        return np.empty(0, dtype=np.int64)
    return found[0].astype(np.int64) if len(found) == 1 else np.unique(np.concatenate(found)).astype(np.int64)


def event_serial(event: Any) -> str | None:
    """The number embedx's map gives each selection it sends (None for an event without one)."""
    selection = event.get("selection", event) if isinstance(event, Mapping) else None
    serial = selection.get("serial") if isinstance(selection, Mapping) else None
    return None if serial is None else str(serial)


def reconcile_selection(
    selection: np.ndarray, event_rows: np.ndarray, last_seen: Any, serial: str | None = None
) -> tuple[np.ndarray, Any]:
    """The kept selection after reading one map's event: `(selection, new last_seen for that map)`.

    A map keeps reporting its last selection on every rerun, so only an event that differs from what this
    map reported before is a new selection. With a `serial` the map numbers its events, and a new number is
    new even when it selects the same rows again (a click on the same point after "Clear selection");
    without one, new rows are. An empty event never clears (recolouring must not lose the user's selection;
    clearing is an explicit button).
    """
    event_rows = np.asarray(event_rows, dtype=np.int64)
    if serial is not None:
        is_new = len(event_rows) > 0 and not (isinstance(last_seen, str) and last_seen == serial)
        return (event_rows if is_new else selection), serial
    is_new = len(event_rows) > 0 and (
        last_seen is None or isinstance(last_seen, str) or not np.array_equal(event_rows, last_seen)
    )
    return (event_rows if is_new else selection), event_rows
