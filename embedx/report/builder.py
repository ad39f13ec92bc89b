"""`embedx report`: one self-contained HTML page, `report.json` and the PNG figures for a store.

The report reads the analyses already in the store (`/analysis/<kind>/<key>`) and runs the missing ones with
their defaults, so it works right after `encode` and reuses anything computed before:

* probes — always, for every model that has none stored;
* fairness and cross-site — only when there is a target: ``target`` if given, else the store's clinical
  binary attribute called ``finding``, else the first clinical binary attribute (see `pick_target`). The
  cross-site matrix needs a site-like attribute (`pick_site`: acquisition attribute named site / hospital /
  institution / centre / center, else none, in which case it is skipped with a note);
* clusters and KS distribution tests — for every model without stored ones;
* the background-patch control needs the images, so the report only shows it when it was run with
  `embedx control background ... --store` (otherwise a note says how to run it).

The schema of `report.json` is documented in docs/report.md. Figures: matplotlib Agg, written as PNG files
beside the HTML and embedded in it as base64 data URIs (the HTML needs no other file, CSS or script).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import pandas as pd

from embedx._version import __version__
from embedx.analysis.results import build_document, probe_table, write_json
from embedx.errors import EmbedxError
from embedx.report import figures

log = logging.getLogger(__name__)

SITE_WORDS = ("site", "hospital", "institution", "centre", "center")
PROJECTION_PREFERENCE = ("tsne", "umap", "pca")
TEMPLATE = Path(__file__).with_name("template.html")


def pick_target(schema: Mapping[str, Any], requested: str | None = None) -> str | None:
    """The report's fairness / cross-site target (documented rule; see the module doc)."""
    if requested is not None:
        if requested not in schema:
            raise EmbedxError(
                f"--target {requested!r} is not an attribute of the store ({', '.join(schema)})"
            )
        return requested
    candidates = [n for n, s in schema.items() if s.role == "clinical" and s.kind == "binary"]
    if "finding" in candidates:
        return "finding"
    return candidates[0] if candidates else None


def pick_site(schema: Mapping[str, Any], exclude: str | None = None) -> str | None:
    """The site-like attribute for the cross-site matrix, or None."""
    for name, spec in schema.items():
        if name == exclude or spec.kind == "continuous":
            continue
        words = re.split(r"[^a-z]+", name.lower())
        if any(w in SITE_WORDS for w in words):
            return name
    return None


class _Collector:
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


def _store_snapshot(store_path: Path) -> dict[str, Any]:
    from embedx.store.h5store import Store

    with Store.open(store_path, "r") as store:
        models = store.models()
        snap: dict[str, Any] = {
            "n": store.n,
            "models": models,
            "attributes": store.attributes(),
            "schema": store.schema(),
            "subject_ids": np.asarray(store.subject_ids).astype(str),
            "projections": store.projections(),
            "embedding_info": {m: store.embedding_info(m) for m in models},
            "probes": store.read_analysis("probes"),
            "fairness": store.read_analysis("fairness"),
            "clusters": store.read_analysis("clusters"),
            "controls": store.read_analysis("controls"),
            "file_attrs": {
                k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in store.h5.attrs.items()
                if k != "subject_salt"
            },
        }
    return snap


def _provenance(store_path: Path, snap: Mapping[str, Any]) -> dict[str, Any]:
    models = []
    for name, info in snap["embedding_info"].items():
        models.append(
            {
                "name": name,
                "kind": info.get("kind"),
                "dim": info.get("dim"),
                "n_encoded": info.get("n_encoded"),
                "checkpoint_hash": info.get("checkpoint_hash"),
                "config": info.get("config"),
                "embedx_version": info.get("embedx_version"),
                "date": info.get("date"),
                "run_dir": info.get("run_dir"),
            }
        )
    return {
        "store": str(store_path.resolve()),
        "store_created": snap["file_attrs"].get("created"),
        "store_embedx_version": snap["file_attrs"].get("embedx_version"),
        "n_samples": int(snap["n"]),
        "n_subjects": len(np.unique(snap["subject_ids"])),
        "models": models,
        "embedx_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "attributes": {n: {"kind": s.kind, "role": s.role} for n, s in snap["schema"].items()},
    }


def _run_probes(
    store_path: Path, models: Sequence[str], options: Mapping[str, Any], notes: list[str]
) -> list[dict]:
    try:
        from embedx.analysis.probes import run_probes
    except ImportError as err:  # the probe module is part of the package; this only guards a broken install
        notes.append(f"probes could not be run ({err}); run `embedx probe` first")
        return []
    return list(run_probes(store_path, models=list(models), **options))


def _latest_by(results: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict]:
    """De-duplicate stored results by identity fields, the later one winning."""
    out: dict[tuple, dict] = {}
    for r in results:
        out[tuple(str(r.get(k)) for k in keys)] = dict(r)
    return list(out.values())


def _gather(
    store_path: Path,
    snap: dict[str, Any],
    col: _Collector,
    *,
    target: str | None,
    run_missing: bool,
    seed: int,
    probe_options: Mapping[str, Any],
    n_bootstrap: int,
) -> dict[str, Any]:
    models: list[str] = snap["models"]
    if not models:
        raise EmbedxError(
            f"{store_path}: the store holds no embeddings; run `embedx encode` before the report"
        )
    notes = col.notes
    # Probes.
    probes = _latest_by(snap["probes"], ("model", "attribute"))
    have = {p["model"] for p in probes}
    missing = [m for m in models if m not in have]
    if missing and run_missing:
        log.info("report: running probes for %s", ", ".join(missing))
        probes = _latest_by(
            probes + _run_probes(store_path, missing, probe_options, notes), ("model", "attribute")
        )
        notes.append(f"probes computed for the report (defaults) for: {', '.join(missing)}")
    # Target, fairness, cross-site.
    target = pick_target(snap["schema"], target)
    fairness: list[dict] = []
    cross: list[dict] = [c for c in snap["controls"] if c.get("control") == "cross_site"]
    if target is None:
        notes.append(
            "no fairness / cross-site analysis: no --target given and no clinical binary attribute "
            "(e.g. 'finding') in the store"
        )
    else:
        fairness = [f for f in snap["fairness"] if f.get("target") == target]
        if not fairness and run_missing:
            from embedx.analysis.fairness import run_fairness

            fairness = list(run_fairness(store_path, target, seed=seed))
            notes.append(f"fairness computed for the report (defaults), target {target!r}")
        site = pick_site(snap["schema"], exclude=target)
        if site is None:
            notes.append(
                "no cross-site matrix: no site-like attribute (site / hospital / institution / centre)"
            )
        elif run_missing:
            # Every model gets its matrix: a DAE and a VAE of one cohort can carry the site differently.
            from embedx.analysis.cross_site import cross_site

            for model in models:
                key = (model, target, site)
                if any((c.get("model"), c.get("target"), c.get("site")) == key for c in cross):
                    continue
                try:
                    cross.append(
                        cross_site(store_path, target, site, model, n_bootstrap=n_bootstrap, seed=seed)
                    )
                    notes.append(
                        f"cross-site matrix computed for the report: {target!r} across {site!r} ({model})"
                    )
                except EmbedxError as err:
                    notes.append(f"cross-site matrix not possible for {model}: {err}")
    cross = _latest_by(cross, ("model", "target", "site"))
    # Clusters and distribution tests per model.
    clusters = {c["model"]: c for c in snap["clusters"]}
    distributions = {c["model"]: c for c in snap["controls"] if c.get("control") == "distribution"}
    for m in models:
        if m not in clusters and run_missing:
            from embedx.analysis.clusters import run_clusters

            clusters[m] = run_clusters(store_path, m, seed=seed)
            notes.append(f"clusters computed for the report (k-means, k by silhouette) for {m}")
        if m not in distributions and run_missing:
            from embedx.analysis.distribution import distribution_tests

            distributions[m] = distribution_tests(store_path, m, seed=seed)
    underpowered = _underpowered(probes)
    if underpowered:
        notes.append(underpowered)
    background = [c for c in snap["controls"] if c.get("control") == "background"]
    if not background:
        notes.append(
            "background-patch control not in the store: run `embedx control background --manifest "
            "m.csv --attribute site --store STORE` to add it"
        )
    return {
        "probes": probes,
        "fairness": fairness,
        "cross_site": cross,
        "clusters": clusters,
        "distribution": distributions,
        "background": background,
        "target": target,
    }


def _underpowered(probes: Sequence[Mapping[str, Any]], alpha: float = 0.05) -> str | None:
    """A note when too few permutations were run for any probe to pass Holm (the verdicts then all read
    'not distinguishable from chance' whatever the scores)."""
    worst = None
    for p in probes:
        perms = (p.get("permutation") or {}).get("permutations")
        family = p.get("family_size")
        if isinstance(perms, int) and isinstance(family, int) and family / (perms + 1) >= alpha:
            worst = (perms, family)
    if worst is None:
        return None
    perms, family = worst
    return (
        f"probes ran with {perms} permutations for {family} tests: the smallest Holm-adjusted p is "
        f"{family / (perms + 1):.2f} >= {alpha}, so no probe can be called encoded; rerun `embedx probe` "
        f"with at least {int(np.ceil(family / alpha))} permutations"
    )


def _compact_clusters(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Cluster payload for report.json: without per-row labels and the full per-value test table."""
    out = {k: v for k, v in payload.items() if k != "labels"}
    out["clusters"] = [{k: v for k, v in c.items() if k != "tests"} for c in payload.get("clusters", [])]
    return out


def _table_html(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(
        index=index, border=0, classes="tbl", na_rep="–", escape=True, float_format=lambda v: f"{v:.3g}"
    )


def _map_section(store_path: Path, snap: Mapping[str, Any], col: _Collector, seed: int) -> str:
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
                from sklearn.decomposition import PCA

                z = store.latents(model)
                mask = store.encoded_mask(model)
                coords = np.full((len(mask), 2), np.nan, dtype=np.float32)
                if mask.sum() >= 3:
                    zz = z[mask]
                    std = zz.std(axis=0)
                    coords[mask] = PCA(n_components=2, random_state=seed).fit_transform(
                        (zz - zz.mean(axis=0)) / np.where(std > 0, std, 1.0)
                    )
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


def _probe_section(probes: list[dict], col: _Collector) -> str:
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
                "p": p.get("p_value"),
                "p (Holm)": p.get("p_holm"),
                "n": p.get("n"),
                "verdict": p.get("verdict")
                or ("encoded" if p.get("encoded") else "not distinguishable from chance"),
            }
        )
    fig = col.figure(
        figures.probe_bars(order), "probes", "Probe score per attribute and model, 95 % CI, chance"
    )
    return (
        "<h3>Poster table (score [95 % CI], * = encoded after Holm)</h3>"
        + _table_html(table)
        + fig
        + "<h3>All probes</h3>"
        + _table_html(pd.DataFrame(rows), index=False)
    )


def _fairness_section(fairness: list[dict], col: _Collector) -> str:
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
        gaps = {
            k: f.get(k)
            for k in (
                "demographic_parity_difference",
                "demographic_parity_ratio",
                "equalized_odds_difference",
                "equal_opportunity_difference",
                "worst_group_auc",
            )
            if k in f
        }
        gap_text = ", ".join(
            f"{k.replace('_', ' ')} {v:.3f}" if isinstance(v, (int, float)) else f"{k} n/a"
            for k, v in gaps.items()
        )
        parts.append(
            f"<h3>{html.escape(str(f.get('target')))} by {html.escape(str(f.get('sensitive')))}"
            f"{' — ' + html.escape(str(f['model'])) if f.get('model') else ''}</h3>"
            f"<p>{html.escape(gap_text)}</p>" + _table_html(frame)
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


def _cluster_montage(store_path: Path, payload: Mapping[str, Any], col: _Collector) -> str:
    """Thumbnails of each cluster's representatives (nearest its centre), when the store has them."""
    from embedx.store.h5store import Store

    clusters = [c for c in payload.get("clusters", []) if c.get("representative_rows")][
        : figures.MONTAGE_ROWS
    ]
    if not clusters:
        return ""
    with Store.open(store_path, "r") as store:
        has = store.has_thumbnail()
        rows = sorted({r for c in clusters for r in c["representative_rows"] if has[r]})
        if not rows:
            return ""
        thumbs = dict(zip(rows, store.thumbnails(rows), strict=True))
    grid = [[thumbs[r] for r in c["representative_rows"] if r in thumbs] for c in clusters]
    fig = figures.cluster_montage(grid, [f"[{c['id']}] {c['name']}" for c in clusters])
    model = str(payload.get("model"))
    return col.figure(fig, f"clusters_{model}", f"{model}: the samples nearest each cluster's centre")


def _cluster_section(
    clusters: Mapping[str, Mapping[str, Any]], store_path: Path | None = None, col: _Collector | None = None
) -> str:
    if not clusters:
        return "<p>No clusters.</p>"
    parts = []
    for model, payload in clusters.items():
        rows = []
        for c in payload.get("clusters", []):
            top = c.get("enriched") or []
            rows.append(
                {
                    "cluster": c["id"],
                    "name": c["name"],
                    "size": c["size"],
                    "share": f"{100 * c['fraction']:.1f} %",
                    "strongest attribute (Cramér's V)": ", ".join(
                        f"{a['attribute']} {a['cramers_v']:.2f}"
                        for a in (c.get("attributes") or [])[:2]
                        if a.get("cramers_v") is not None
                    ),
                    "enriched values (fold, q)": "; ".join(
                        f"{e['attribute']}={e['value']} ×{e['fold']:.1f} q={e['q_value']:.1e}"
                        if e.get("fold") is not None
                        else f"{e['attribute']}={e['value']} (only here)"
                        for e in top[:4]
                    ),
                    "representatives": ", ".join(c.get("representatives", [])[:3]),
                }
            )
        sil = payload.get("silhouette")
        parts.append(
            f"<h3>{html.escape(model)} — {html.escape(str(payload.get('method')))}, "
            f"{payload.get('n_clusters')} clusters"
            + (f", silhouette {sil:.2f}" if sil is not None else "")
            + "</h3>"
            + _table_html(pd.DataFrame(rows), index=False)
        )
        if store_path is not None and col is not None:
            parts.append(_cluster_montage(store_path, payload, col))
    return "\n".join(parts)


def _controls_section(gathered: Mapping[str, Any], col: _Collector) -> str:
    parts = ["<h3>Cross-site generalisation (Zech; seed 001)</h3>"]
    if gathered["cross_site"]:
        for c in gathered["cross_site"]:
            head = c.get("internal_vs_external") or {}
            ci = head.get("ci") or [None, None]
            parts.append(
                f"<p><b>{html.escape(str(c.get('target')))} across {html.escape(str(c.get('site')))}</b> "
                f"({html.escape(str(c.get('model')))}): leave-one-site-out internal AUC "
                f"{_f(head.get('internal_auc'))} vs external {_f(head.get('external_auc'))}, difference "
                f"{_f(head.get('difference'))} [{_f(ci[0])}, {_f(ci[1])}] — "
                f"{html.escape(str(head.get('verdict')))}. "
                f"Pooled grouped-CV AUC {_f((c.get('pooled') or {}).get('auc'))}; prevalence by site: "
                + html.escape(", ".join(f"{s} {v:.0%}" for s, v in (c.get("prevalence") or {}).items()))
                + "</p>"
            )
            parts.append(
                col.figure(
                    figures.cross_site_heatmap(c),
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
        parts.append(_table_html(frame, index=False))
        parts.append(
            col.figure(
                figures.background_figure(gathered["background"]),
                "background",
                "Balanced accuracy from blank background patches, 95 % CI, chance",
            )
        )
    else:
        parts.append("<p>Not in the store (see notes).</p>")
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
                    figures.distribution_figure(d),
                    f"distribution_{model}",
                    f"{model}: KS tests per PCA mode (strongest pair per attribute)",
                )
            )
    return "\n".join(parts)


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _provenance_html(prov: Mapping[str, Any]) -> str:
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
    return _table_html(facts) + _table_html(models, index=False)


def build_report(
    store_path: str | Path,
    out_dir: str | Path,
    *,
    target: str | None = None,
    run_missing: bool = True,
    seed: int = 0,
    probe_options: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
    """Write `report.html`, `report.json` and `figures/*.png` into ``out_dir``; return the JSON document."""
    store_path = Path(store_path)
    if not store_path.exists():
        raise EmbedxError(f"store {store_path} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    col = _Collector(out_dir)
    snap = _store_snapshot(store_path)
    gathered = _gather(
        store_path,
        snap,
        col,
        target=target,
        run_missing=run_missing,
        seed=seed,
        probe_options=probe_options or {},
        n_bootstrap=n_bootstrap,
    )
    snap = _store_snapshot(store_path) if run_missing else snap  # provenance after writes
    prov = _provenance(store_path, snap)
    sections = {
        "maps": _map_section(store_path, snap, col, seed),
        "probes": _probe_section(gathered["probes"], col),
        "fairness": _fairness_section(gathered["fairness"], col),
        "clusters": _cluster_section(gathered["clusters"], store_path, col),
        "controls": _controls_section(gathered, col),
        "provenance": _provenance_html(prov),
    }
    encoded = sorted({p["attribute"] for p in gathered["probes"] if p.get("encoded")})
    not_found = sorted(
        {p["attribute"] for p in gathered["probes"] if not p.get("encoded") and not p.get("skipped")}
        - set(encoded)
    )
    summary = (
        f"<p>{prov['n_samples']} samples, {prov['n_subjects']} subjects, models: "
        f"{html.escape(', '.join(snap['models']))}.</p>"
        f"<p><b>Encoded</b> (CI clear of chance after Holm, in at least one model): "
        f"{html.escape(', '.join(encoded) or 'none')}.<br><b>Not distinguishable from chance</b>: "
        f"{html.escape(', '.join(not_found) or 'none')}.</p>"
    )
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in col.notes) or "<li>none</li>"
    page = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(f"embedx report — {store_path.name}"),
        store=html.escape(str(store_path)),
        summary=summary,
        notes=notes_html,
        version=html.escape(__version__),
        date=html.escape(prov["date"]),
        **sections,
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    document = build_document(
        store_path,
        gathered["probes"],
        gathered["fairness"],
        target=gathered["target"],
        clusters=[_compact_clusters(c) for c in gathered["clusters"].values()],
        controls={
            "cross_site": gathered["cross_site"],
            "background": gathered["background"],
            "distribution": [
                {k: v for k, v in d.items() if k != "tests"}
                | {"tests": [t for t in d.get("tests", []) if t.get("significant")]}
                for d in gathered["distribution"].values()
            ],
        },
        provenance=prov,
        figures=col.figures,
        notes=col.notes,
        html="report.html",
        schema="docs/report.md (report.json schema 1)",
        report_schema_version=1,
    )
    write_json(document, out_dir / "report.json")
    return document
