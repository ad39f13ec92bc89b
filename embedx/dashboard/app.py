"""Entry point of the explorer (`embedx dashboard store.h5`): page set-up and navigation only."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="embedx explorer", page_icon="🔎", layout="wide")

navigation = st.navigation({
    "Explore": [
        st.Page(PAGES / "map.py", title="Map", icon="🗺️", default=True),
        st.Page(PAGES / "neighbours.py", title="Neighbours", icon="👥"),
        st.Page(PAGES / "compare.py", title="Compare models", icon="⚖️"),
        st.Page(PAGES / "clusters.py", title="Clusters", icon="🧩"),
        st.Page(PAGES / "counterfactual.py", title="Counterfactuals", icon="🪄"),
    ],
    "Audit": [
        st.Page(PAGES / "probes.py", title="Probes", icon="📏"),
        st.Page(PAGES / "fairness.py", title="Fairness", icon="⚖"),
        st.Page(PAGES / "controls.py", title="Controls", icon="🧪"),
    ],
})
navigation.run()
