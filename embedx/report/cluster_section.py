"""The report's cluster section: per model, whether the latents have cluster structure at all, then a table
of clusters with what they share and a montage of the samples nearest each centre.

Two things here keep the table from reading as more than it is. k-means partitions any cloud, so the header
says when its solution did not beat Gaussian clouds of the latents' covariance (the groups are then slices,
not islands; `embedx.analysis.cluster_structure`). And an attribute's Cramér's V is shown only when that
attribute's test of association with the cluster passes Benjamini-Hochberg across all clusters x attributes
(``attribute_q``): in cohorts with no effect at all the ungated top V had a median of 0.20 and read like a
finding.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from embedx.analysis.cluster_structure import structure_sentence
from embedx.report import figures
from embedx.report.sections import Collector, table_html

V_COLUMN = "associated attributes (Cramér's V on subjects, |r| if continuous; where q < α)"


def associated_attributes(cluster: Mapping[str, Any], alpha: float, limit: int = 2) -> str:
    """The (at most ``limit``) attributes whose association with the cluster passes BH, strongest V first;
    'none' when none does, '–' for a result written before `attribute_q` existed (nothing to gate on)."""
    attributes = cluster.get("attributes") or []
    if attributes and not any("attribute_q" in a for a in attributes):
        return "–"
    passed = [
        a
        for a in attributes
        if a.get("cramers_v") is not None and a.get("attribute_q") is not None and a["attribute_q"] < alpha
    ]
    passed.sort(key=lambda a: -a["cramers_v"])
    return ", ".join(f"{a['attribute']} {a['cramers_v']:.2f}" for a in passed[:limit]) or "none"


def cluster_montage(store_path: Path, payload: Mapping[str, Any], col: Collector) -> str:
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


def _structure_html(payload: Mapping[str, Any]) -> str:
    """The structure verdict under the model's heading (nothing for HDBSCAN, whose clusters are density
    modes; a pointer to rerun for a result written before the test existed)."""
    sentence = structure_sentence(payload)
    if sentence is not None:
        bold = not payload.get("structure")
        return f"<p>{'<b>' if bold else ''}{html.escape(sentence)}{'</b>' if bold else ''}</p>"
    if payload.get("method") == "kmeans" and payload.get("structure_test") is None:
        return (
            "<p>Not compared with a Gaussian cloud (clusters written by an older embedx): rerun "
            "<code>embedx clusters</code> to learn whether these groups are more than slices of one "
            "cloud.</p>"
        )
    return ""


def cluster_section(
    clusters: Mapping[str, Mapping[str, Any]], store_path: Path | None = None, col: Collector | None = None
) -> str:
    """Per model: heading, structure verdict, the clusters table and (with a store) the montage."""
    if not clusters:
        return "<p>No clusters.</p>"
    parts = []
    for model, payload in clusters.items():
        alpha = float((payload.get("params") or {}).get("alpha", 0.05))
        rows = []
        for c in payload.get("clusters", []):
            top = c.get("enriched") or []
            rows.append(
                {
                    "cluster": c["id"],
                    "name": c["name"],
                    "size": c["size"],
                    "share": f"{100 * c['fraction']:.1f} %",
                    V_COLUMN.replace("α", f"{alpha:g}"): associated_attributes(c, alpha),
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
            f"{payload.get('n_clusters')} {'groups' if payload.get('structure') is False else 'clusters'}"
            + (f", silhouette {sil:.2f}" if sil is not None else "")
            + "</h3>"
            + _structure_html(payload)
            + table_html(pd.DataFrame(rows), index=False)
        )
        if store_path is not None and col is not None:
            parts.append(cluster_montage(store_path, payload, col))
    return "\n".join(parts)
