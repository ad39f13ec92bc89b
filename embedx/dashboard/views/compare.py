"""Compare page: two models' maps side by side, one shared selection, and their neighbourhood overlap."""

from __future__ import annotations

import streamlit as st

from embedx.dashboard import data, widgets

path, meta = widgets.require_store()
st.title("Compare two models")
mapped = [m for m in meta.models if meta.projections.get(m)]
if len(meta.models) < 2:
    widgets.hint(
        "Comparing needs two models in the store; encode a second run into it:",
        f"embedx encode RUN_DIR --manifest manifest.csv --out {widgets.quote(path)} --name dae",
    )
    st.stop()
if len(mapped) < 2:
    widgets.hint(
        "Both models need a 2-D map; project the latents of each:",
        f"embedx project {widgets.quote(path)} --method tsne",
    )
    st.stop()
left_model = st.sidebar.selectbox("Left model", mapped, index=0, key="cmp_a")
right_model = st.sidebar.selectbox("Right model", mapped, index=1, key="cmp_b")
colour = widgets.colour_picker(meta, "cmp")
cohort = widgets.cohort_mask(path, meta, "cmp")
k = st.sidebar.slider("k for the overlap", 5, 50, 10, key="cmp_k")

score = data.overlap(path, left_model, right_model, k)
n_encoded = int(meta.n)
st.metric(
    f"Neighbourhood overlap ({left_model} vs {right_model})",
    f"{score:.3f}",
    help="Mean Jaccard overlap of each image's k nearest neighbours in the two latent spaces "
    f"(on up to 2,000 images). 1 = same neighbourhoods; unrelated spaces give about "
    f"k/(2N−k) ≈ {k / (2 * n_encoded - k):.4f}.",
)


@st.fragment
def maps_and_selection() -> None:
    """A lasso on either map selects the same rows on both (the selection is baked into each figure)."""
    for model, key in ((left_model, "cmp_left"), (right_model, "cmp_right")):  # both events before any map
        widgets.absorb_selection(path, model, meta.projections[model][0], cohort, key)
    columns = st.columns(2)
    for column, model, key in ((columns[0], left_model, "cmp_left"), (columns[1], right_model, "cmp_right")):
        with column:
            method = meta.projections[model][0]
            widgets.selectable_map(
                path,
                model,
                method,
                colour,
                cohort,
                key=key,
                follow=True,
                height=460,
                title=f"{model} · {method}",
            )
    widgets.selection_panel(path, meta, cohort, left_model, key="cmp_panel")


maps_and_selection()
