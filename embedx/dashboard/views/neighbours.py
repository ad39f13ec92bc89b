"""Neighbours page: one image and its nearest neighbours in a model's latent space."""

from __future__ import annotations

import numpy as np
import streamlit as st

from embedx.dashboard import widgets

path, meta = widgets.require_store()
st.title("Neighbours in latent space")
st.caption(
    "Do an image's nearest neighbours share its patient traits, or its scanner? Distances are taken in "
    "the model's latent space, not in the 2-D map."
)
model = st.sidebar.selectbox("Model", meta.models, key="nb_model")
k = st.sidebar.slider("Neighbours", 4, 40, 12, key="nb_k")
candidates = widgets.selection()
default = int(st.session_state.get(widgets.FOCUS, candidates[0] if len(candidates) else 0))
if len(candidates):
    st.caption(f"The kept selection has {len(candidates):,} images; pick one of them or type any row.")
row = int(
    st.number_input(
        "Row", min_value=0, max_value=meta.n - 1, value=min(default, meta.n - 1), step=1, key="nb_row"
    )
)
if len(candidates) and row not in set(np.asarray(candidates).tolist()):
    st.caption("(this row is not in the kept selection)")
st.session_state[widgets.FOCUS] = row
widgets.neighbours(path, meta, model, row, k=k)
