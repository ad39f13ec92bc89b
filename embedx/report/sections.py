"""The report's HTML sections, each from gathered results; figures go through the `Collector`."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedx.analysis.results import correlation_text, probe_table
from embedx.analysis.tables import (
    CLASS_SEPARATION_TITLE,
    class_separation_lines,
    family_line,
    gap_summary,
    subjects_and_images,
)
from embedx.report import control_figures, figures

PROJECTION_PREFERENCE = ("tsne", "umap", "pca")


class Collector:
    """Gathers results, figures and notes while the report is assembled."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.figures: list[dict[str, str]] = []
        self.notes: list[str] = []
        self._png: dict[str, str] = {}

    def figure(self, fig, name: str, caption: str) -> str:
        """Write the PNG, remember it with a caption, and return its base64 `<img>` tag."""
        data = figures.png_bytes(fig)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        path = self.out_dir / "figures" / f"{safe}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.figures.append({"file": f"figures/{safe}.png", "caption": caption})
        encoded = base64.b64encode(data).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def compact_clusters(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Cluster payload for report.json: without per-row labels and the full per-value test table."""
    out = {k: v for k, v in payload.items() if k != "labels"}
    out["clusters"] = [{k: v for k, v in c.items() if k != "tests"} for c in payload.get("clusters", [])]
    return out


def table_html(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(
        index=index, border=0, classes="tbl", na_rep="–", escape=True, float_format=lambda v: f"{v:.3g}"
    )


def map_section(store_path: Path, snap: Mapping[str, Any], col: Collector, seed: int) -> str:
    from embedx.store.h5store import Store

    parts = []
    kinds = {n: s.kind for n, s in snap["schema"].items()}
    attributes = snap["attributes"]
    with Store.open(store_path, "r") as store:
        for model in snap["models"]:
            methods = snap["projections"].get(model, [])
            method = next((m for m in PROJECTION_PREFERENCE if m in methods), methods[0] if methods else None)
            if method is not None:
                coords = store.projection(model, method)
                note = f"stored {method} projection"
            else:
                from embedx.analysis.clusters import reduce  # standardise + PCA, bounded memory at 1M rows

                z = store.latents(model)
                mask = store.encoded_mask(model)
                coords = np.full((len(mask), 2), np.nan, dtype=np.float32)
                if mask.sum() >= 3:
                    coords[mask] = reduce(z if mask.all() else z[mask], 2, seed)
                note = "PCA computed for the report (no projection stored; run `embedx project`)"
                col.notes.append(f"{model}: no stored projection, the map is a PCA computed on the fly")
            fig = figures.maps_figure(coords, attributes, kinds, f"{model} — {note}", seed=seed)
            parts.append(
                col.figure(
                    fig,
                    f"map_{model}_{method or 'pca-on-the-fly'}",
                    f"{model}: 2-D map ({note}) coloured by each attribute",
                )
            )
    return "\n".join(parts)


def probe_section(probes: list[dict], col: Collector) -> str:
    if not probes:
        return "<p>No probe results.</p>"
    order = sorted(probes, key=lambda p: (p.get("role") or "", p["attribute"], p["model"]))
    table = probe_table(order, value="formatted")
    rows = []
    for p in order:
        ci = p.get("ci") or [None, None]
        rows.append(
            {
                "model": p["model"],
                "attribute": p["attribute"],
                "metric": p["metric"],
                "score": p.get("score"),
                "CI low": ci[0],
                "CI high": ci[1],
                "chance": p.get("chance"),
                "r [95% CI]": correlation_text(p),
                "p": p.get("p_value"),
                "p (Holm)": p.get("p_holm"),
                "subjects (images)": subjects_and_images(p, "n_subjects", "n"),
                "verdict": p.get("verdict")
                or ("encoded" if p.get("encoded") else "not distinguishable from chance"),
            }
        )
    fig = col.figure(
        figures.probe_bars(order), "probes", "Probe score per attribute and model, 95 % CI, chance"
    )
    # what a probe says of itself (classes merged or left out, a pilot-sized interval, values that dominate
    # a continuous attribute) belongs beside the table, as the CLI prints it below its own
    notes = sorted({f"{p['model']} / {p['attribute']}: {n}" for p in order for n in p.get("notes") or []})
    notes_html = (
        "<h3>Notes on these probes</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
        if notes else ""
    )
    separation = class_separation_lines(order)
    if separation:
        notes_html += (f"<h3>{html.escape(CLASS_SEPARATION_TITLE)}</h3><ul>"
                       + "".join(f"<li>{html.escape(line)}</li>" for line in separation) + "</ul>")
    return (
        f"<p>{html.escape(family_line(order))}.</p>"
        "<h3>Poster table (score [95 % CI], * = encoded after Holm)</h3>"
        + table_html(table)
        + fig
        + "<h3>All probes</h3>"
        + table_html(pd.DataFrame(rows), index=False)
        + notes_html
    )


def reference_section(comparisons: list[dict]) -> str:
    """Pixels vs each model, per attribute: a table of scores and the reading in words."""
    if not comparisons:
        return ("<p>No pixel reference in this store: run <code>embedx encode --pixels --manifest m.csv "
                "--out STORE</code> to see what the images carry before any model.</p>")
    rows = []
    for c in comparisons:
        rows.append({
            "attribute": c["attribute"], "model": c["model"], "metric": c["metric"],
            "pixels": _score_ci(c["pixel_score"], c["pixel_ci"]), "model score": _score_ci(c["model_score"],
                                                                                           c["model_ci"]),
            "chance": c["chance"], "kept": "-" if c["kept"] is None else round(c["kept"], 2),
            "reading": c["reading"],
        })
    flagged = [c for c in comparisons if c["reading"] in ("discards", "keeps less", "amplifies")]
    sentences = "".join(f"<li>{html.escape(c['sentence'])}</li>" for c in flagged)
    if flagged:
        words = f"<ul>{sentences}</ul>"
    elif all(c["reading"] == "keeps" for c in comparisons):
        words = "<p>Every model keeps what the pixels carry.</p>"
    else:
        words = "<p>No model clearly discards or amplifies what the pixels carry (see the readings).</p>"
    return words + table_html(pd.DataFrame(rows), index=False)


def _score_ci(score: Any, ci: Any) -> str:
    if score is None:
        return "-"
    return f"{score:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def power_cell(r: Mapping[str, Any]) -> str:
    """One power cell of the HTML table, by the terminal table's rules: an untestable cell is not shown as a
    measured 0.00 [0.00, 0.00], and an estimate (only some of the labels that passed p re-run through the
    probe) is marked ~ and says what was counted, not found / planted."""
    if r.get("untestable"):
        return f"untestable ({r.get('positive_subjects')} subjects)"
    interval = f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
    if r.get("found_estimated"):
        return (f"~{r['power']:.2f} {interval} (estimated: {r.get('passed_p')}/{r['n_labels']} passed p, "
                f"{r.get('probe_confirmed')} of {r.get('probe_checked')} re-run confirmed)")
    return f"{r['power']:.2f} {interval} ({r['found']}/{r['n_labels']})"


def calibration_section(calibration: Mapping[str, Mapping[str, Any]], col: Collector) -> str:
    """False-positive rate and power per model: a sentence, a table and the power figure."""
    if not calibration:
        return "<p>Not run (see notes): <code>embedx calibrate STORE</code> adds it.</p>"
    parts = []
    for model, result in calibration.items():
        rows: dict[str, dict[str, str]] = {}
        for r in result["power"]:
            label = f"prevalence {r['prevalence']:.0%}" if r["kind"] == "binary" else "continuous"
            effect = ("d = " if r["kind"] == "binary" else "r = ") + f"{r['effect']:g}"
            rows.setdefault(label, {})[effect] = power_cell(r)
        text = list(result.get("text") or [])
        parts.append(
            f"<h3>{html.escape(model)}</h3><p>{html.escape(text[0] if text else '')}</p>"
            + "<p>Share of planted labels found (95 % Wilson interval; found / planted; ~ estimated where "
            "only some of the labels that passed p were re-run through the probe):</p>"
            + table_html(pd.DataFrame.from_dict(rows, orient="index").fillna(""))
            + "".join(f"<p class='meta'>{html.escape(n)}</p>" for n in result.get("notes") or [])
        )
    parts.append(
        col.figure(
            figures.calibration_figure(list(calibration.values())),
            "calibration",
            "Power of the audit by planted prevalence and effect; false-positive rate in the title",
        )
    )
    return "\n".join(parts)


def fairness_section(fairness: list[dict], col: Collector) -> str:
    if not fairness:
        return "<p>No fairness results (see notes).</p>"
    parts = []
    for f in fairness:
        groups = f.get("by_group") or {}
        frame = pd.DataFrame(
            {
                g: {k: v for k, v in (vals or {}).items() if not isinstance(v, (dict, list))}
                for g, vals in groups.items()
            }
        ).T
        gap_text = gap_summary(f)
        parts.append(
            f"<h3>{html.escape(str(f.get('target')))} by {html.escape(str(f.get('sensitive')))}"
            f"{' — ' + html.escape(str(f['model'])) if f.get('model') else ''}</h3>"
            f"<p>{html.escape(gap_text)}</p>" + table_html(frame)
        )
        name = f"fairness_{f.get('model', '')}_{f.get('target')}_{f.get('sensitive')}"
        parts.append(
            col.figure(
                figures.fairness_figure(f),
                name,
                f"{f.get('target')} by {f.get('sensitive')}: TPR / FPR / AUC per group with 95 % CI",
            )
        )
    return "\n".join(parts)


def _site_prevalence(result: Mapping[str, Any]) -> str:
    """'A 12 of 40 (30 %), ...'; a result written before subjects were counted has its rates only."""
    subjects, positive = result.get("subjects") or {}, result.get("positive_subjects") or {}
    return ", ".join(f"{s} {positive[s]} of {subjects[s]} ({v:.0%})" if s in subjects else f"{s} {v:.0%}"
                     for s, v in (result.get("prevalence") or {}).items())


def _widening(head: Mapping[str, Any]) -> str:
    """Why the headline's interval is wider than a bootstrap of fixed predictions would make it."""
    width = head.get("widening")
    if not width:
        return ""
    return (f" (interval widened ×{float(width['factor']):.2f}: refits on sites re-dealt at random, since "
            "other subjects train other probes)")


def controls_section(gathered: Mapping[str, Any], col: Collector) -> str:
    parts = ["<h3>Cross-site generalisation (Zech; seed 001)</h3>"]
    if gathered["cross_site"]:
        for c in gathered["cross_site"]:
            head = c.get("internal_vs_external") or {}
            ci = head.get("ci") or [None, None]
            parts.append(
                f"<p><b>{html.escape(str(c.get('target')))} across {html.escape(str(c.get('site')))}</b> "
                f"({html.escape(str(c.get('model')))}): leave-one-site-out internal AUC "
                f"{_f(head.get('internal_auc'))} vs external {_f(head.get('external_auc'))}, difference "
                f"{_f(head.get('difference'))} [{_f(ci[0])}, {_f(ci[1])}]{_widening(head)} — "
                f"{html.escape(str(head.get('verdict')))}. "
                f"Pooled grouped-CV AUC {_f((c.get('pooled') or {}).get('auc'))}; subjects with a positive "
                "image, by site: " + html.escape(_site_prevalence(c))
                + "</p>"
            )
            parts.append(
                col.figure(
                    control_figures.cross_site_heatmap(c),
                    f"cross_site_{c.get('model')}_{c.get('target')}_{c.get('site')}",
                    f"Cross-site AUC matrix: {c.get('target')} by {c.get('site')}",
                )
            )
    else:
        parts.append("<p>Not run (see notes).</p>")
    parts.append("<h3>Background-patch control (Dhar &amp; Shamir; seed 002)</h3>")
    if gathered["background"]:
        frame = pd.DataFrame(
            [
                {
                    "attribute": b["attribute"],
                    "balanced accuracy": b["score"],
                    "CI": f"[{_f(b['ci'][0])}, {_f(b['ci'][1])}]",
                    "chance": b["chance"],
                    "p": b["p_value"],
                    "n": b["n"],
                    "patch": f"{b.get('patch')} px, {b.get('selection')}",
                    "verdict": b.get("verdict"),
                }
                for b in gathered["background"]
            ]
        )
        parts.append(table_html(frame, index=False))
        parts.append(
            col.figure(
                control_figures.background_figure(gathered["background"]),
                "background",
                "Balanced accuracy from blank background patches, 95 % CI, chance",
            )
        )
    else:
        parts.append("<p>Not in the store (see notes).</p>")
    parts.append(shift_section(gathered.get("shift", []), col))
    parts.append("<h3>Distribution tests: KS per PCA mode, Benjamini–Yekutieli (chexploration)</h3>")
    for model, d in gathered["distribution"].items():
        parts.append(
            f"<p><b>{html.escape(model)}</b>: "
            + "<br>".join(html.escape(t) for t in d.get("text", []))
            + "</p>"
        )
        if d.get("tests"):
            parts.append(
                col.figure(
                    control_figures.distribution_figure(d),
                    f"distribution_{model}",
                    f"{model}: KS tests per PCA mode (strongest pair per attribute)",
                )
            )
    return "\n".join(parts)


def shift_section(results: list[dict], col: Collector) -> str:
    """Seed 001's train-on-one-group / test-on-each matrix (`embedx experiment shift --store`)."""
    parts = ["<h3>Train on one group, test on each (seed 001's shift study)</h3>"]
    if not results:
        parts.append("<p>Not in the store: run <code>embedx experiment shift --manifest m.csv --by "
                     "manufacturer --dims 3 --store STORE</code> to add it.</p>")
        return "\n".join(parts)
    for r in results:
        metric = r.get("headline", "auroc")
        what = f"{r.get('dims', 2)}-D {r.get('task', 'classify')}, {r.get('settings', {}).get('model', '')}"
        parts.append(f"<p><b>{html.escape(str(r.get('target')))} by {html.escape(str(r.get('by')))}</b> "
                     f"({html.escape(what)}; cells: mean ± sd over {r.get('settings', {}).get('replicates')} "
                     "training replicates and, in brackets, the 95 % interval over test subjects)</p>")
        parts.append(_shift_contrast_html(r, metric))
        for m in dict.fromkeys([metric, "specificity"]):
            parts.append(col.figure(control_figures.shift_figure(r, metric=m),
                                    f"shift_{r.get('dims')}d_{r.get('task')}_{r.get('by')}_{m}",
                                    f"{r.get('target')} {m}: rows trained on, columns tested on "
                                    f"({r.get('by')})"))
    return "\n".join(parts)


def _shift_contrast_html(r: dict, metric: str) -> str:
    """The paired contrasts (own-group model minus another's on the same test subjects) as a table.

    A result stored before they existed shows its old gaps under a warning: those compare different test
    subjects, so a group with harder images yields a gap whatever the models learnt.
    """
    contrasts = r.get("contrasts")
    if contrasts is None:
        old = [{"tier": g["tier"], "trained on": g["train"], "metric": g["metric"], "own group": g["own"],
                "other groups": g["others"], "gap": g["gap"]}
               for g in r.get("gaps", []) if g.get("train") != "all"]
        if not old:
            return ""
        return ("<p><b>Not a test of the seed's finding.</b> This result predates the paired contrasts: each "
                "gap below sets a model's score on its own group's test subjects against its score on other "
                "subjects, so a group whose test images are harder gives a gap with no training effect, and "
                "there is no interval. Re-run <code>embedx experiment shift</code> for the paired test.</p>"
                + table_html(pd.DataFrame(old), index=False))
    rows = []
    for c in contrasts:
        if c["metric"] not in (metric, "specificity"):
            continue
        ci = c.get("ci")
        rows.append({
            "tier": c["tier"], "metric": c["metric"], "tested on": c["test"],
            "own model": c["own"], "versus model": {"others": "others (mean)", "all": "all mixed"}.get(
                c["versus"], c["versus"]),
            "versus score": c["other"], "difference": c["difference"],
            "95 % CI": "n/a" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]",
            "p": c["p_value"], "p (Holm)": c.get("p_holm") if c["headline"] else None,
            "reading": f"{c['verdict']} ({c['skipped']})" if c.get("skipped") else c["verdict"],
        })
    if not rows:
        return ""
    found = [c for c in contrasts if c["headline"] and c["metric"] == metric and c.get("p_holm") is not None
             and c["p_holm"] < 0.05 and c["verdict"] != "no evidence of a shift"]
    headline = [c for c in contrasts if c["headline"] and c["metric"] == metric]
    tested = [c for c in headline if not c.get("skipped")]
    lead = (f"{len(found)} of {len(tested)} tested headline contrasts of {metric} hold after Holm"
            if tested else "no headline contrast was tested" if headline
            else "no headline contrast (a single group was trained)")
    if len(tested) < len(headline):
        lead += (f"; {len(headline) - len(tested)} not tested (fewer than 5 positive or negative test "
                 "subjects, see the reading)")
    return ("<p>Does a model fit its own group? On each group's test subjects, the model trained on that "
            "group minus a model trained on another (or the mean of the others, or all mixed): both on the "
            "same subjects, interval from the same subject resamples plus the training-replicate spread. "
            "A reading of <i>no evidence of a shift</i> means the interval covers 0. "
            f"{html.escape(lead)}.</p>"
            + table_html(pd.DataFrame(rows), index=False))


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def provenance_html(prov: Mapping[str, Any]) -> str:
    models = pd.DataFrame(
        [
            {
                k: (v if k != "config" else (str(v)[:300] + ("…" if v and len(str(v)) > 300 else "")))
                for k, v in m.items()
            }
            for m in prov["models"]
        ]
    )
    facts = pd.DataFrame(
        {
            "": {
                "store": prov["store"],
                "samples": prov["n_samples"],
                "subjects": prov["n_subjects"],
                "store created": prov.get("store_created"),
                "embedx": prov["embedx_version"],
                "report date": prov["date"],
            }
        }
    )
    return table_html(facts) + table_html(models, index=False)
