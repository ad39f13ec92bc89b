"""The explorer's start prints no "missing ScriptRunContext! This warning can be ignored ..." (twice, from
the thread that prepares the map page before the first session; review item 14); every other Streamlit
log record, of that logger too, still gets through."""

from __future__ import annotations

import logging
import threading

import pytest
import streamlit.web.cli
from streamlit.runtime.scriptrunner_utils import script_run_context

from embedx.dashboard import serve
from embedx.dashboard.launch import STORE_ENV


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_server_start_drops_only_the_missing_context_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger(script_run_context.__name__)
    kept = _Keep()
    logger.addHandler(kept)
    monkeypatch.setattr(logger, "filters", [])  # as in a fresh server process
    monkeypatch.delenv(STORE_ENV, raising=False)

    def server(prog_name: str) -> None:  # what Streamlit's server does while the map page is prepared
        worker = threading.Thread(target=script_run_context.get_script_run_ctx, name="warm")
        worker.start()
        worker.join()
        logger.warning("another Streamlit warning")

    monkeypatch.setattr(streamlit.web.cli, "main", server)
    try:
        serve.main()
    finally:
        logger.removeHandler(kept)
    assert kept.messages == ["another Streamlit warning"], kept.messages
