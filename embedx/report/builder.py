"""`embedx report`: one self-contained HTML page, `report.json` and the PNG figures for a store.

The report reads the analyses already in the store and runs the missing ones with their defaults
(`embedx.report.gather`); each section of the page is drawn by `embedx.report.sections` (the clusters by
`embedx.report.cluster_section`). The schema of `report.json` is documented in docs/report.md. Figures:
matplotlib Agg, written as PNG files beside the HTML and embedded in it as base64 data URIs (the HTML needs
no other file, CSS or script).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from embedx._version import __version__
from embedx.analysis.results import build_document, write_json
from embedx.errors import EmbedxError
from embedx.report import sections
from embedx.report.cluster_section import cluster_section
from embedx.report.gather import gather, pick_site, pick_target, provenance, store_snapshot

if TYPE_CHECKING:
    from embedx.analysis.calibration import CalibrationSettings

log = logging.getLogger(__name__)

__all__ = ["build_report", "pick_site", "pick_target"]

TEMPLATE = Path(__file__).with_name("template.html")


def build_report(
    store_path: str | Path,
    out_dir: str | Path,
    *,
    target: str | None = None,
    run_missing: bool = True,
    seed: int = 0,
    probe_options: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    calibration: CalibrationSettings | None = None,
) -> dict[str, Any]:
    """Write `report.html`, `report.json` and `figures/*.png` into ``out_dir``; return the JSON document.

    `calibration` (a `CalibrationSettings`) sizes the calibration run for a model that has none stored;
    None runs `embedx calibrate`'s defaults.
    """
    store_path = Path(store_path)
    if not store_path.exists():
        raise EmbedxError(f"store {store_path} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    col = sections.Collector(out_dir)
    snap = store_snapshot(store_path)
    gathered = gather(
        store_path,
        snap,
        col,
        target=target,
        run_missing=run_missing,
        seed=seed,
        probe_options=probe_options or {},
        n_bootstrap=n_bootstrap,
        calibration_settings=calibration,
    )
    snap = store_snapshot(store_path) if run_missing else snap  # provenance after writes
    prov = provenance(store_path, snap)
    parts = {
        "maps": sections.map_section(store_path, snap, col, seed),
        "probes": sections.probe_section(gathered["probes"], col),
        "reference": sections.reference_section(gathered["reference"]),
        "calibration": sections.calibration_section(gathered["calibration"], col),
        "fairness": sections.fairness_section(gathered["fairness"], col),
        "clusters": cluster_section(gathered["clusters"], store_path, col),
        "controls": sections.controls_section(gathered, col),
        "provenance": sections.provenance_html(prov),
    }
    summary = (
        f"<p>{prov['n_samples']} samples, {prov['n_subjects']} subjects, models: "
        f"{html.escape(', '.join(snap['models']))}.</p>" + summary_html(gathered["probes"])
    )
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in col.notes) or "<li>none</li>"
    page = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(f"embedx report — {store_path.name}"),
        store=html.escape(store_path.name),  # the file, not its folder: folders may name people
        summary=summary,
        notes=notes_html,
        version=html.escape(__version__),
        date=html.escape(prov["date"]),
        **parts,
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    document = build_document(
        store_path.name,
        gathered["probes"],
        gathered["fairness"],
        target=gathered["target"],
        clusters=[sections.compact_clusters(c) for c in gathered["clusters"].values()],
        calibration=list(gathered["calibration"].values()),
        reference=gathered["reference"],
        controls={
            "cross_site": gathered["cross_site"],
            "background": gathered["background"],
            "shift": [{k: v for k, v in r.items() if k != "results"} for r in gathered.get("shift", [])],
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


def verdict_groups(probes: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Attributes by what the report can say of them: encoded in at least one model; otherwise without a
    verdict in some model (too few permutations, labels that cannot be permuted, no CI), which is not a
    finding of chance; otherwise not distinguishable from chance; or skipped in every model."""
    by_attribute: dict[str, list[dict[str, Any]]] = {}
    for p in probes:
        by_attribute.setdefault(str(p["attribute"]), []).append(p)
    groups: dict[str, list[str]] = {"encoded": [], "no verdict": [], "chance": [], "skipped": []}
    for name, results in sorted(by_attribute.items()):
        tested = [p for p in results if not p.get("skipped")]
        if any(p.get("encoded") for p in tested):
            groups["encoded"].append(name)
        elif not tested:
            groups["skipped"].append(name)
        elif any(str(p.get("verdict", "")).startswith(("no verdict", "untestable")) for p in tested):
            groups["no verdict"].append(name)
        else:
            groups["chance"].append(name)
    return groups


def summary_html(probes: list[dict[str, Any]]) -> str:
    groups = verdict_groups(probes)
    lines = [
        ("Encoded", "CI clear of chance after Holm, in at least one model", groups["encoded"]),
        ("Not distinguishable from chance", "in every model", groups["chance"]),
        ("No verdict", "see each probe's verdict", groups["no verdict"]),
        ("Not probed", "skipped in every model: see why in the table", groups["skipped"]),
    ]
    shown = [
        f"<b>{title}</b> ({html.escape(why)}): {html.escape(', '.join(names) or 'none')}."
        for title, why, names in lines
        if names or title in ("Encoded", "Not distinguishable from chance")
    ]
    return "<p>" + "<br>".join(shown) + "</p>"
