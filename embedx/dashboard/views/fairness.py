"""Fairness page: per sensitive attribute, per-group metrics with CIs and the gaps between groups."""

from __future__ import annotations

import streamlit as st

from embedx.analysis.tables import gap_summary
from embedx.dashboard import data, figures, shaping, widgets

path, meta = widgets.require_store()
st.title("Fairness")
results = shaping.fairness_records(data.analysis(path, "fairness"))
if not results:
    target = next((a for a in ("finding", "label", "disease") if a in meta.attribute_names), "TARGET")
    widgets.hint(
        "No fairness results in this store yet. Measure a target's probe per sensitive attribute:",
        f"embedx fairness {widgets.quote(path)} --target {target}",
    )
    st.stop()
labels = [f"{r.get('model', '')} · {r['target']} by {r['sensitive']}".strip(" ·") for r in results]
for label, result in zip(labels, results, strict=True):
    st.subheader(label)
    gaps = shaping.fairness_gaps(result)
    if gaps:
        columns = st.columns(min(len(gaps), 4))
        for index, (name, value) in enumerate(gaps.items()):
            columns[index % len(columns)].metric(name.replace("_", " "), f"{value:.3f}")
        st.caption(
            "Each gap: the two groups that make it, the signed difference's 95 % interval (it may include 0) "
            "and a p-value for 'no gap' (Welch bootstrap-t over subjects): " + gap_summary(result)
        )
    overall = result.get("overall")
    if isinstance(overall, dict):
        st.caption(
            "Whole cohort: "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in overall.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            )
        )
    table = shaping.fairness_group_table(result)
    widgets.frame_or_caption(
        table,
        "No per-group metrics in this result.",
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for c in table.columns
            if c not in ("group", "n", "positives")
        },
    )
    numeric = [c for c in ("tpr", "fpr", "auc", "accuracy", "selection_rate") if c in table]
    if numeric:
        metric = st.radio("Metric", numeric, horizontal=True, key=f"fair_metric_{label}")
        st.plotly_chart(figures.group_metric_bars(table, metric), width="stretch", key=f"fair_bars_{label}")
