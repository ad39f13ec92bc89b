"""`embedx dashboard` prepares the map page while the browser is on its way: the first session's map comes
from the caches the server filled, not from work done while the user waits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import embedx.dashboard
from embedx.dashboard import data, serve
from embedx.dashboard.data import STORE_ENV

MAP_PAGE = Path(embedx.dashboard.__file__).resolve().parent / "views" / "map.py"


def test_the_first_session_gets_the_map_the_server_prepared(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = tmp_path / "store.h5"  # a path no other test has drawn a map of
    shutil.copy(store, fresh)
    serve.warm_map_page(fresh)
    made = []
    real = data.map_payload
    monkeypatch.setattr(data, "map_payload", lambda *args, **kwargs: made.append(1) or real(*args, **kwargs))
    monkeypatch.setenv(STORE_ENV, str(fresh))
    at = AppTest.from_file(str(MAP_PAGE), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("bidi_component")) == 1 and made == []  # drawn from what the server prepared
    at.sidebar.selectbox(key="map_colour").set_value("sex").run()  # a choice it did not prepare is made now
    assert not at.exception and made == [1]



def test_the_default_map_is_drawn_from_its_colour_column_alone(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a large map is sent, only the colour's attribute column is read: the attribute table (every
    column, ~0.25 s per text column at a million rows) waits for the statistics beside the map. (A map of up
    to 10,000 drawn points has hover text with every attribute; 200 drawn points stand for a large map here.)
    """
    import numpy as np

    from embedx.dashboard import widgets
    from embedx.store.h5store import Store

    monkeypatch.setattr(data, "HOVER_TEXT_MAX", 100)
    fresh = tmp_path / "store.h5"
    shutil.copy(store, fresh)
    meta = data.meta(fresh)
    model, method = meta.models[0], meta.projections[meta.models[0]][0]
    colour = widgets.default_colour(meta)
    on_map = widgets.on_map(fresh, model, method, np.ones(meta.n, dtype=bool))
    data.map_drawing(fresh, model, method, colour, on_map, 200, np.empty(0, dtype=np.int64), None, "",
                     widgets.MAP_HEIGHT)
    assert set(meta._columns) == {colour} and "attributes" not in vars(meta)
    with Store.open(fresh) as handle:  # read one by one, the columns are the table's
        table = handle.attributes()
        for name in table.columns:
            assert handle.attribute(name).equals(table[name])
        with pytest.raises(Exception, match="no attribute 'nope'"):
            handle.attribute("nope")
    pd.testing.assert_frame_equal(meta.attributes, table)
