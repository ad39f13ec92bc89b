"""`embedx dashboard` prepares the map page while the browser is on its way: the first session's map comes
from the caches the server filled, not from work done while the user waits."""

from __future__ import annotations

import shutil
from pathlib import Path

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

