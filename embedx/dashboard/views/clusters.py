"""Clusters page: clusters named by their enriched attributes; one chosen shows its images and place."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from embedx.analysis.cluster_structure import structure_sentence
from embedx.dashboard import data, shaping, widgets

path, meta = widgets.require_store()
st.title("Clusters")
results = {str(r.get("model")): r for r in data.analysis(path, "clusters") if r.get("clusters")}
if not results:
    widgets.hint(
        "No clusters in this store yet. Cluster a model's latents (each cluster is then named by the "
        "attribute values over-represented in it):",
        f"embedx clusters {widgets.quote(path)}",
    )
    st.stop()
model = st.sidebar.selectbox("Model", list(results), key="cl_model")
result = results[model]
clusters = result["clusters"]
st.caption(
    f"{result.get('method', '?')} on {model}: {result.get('n_clusters', len(clusters))} "
    f"{'groups' if result.get('structure') is False else 'clusters'}, "
    f"silhouette {result.get('silhouette') or float('nan'):.2f}. "
    f"{result.get('correction', '')}"
)
structure = structure_sentence(result)  # k-means divides any cloud: say when it found no more than that
if structure is not None and result.get("structure") is False:
    st.warning(structure)
elif structure is not None:
    st.caption(structure)
overview = pd.DataFrame(
    [
        {"cluster": c.get("id"), "name": c.get("name", ""), "size": c.get("size"), "share": c.get("fraction")}
        for c in clusters
    ]
)
st.dataframe(
    overview,
    hide_index=True,
    width="stretch",
    column_config={"share": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)},
)

labels = np.asarray(result.get("labels") or [], dtype=np.int64)
names = {int(c["id"]): f"{c['id']}: {c.get('name', '')} ({c.get('size')})" for c in clusters}
chosen = st.selectbox("Inspect cluster", list(names), format_func=names.get, key="cl_pick")
entry = next(c for c in clusters if int(c["id"]) == chosen)
members = (
    np.flatnonzero(labels == chosen)
    if len(labels) == meta.n
    else np.asarray(entry.get("representative_rows", []), dtype=np.int64)
)

left, right = st.columns([3, 2])
with right:
    st.subheader(names[chosen])
    shown = shaping.fair_sample(members, widgets.THUMB_CAP)
    st.image(data.thumbnail_urls(path, shown), width=64, caption=[str(r) for r in shown])
    enriched = pd.DataFrame(entry.get("enriched") or [])
    keep = [
        c
        for c in ("attribute", "value", "pct_selected", "pct_rest", "fold", "odds_ratio", "q_value")
        if c in enriched
    ]
    widgets.frame_or_caption(
        enriched[keep] if keep else enriched,
        "No over-represented attribute value.",
        column_config={
            "pct_selected": st.column_config.NumberColumn("% cluster", format="percent"),
            "pct_rest": st.column_config.NumberColumn("% rest", format="percent"),
        },
    )
    if st.button("Use this cluster as the selection", key="cl_select"):
        widgets.set_selection(members, f"cluster {chosen} of {model}")
        st.success(f"{len(members):,} rows selected; the Map page shows their composition.")
with left:
    methods = meta.projections.get(model, [])
    if methods:
        method = st.selectbox("Map", methods, key="cl_method")
        colour = widgets.colour_picker(meta, "cl", container=st)
        widgets.selectable_map(
            path,
            model,
            method,
            colour,
            np.ones(meta.n, dtype=bool),
            key="cl_map",
            highlight=members,
            height=520,
        )
    else:
        widgets.hint(
            "No 2-D map of this model to highlight the cluster on:",
            f"embedx project {widgets.quote(path)} --method tsne --name {model}",
        )
