"""The explorer's map as a Streamlit v2 component: `map_canvas.js` (drawing) and `map_canvas_input.js` (the
pointer's box, lasso, click, hover and zoom), joined into one module, and `.css`, shipped in the package (no
CDN, so it works behind a hospital firewall), drawing what `map_payload` builds.

Mounted without a shadow root so the browser tests (and a user's devtools) reach it with a plain selector;
its CSS is scoped to `.embedx-map`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

_HERE = Path(__file__).resolve().parent
_JS = ("map_canvas.js", "map_canvas_input.js")  # one module in two files, joined in this order
_MAP = st.components.v2.component(
    "embedx_map",
    html='<div class="embedx-map"></div>',
    css=(_HERE / "map_canvas.css").read_text(encoding="utf-8"),
    js="\n".join((_HERE / name).read_text(encoding="utf-8") for name in _JS),
    isolate_styles=False,
)


def _panel_scripts() -> list[str]:
    """Streamlit's scripts for the selection panel (data grid, image list, download button), as paths
    relative to the app's root: the map asks the browser for them once it has drawn, so the first lasso does
    not wait for 1.2 MB of them. Looked up by name in Streamlit's bundle; none found, nothing fetched."""
    static = Path(st.__file__).resolve().parent / "static" / "static" / "js"
    wanted = ("DataFrame.", "ImageList.", "DownloadButton.")
    return sorted(f"static/js/{f.name}" for f in static.glob("*.js") if f.name.startswith(wanted))


PANEL_SCRIPTS = _panel_scripts()


def _selection_changed() -> None:
    """The page reads the new selection from `st.session_state[key]` on the rerun this callback asks for."""


def draw_map(payload: dict[str, Any], key: str, drawing: str) -> None:
    """Mount (or update) the map under `key`; its box, lasso or click lands in `st.session_state[key]`.

    `drawing` names the selection baked into `payload`: a new one (a recolour, "Clear selection") replaces
    the lasso drawn in the browser even when the payload's points and flags are the same as before.
    """
    data = {**payload, "drawing": drawing, "prefetch": PANEL_SCRIPTS}  # the cached payload stays as it is
    _MAP(key=key, data=data, on_selection_change=_selection_changed, width="stretch", height="content")
