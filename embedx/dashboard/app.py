"""Entry point of the explorer (`embedx dashboard store.h5`): page set-up and navigation only."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "views"

# The favicon is an emoji, drawn by the browser as an inline SVG: with a material icon (the page's own, by
# default) the browser would fetch it from fonts.gstatic.com, outside the hospital network. The sidebar
# still draws the pages' material icons, from the font bundled with Streamlit.
st.set_page_config(page_title="embedx explorer", page_icon="🔬", layout="wide")


navigation = st.navigation(
    {
        "Explore": [
            st.Page(PAGES / "map.py", title="Map", icon=":material/scatter_plot:", default=True),
            st.Page(PAGES / "neighbours.py", title="Neighbours", icon=":material/group:"),
            st.Page(PAGES / "compare.py", title="Compare models", icon=":material/compare:"),
            st.Page(PAGES / "clusters.py", title="Clusters", icon=":material/bubble_chart:"),
            st.Page(PAGES / "counterfactual.py", title="Counterfactuals", icon=":material/auto_fix_high:"),
        ],
        "Audit": [
            st.Page(PAGES / "probes.py", title="Probes", icon=":material/straighten:"),
            st.Page(PAGES / "fairness.py", title="Fairness", icon=":material/balance:"),
            st.Page(PAGES / "controls.py", title="Controls", icon=":material/science:"),
        ],
    }
)
navigation.run()
