"""The map above the scatter cap: a sample of points drawn over an image in which every point is counted."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import embedx.dashboard
from embedx.dashboard import shaping
from embedx.dashboard.data import STORE_ENV
from embedx.dashboard.density import BINS, density_counts, density_image, padded_extent
from embedx.dashboard.map_payload import map_payload, unpacked


def _alpha(url: str) -> np.ndarray:
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)))[..., 3]


def test_every_point_is_counted_in_its_cell_with_the_top_of_the_map_at_the_top() -> None:
    rng = np.random.default_rng(0)
    xy = np.vstack([rng.normal(0, 1, (5_000, 2)), [[40.0, 40.0]]])  # one far outlier, top right
    extent = padded_extent(xy)
    counts = density_counts(xy, extent)
    assert counts.sum() == len(xy) and counts.shape == (BINS, BINS)
    top_right = counts[: BINS // 10, -BINS // 10 :]
    assert top_right.sum() == 1  # the outlier, and only it, is in the top-right corner
    image = density_image(np.vstack([xy, [[np.nan, 1.0]], [[np.inf, 0.0]]]))  # rows off the map: left out
    assert image.points == len(xy) and image.extent == pytest.approx(extent)
    alpha = _alpha(image.url)
    assert alpha.shape == (BINS, BINS)
    np.testing.assert_array_equal(alpha > 0, counts > 0)  # a cell shows exactly when a point lies in it
    assert alpha[counts == 1].min() > 0 and alpha.max() > alpha[counts == 1].min()


def test_a_sampled_map_draws_the_image_beneath_and_spans_every_point() -> None:
    rng = np.random.default_rng(1)
    xy = rng.normal(0, 1, (2_000, 2)).astype(np.float32)
    xy[7] = [30.0, -30.0]
    drawn = shaping.density_sample(np.arange(2_000), None, 200)
    image = density_image(xy)
    payload = map_payload(xy, drawn, None, False, None, density=image)
    assert payload["density"] == {"url": image.url, "extent": list(image.extent)}
    x0, x1, y0, y1 = image.extent
    assert payload["extent"] == [x0, x1, y0, y1]  # the view spans the image, not only the drawn sample
    assert x0 < 30.0 < x1 and y0 < -30.0 < y1  # the outlier lies inside the view even when not drawn
    assert 7 not in unpacked(payload["ids"], "<i4")
    assert map_payload(xy, drawn, None, False, None)["density"] is None


def test_the_map_page_above_the_cap_says_what_it_draws(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedx.dashboard import data, widgets

    monkeypatch.setattr(widgets, "SCATTER_MAX", 120)
    drawings = []
    real = data.density_image
    monkeypatch.setattr(data, "density_image", lambda xy: drawings.append(len(xy)) or real(xy))
    monkeypatch.setenv(STORE_ENV, str(store))
    page = Path(embedx.dashboard.__file__).resolve().parent / "views" / "map.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    at.run()  # a rerun (as a lasso makes) draws the same sample and image without making them again
    assert drawings == [300]
    captions = " ".join(c.value for c in at.caption)
    assert "of 300 points over a grey density image of all of them" in captions
    (drawn_map,) = at.get("bidi_component")
    payload = json.loads(drawn_map.proto.json)
    assert f"sample of {payload['n']} of 300 points" in captions and payload["n"] < 300
    assert payload["density"]["url"].startswith("data:image/png;base64,")
    assert int((_alpha(payload["density"]["url"]) > 0).sum()) > 200  # the 300 points, a few sharing a cell
