"""Counterfactual page: decode images with z_sem moved along a probe's normal (e.g. site A → site B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from embedx.dashboard import counterfactual, data, shaping, widgets

path, meta = widgets.require_store()
st.title("Counterfactuals")
st.caption(
    "What the model thinks an attribute looks like: the class-balanced linear SVM probe A vs B is fitted on "
    "z_sem, each chosen image's z_sem is moved along its normal (in multiples of the distance between "
    "the A and B means) and decoded with DDIM on the CPU, beside the original."
)
daes = [m for m in meta.models if str(meta.embedding_attrs.get(m, {}).get("kind", "")).lower() == "dae"]
if not daes:
    widgets.hint(
        "No diffusion-autoencoder embedding in this store: counterfactuals need a DAE. Train one and "
        "encode it into the store:",
        "embedx train dae --manifest manifest.csv --out runs/dae\n"
        f"embedx encode runs/dae --manifest manifest.csv --out {widgets.quote(path)} --name dae",
    )
    st.stop()
model_name = st.sidebar.selectbox("DAE", daes, key="cf_model")
run_dir = meta.embedding_attrs[model_name].get("run_dir")
if not run_dir or not Path(str(run_dir)).is_dir():
    st.warning(
        f"The run folder of `{model_name}` ({run_dir or 'not recorded'}) is not on this machine, so the "
        "decoder cannot be loaded. Copy the run folder back to that path (or re-encode from where it "
        "is) to use this view."
    )
    st.stop()

categorical = [a for a in meta.attribute_names if meta.kinds.get(a) != "continuous"]
attribute = st.sidebar.selectbox("Attribute", categorical, key="cf_attr")
values = sorted(data.labels(path, attribute).unique())
value_a = st.sidebar.selectbox("From value (A)", values, index=0, key="cf_a")
value_b = st.sidebar.selectbox("To value (B)", values, index=min(1, len(values) - 1), key="cf_b")
alphas = np.asarray(
    st.sidebar.multiselect(
        "Steps along the direction (× mean distance)",
        [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0],
        default=[0.0, 0.5, 1.0, 1.5],
        key="cf_alphas",
    ),
    dtype=np.float32,
)
steps = st.sidebar.slider("DDIM steps", 5, 50, 20, key="cf_steps")

z = data.latents(path, model_name)
labels = data.labels(path, attribute).to_numpy()
try:
    direction = counterfactual.probe_direction(z, labels, value_a, value_b, groups=meta.subject_ids)
except ValueError as error:
    st.warning(f"Cannot fit the direction {attribute}: {value_a} → {value_b}: {error}")
    st.stop()
st.markdown(
    f"Probe **{attribute}: {value_a} → {value_b}** on z_sem: balanced accuracy "
    f"{direction.accuracy:.2f} ({direction.n_a} vs {direction.n_b} images), mean distance along the "
    f"normal {direction.distance:.2f}."
)

encoded = np.flatnonzero(~np.isnan(z).any(axis=1))
pool = np.intersect1d(widgets.selection(), encoded)
if len(pool) == 0:
    pool = encoded[labels[encoded] == value_a]
default = shaping.fair_sample(pool, 4).tolist()
rows = st.multiselect(
    "Images (default: a few from the kept selection, else from A)",
    encoded.tolist(),
    default=default,
    max_selections=8,
    key="cf_rows",
)
source = st.radio(
    "x_T",
    ["stored or inverted (DDIM inversion of the thumbnail)", "fixed noise (faster)"],
    key="cf_source",
    horizontal=True,
)
if st.button("Decode on CPU", key="cf_go", disabled=not rows or not len(alphas)):
    run = data.trained_run(str(run_dir))
    model = run.model
    chosen = np.asarray(sorted(rows), dtype=np.int64)
    thumbs = data.thumbnails(path, chosen)
    stored_codes = data.stochastic_codes(path, model_name, chosen) if source.startswith("stored") else None
    images = None
    if stored_codes is None and source.startswith("stored"):
        images = counterfactual.thumbnails_to_input(thumbs, model.image_size, model.channels)
    with st.spinner(f"Decoding {len(chosen)} images × {len(alphas)} steps…"):
        decoded, used = counterfactual.counterfactuals(
            model, z[chosen], direction, alphas, images=images, x_T=stored_codes, steps=steps
        )
    st.session_state["cf_result"] = (chosen, thumbs, counterfactual.to_uint8(decoded), alphas, used)

if "cf_result" in st.session_state:
    chosen, thumbs, decoded, shown_alphas, used = st.session_state["cf_result"]
    st.caption(
        f"x_T: {used}. Columns: original thumbnail, then α = {', '.join(f'{a:g}' for a in shown_alphas)}."
    )
    for row, thumb, series in zip(chosen, thumbs, decoded, strict=True):
        st.image([thumb, *series], width=96, caption=["original", *[f"α={a:g}" for a in shown_alphas]])
        st.caption(f"row {row} · {attribute}={labels[row]}")
