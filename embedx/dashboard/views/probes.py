"""Probes page: what each model's latents encode, attribute by attribute, against chance."""

from __future__ import annotations

import streamlit as st

from embedx.analysis.probe_result import judge_family
from embedx.analysis.reference import AMPLIFIES, DISCARDS, WEAKER, compare_to_reference
from embedx.analysis.results import correlation_text, probe_table
from embedx.analysis.tables import family_line, subjects_and_images
from embedx.dashboard import data, figures, shaping, widgets

path, meta = widgets.require_store()
st.title("Probes")
probes = judge_family(shaping.probe_records(data.analysis(path, "probes")))  # Holm over the table shown
if not probes:
    widgets.hint(
        "No probe results in this store yet. Probe every attribute of every model:",
        f"embedx probe {widgets.quote(path)}",
    )
    st.stop()
models = sorted({str(p["model"]) for p in probes})


st.caption(
    "Score with its 95 % CI; * = encoded (Holm-corrected over this table and the CI clear of chance). "
    "Categorical: balanced accuracy, chance 1/K (higher = more encoded); continuous: MAE against the median "
    "baseline (lower), judged by the CI of r, the predictions' correlation with the value (above 0 = "
    f"clear of chance). {family_line(probes)}."
)
table = probe_table(probes, "formatted").T
table.index.name = "attribute"
st.dataframe(table.reset_index(), hide_index=True, width="stretch", key="probe_table")

rows = []
for p in probes:
    rows.append(
        {
            "model": p["model"],
            "attribute": p["attribute"],
            "kind": p.get("kind"),
            "metric": p.get("metric"),
            "score": p.get("score"),
            "ci low": (p.get("ci") or [None])[0],
            "ci high": (p.get("ci") or [None, None])[1],
            "chance": p.get("chance"),
            "r [95% CI]": correlation_text(p),
            "p": p.get("p_value"),
            "p (Holm)": p.get("p_holm"),
            "verdict": p.get("verdict")
            or ("encoded" if p.get("encoded") else "not distinguishable from chance"),
            "subjects (images)": subjects_and_images(p, "n_subjects", "n"),
            # which classes an encoded categorical attribute's probe tells apart (one-vs-rest AUC)
            "classes told apart": " · ".join(f"{c} {a:.2f}" for c, a in (p.get("class_auc") or {}).items()),
            "notes": "; ".join(p.get("notes") or []),  # merged classes, pilot intervals, dominating values
        }
    )
st.subheader("Per model and attribute")
st.dataframe(
    rows,
    hide_index=True,
    width="stretch",
    column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("score", "ci low", "ci high", "chance")
    },
)
for metric in sorted({str(p.get("metric")) for p in probes}):
    subset = [p for p in probes if str(p.get("metric")) == metric and p.get("score") is not None]
    if subset:
        st.markdown(f"**{metric}** by attribute ({', '.join(models)}); black bar = chance")
        st.plotly_chart(figures.probe_bars(subset), width="stretch", key=f"probe_bars_{metric}")

st.subheader("What each model keeps of what the pixels carry")
model_kinds = {m: str(attrs.get("kind", "")) for m, attrs in meta.embedding_attrs.items()}
model_preprocess = {m: str(attrs.get("preprocess", "")) for m, attrs in meta.embedding_attrs.items()}
comparisons = compare_to_reference(probes, model_kinds, model_preprocess)
if not comparisons:
    widgets.hint(
        "No pixel reference in this store. Encode what plain pixels carry (no training), then probe it:",
        f"embedx encode --pixels --manifest MANIFEST --out {widgets.quote(path)}",
    )
else:
    st.caption(
        "The pixel reference (PCA of the pooled image + acquisition statistics) probed like the models. "
        "Discards: the pixels carry the attribute, the model's latents do not show it. Keeps less / "
        "amplifies: the two 95 % intervals miss each other. Kept = (model − chance) / (pixels − chance)."
    )
    for c in comparisons:
        if c.reading in (DISCARDS, WEAKER, AMPLIFIES):
            st.markdown(f"- {c.sentence}")
    st.dataframe(
        [
            {"attribute": c.attribute, "model": c.model, "pixels": c.pixel_score,
             "model score": c.model_score, "chance": c.chance, "kept": c.kept, "reading": c.reading}
            for c in comparisons
        ],
        hide_index=True,
        width="stretch",
        column_config={
            k: st.column_config.NumberColumn(format="%.3f")
            for k in ("pixels", "model score", "chance", "kept")
        },
        key="reference_table",
    )

st.subheader("How far to trust these verdicts on this cohort")
calibration = data.analysis(path, "calibration")
if not calibration:
    widgets.hint(
        "No calibration yet. Measure the false-positive rate and the power of the probes on this store's own "
        "latents (random and planted labels, no ground truth needed):",
        f"embedx calibrate {widgets.quote(path)}",
    )
else:
    for result in calibration:
        st.markdown(f"**{result['model']}** · " + (result.get("text") or [""])[0])
        st.plotly_chart(
            figures.calibration_lines(result), width="stretch", key=f"calibration_{result['model']}"
        )
        st.dataframe(
            [
                {
                    "kind": r["kind"],
                    "prevalence": r.get("prevalence"),
                    "effect": r["effect"],
                    "found": f"{r['found']}/{r['n_labels']}",
                    "power": r["power"],
                    "ci low": r["ci"][0],
                    "ci high": r["ci"][1],
                    "p < alpha alone": r["power_single_test"],
                }
                for r in result["power"]
            ],
            hide_index=True,
            width="stretch",
        )
