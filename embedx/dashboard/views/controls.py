"""Controls page: the cross-site matrix (train on one site, test on another) and the background control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from embedx.dashboard import data, figures, shaping, widgets

path, meta = widgets.require_store()
st.title("Controls")
controls = data.analysis(path, "controls")
cross = [c for c in controls if c.get("control") == "cross_site" or "matrix" in c]
background = [c for c in controls if c.get("control") == "background"]
shift = [c for c in controls if c.get("control") == "shift"]
other = [c for c in controls if c not in cross and c not in background and c not in shift]

st.header("Cross-site matrix")
if not cross:
    target = next((a for a in ("finding", "label", "disease") if a in meta.attribute_names), "TARGET")
    site = next((a for a in ("site", "manufacturer", "scanner") if a in meta.attribute_names), "SITE")
    widgets.hint(
        "No cross-site control in this store yet. Train on each site, test on every other:",
        f"embedx control cross-site {widgets.quote(path)} --target {target} --site {site}",
    )
for result in cross:
    sites = [str(s) for s in result.get("sites", [])]
    matrix = np.asarray(
        [[np.nan if v is None else v for v in row] for row in result.get("matrix", [])], dtype=float
    )
    site_name = result.get("site", "site")
    title = (
        f"{result.get('model', '')}: {result.get('target', '?')} AUC, trained on {site_name} "
        "(rows) / tested on (columns)"
    )
    if matrix.size:
        st.plotly_chart(
            figures.heatmap(matrix, sites, sites, title, result.get("metric", "auc")),
            width="stretch",
            key=f"cross_{result.get('model')}_{result.get('target')}",
        )
    headline = result.get("internal_vs_external") or {}
    if headline:
        a, b, c = st.columns(3)
        a.metric("internal AUC", f"{headline.get('internal_auc') or float('nan'):.3f}")
        b.metric("external AUC", f"{headline.get('external_auc') or float('nan'):.3f}")
        c.metric("internal − external", f"{headline.get('difference') or float('nan'):.3f}")
        if headline.get("verdict"):
            st.caption(str(headline["verdict"]))
    loso = result.get("leave_one_site_out")
    if loso:
        st.dataframe(shaping.intervals_as_text(pd.DataFrame(loso)), hide_index=True, width="stretch")

st.header("Background control")
if not background:
    site = next((a for a in ("site", "manufacturer", "scanner") if a in meta.attribute_names), "site")
    widgets.hint(
        "No background-patch control stored. It reads the images (not the store): a classifier on a "
        "corner patch with no anatomy that still finds the site means the site is in the pixels:",
        f"embedx control background --manifest manifest.csv --attribute {site}",
    )
for result in background:
    st.subheader(f"{result.get('attribute', '?')} from blank background patches")
    if isinstance(result.get("score"), (int, float)):
        ci = result.get("ci") or [None, None]
        a, b, c = st.columns(3)
        a.metric(str(result.get("metric", "balanced accuracy")).replace("_", " "), f"{result['score']:.3f}")
        b.metric("95 % CI", shaping.intervals_as_text(pd.DataFrame({"ci": [ci]}))["ci"][0])
        c.metric("chance", f"{result.get('chance') or float('nan'):.3f}")
    if result.get("verdict"):
        st.caption(str(result["verdict"]))
    with st.expander("All fields"):
        scalars = {
            k: v for k, v in result.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        }
        st.dataframe(pd.DataFrame([scalars]), hide_index=True, width="stretch")

st.header("Train on one group, test on each (seed 001)")
if not shift:
    widgets.hint(
        "No shift study stored. It trains a lesion model per manufacturer (3-D: MONAI ResNet / U-Net on the "
        "volumes) and tests each on every manufacturer:",
        "embedx experiment shift --manifest lesions/manifest.csv --by manufacturer --dims 3 "
        f"--store {widgets.quote(path)}",
    )
for result in shift:
    metric = str(result.get("headline", "auroc"))
    groups = [str(g) for g in result.get("train_groups", [])]
    cells = {(r["tier"], r["train"], r["test"]): r for r in result.get("summary", [])}
    kind = f"{result.get('dims', 2)}-D {result.get('task', 'classify')}"
    st.subheader(f"{result.get('target')} by {result.get('by')}: {kind}")
    shown = st.radio("metric", list(dict.fromkeys([metric, *result.get("metrics", [])])), horizontal=True,
                     key=f"shift_metric_{result.get('dims')}_{result.get('task')}_{result.get('by')}")
    for tier in result.get("tiers", []):
        matrix = np.asarray(
            [[(cells.get((tier, a, b)) or {}).get(f"{shown}_mean") for b in groups] for a in groups],
            dtype=float,
        )
        st.plotly_chart(
            figures.heatmap(
                matrix, groups, groups, f"{tier}: {shown}, trained on (rows) / tested on (columns)", shown
            ),
            width="stretch",
            key=f"shift_{result.get('dims')}_{result.get('task')}_{result.get('by')}_{tier}_{shown}",
        )
    contrasts = [c for c in result.get("contrasts") or [] if c.get("metric") == shown]
    gaps = [g for g in result.get("gaps", []) if g.get("train") != "all"]
    if contrasts:  # the paired test: own-group model minus another's, on the same test subjects
        st.caption("Own-group model minus another's, on the same test subjects (95 % CI over subjects and "
                   "training replicates); 'no evidence of a shift' when the interval covers 0.")
        table = pd.DataFrame(contrasts)
        table["ci"] = [None if c is None else f"[{c[0]:+.3f}, {c[1]:+.3f}]" for c in table["ci"]]
        st.dataframe(table[["tier", "test", "versus", "own", "other", "difference", "ci", "p_value", "p_holm",
                            "verdict"]], hide_index=True, width="stretch")
    elif gaps:  # stored before the paired contrasts existed
        st.caption("Not a test: these gaps compare different test subjects, so a group with harder images "
                   "shows a gap whatever the models learnt. Re-run `embedx experiment shift` for the "
                   "paired test.")
        st.dataframe(pd.DataFrame(gaps)[["tier", "train", "metric", "own", "others", "gap"]], hide_index=True,
                     width="stretch")

if other:
    st.header("Other controls")
    for result in other:
        st.subheader(
            str(result.get("control", "control")) + (f" · {result['model']}" if "model" in result else "")
        )
        for line in result.get("text", []):
            st.markdown(f"- {line}")
