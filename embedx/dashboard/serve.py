"""`streamlit run` for the explorer, with the map page's data made while the browser is on its way.

`launch` runs `python -m embedx.dashboard.serve run app.py …` (the arguments of `streamlit run`). In the
first browser session the map page waited for the store's attribute table, the map's sample, density image
and payload, the cohort prepared for a selection's tests and the map-quality sample: 6.7 s to the map at
220k rows and 11 s at a million, against 2.3-2.8 s for every later session (bench/dashboard_browser.py).
A thread fills the same caches as soon as Streamlit's runtime exists, so the first user gets the page a
later one would; a failure there is only logged, and the page itself reports what is wrong with the store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from embedx.dashboard.launch import STORE_ENV

_LOG = logging.getLogger(__name__)


def warm_map_page(path: Path) -> None:
    """What the map page reads on its first run with its default choices, computed into the shared caches."""
    from embedx.dashboard import data, widgets

    meta = data.meta(path)
    mapped = [m for m in meta.models if meta.projections.get(m)]
    if not mapped:
        return
    model, method = mapped[0], meta.projections[mapped[0]][0]
    cohort = np.ones(meta.n, dtype=bool)  # the page's default: no filter
    placed = widgets.on_map(path, model, method, cohort)
    data.map_drawing(path, model, method, widgets.default_colour(meta), placed, widgets.SCATTER_MAX,
                     np.empty(0, dtype=np.int64), None, "", widgets.MAP_HEIGHT)  # fmt: skip
    data.projection_note(path, model, method)
    data.cohort_tests(path, cohort)
    data.map_quality(path, model, method)


def _warm_when_serving(path: Path, wait_s: float = 120.0) -> None:
    from streamlit.runtime import Runtime

    deadline = time.monotonic() + wait_s
    while not Runtime.exists():  # cache_data needs the runtime's storage, or the page would not see it
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    started = time.perf_counter()
    try:
        warm_map_page(path)
    except Exception:
        _LOG.warning("embedx: could not prepare the map page ahead of the first session", exc_info=True)
        return
    print(f"  map page ready ({time.perf_counter() - started:.1f} s)", flush=True)


# Streamlit warns, for every cached call made outside a browser session, "Thread '...': missing
# ScriptRunContext! This warning can be ignored when running in bare mode." The warming thread makes such
# calls on purpose (twice at start), so the user was shown a warning that says to ignore it.
_SCRIPT_RUN_CONTEXT_LOGGER = "streamlit.runtime.scriptrunner_utils.script_run_context"
_IGNORABLE = "missing ScriptRunContext! This warning can be ignored when running in bare mode."


class _DropMissingContextWarning(logging.Filter):
    """Drops that one warning (by its exact text) and nothing else Streamlit logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().endswith(_IGNORABLE)


def quiet_missing_context_warning() -> None:
    """Install the filter once on the logger Streamlit uses for it (a logger's filters see only its own
    records, so no other Streamlit message is touched)."""
    logger = logging.getLogger(_SCRIPT_RUN_CONTEXT_LOGGER)
    if not any(isinstance(f, _DropMissingContextWarning) for f in logger.filters):
        logger.addFilter(_DropMissingContextWarning())


def main() -> None:
    from streamlit.web import cli

    quiet_missing_context_warning()
    store = os.environ.get(STORE_ENV)
    if store and Path(store).exists():
        threading.Thread(target=_warm_when_serving, args=(Path(store),), daemon=True).start()
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
