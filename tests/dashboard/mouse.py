"""The real mouse on the explorer's map, shared by the browser test and `bench/dashboard_browser.py`."""

from __future__ import annotations

import itertools


def drag_lasso(page, area: dict, corners: list[tuple[float, float]], steps: int = 10,
               release: bool = True) -> None:
    """Drag the mouse through `corners` (fractions of the map's `area`), `steps` moves per side; with
    `release=False` the button stays down, so that a caller can time from the release."""
    x0, y0, w, h = area["x"], area["y"], area["width"], area["height"]
    page.mouse.move(x0 + w * corners[0][0], y0 + h * corners[0][1])
    page.mouse.down()
    for (ax, ay), (bx, by) in itertools.pairwise(corners):
        for step in range(1, steps + 1):
            t = step / steps
            page.mouse.move(x0 + w * (ax + (bx - ax) * t), y0 + h * (ay + (by - ay) * t))
    if release:
        page.mouse.up()
