"""Map page: one model's 2-D map, coloured and filtered, with box/lasso selection and its statistics."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from embedx.dashboard import data, shaping, widgets

path, meta = widgets.require_store()
st.title("Map")
picked = widgets.model_and_method(meta, "map")
if picked is None:
    st.stop()
model, method = picked
colour = widgets.colour_picker(meta, "map")
cohort = widgets.cohort_mask(path, meta, "map")
st.sidebar.caption(f"{int(cohort.sum()):,} of {meta.n:,} images pass the filters")
st.caption(f"{model} · {data.projection_note(path, model, method)}")


@st.fragment
def map_and_selection() -> None:
    """Reruns alone on a selection: the sidebar, data loading and map quality stay as they are."""
    widgets.selectable_map(path, model, method, colour, cohort, key="map_chart")
    widgets.selection_panel(path, meta, cohort, model, key="map_panel")


left, right = st.columns([3, 1])
with left:  # first: Streamlit sends each element as it is made, so the map shows before quality is measured
    map_and_selection()
with right:
    data.cohort_tests(path, cohort)  # ready before the first lasso (about a second at a million rows)
    st.subheader("Map quality")
    quality = data.map_quality(path, model, method)
    st.metric("Trustworthiness (k=10)", f"{quality['trustworthiness']:.3f}")
    st.metric("kNN recall@10", f"{quality['knn_recall']:.3f}")
    st.caption(
        f"On a seeded sample of {quality['n']:,} encoded images. Per attribute: balanced accuracy of a "
        "10-NN classifier in latent space vs in the 2-D map; a large gap means the picture distorts."
    )
    table = pd.DataFrame(
        [{"attribute": a["attribute"], "latent": a["latent"], "map": a["map"], "gap": a["gap"]}
         for a in quality["attributes"]]
    )
    # markdown, not st.dataframe: the data-grid's script bundle (~1.2 MB) parsed beside the map delayed its
    # first paint by ~1 s in a 2-core browser (bench/dashboard_browser.py)
    if table.empty:
        st.caption("No categorical attribute to score.")
    else:
        st.markdown(shaping.markdown_table(table, digits=2))

if len(widgets.selection()) and not cohort[widgets.selection()].all():
    st.caption(
        "Part of the kept selection lies outside the current filters; statistics use the filtered cohort."
    )
