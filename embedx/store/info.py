"""`embedx store info`: what a store holds, as a dict (for `--json`) and as rich tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embedx.data.manifest import subjects_per_value
from embedx.store.h5io import _format_category
from embedx.store.h5store import Store
from embedx.store.identity import cohort_counts, duplicate_rows


def store_summary(path: str | Path) -> dict[str, Any]:
    with Store.open(path) as store:
        root = store.info
        summary: dict[str, Any] = {
            "path": str(path),
            "schema_version": root.get("schema_version"),
            "embedx_version": root.get("embedx_version"),
            "created": root.get("created"),
            "samples": store.n,
            "subjects": len(set(store.subject_ids.tolist()) - {""}),
            "thumbnails": int(store.has_thumbnail().sum()),
            "cohorts": cohort_counts(store),
            "duplicate_images": duplicate_rows(store),
            "models": [],
            "attributes": [],
            "projections": [],
            "analyses": {k: len(v) for k, v in store.analyses().items()},
        }
        for model in store.models():
            info = store.embedding_info(model)
            summary["models"].append({
                "name": model, "kind": info.get("kind", ""), "dim": info["dim"], "encoded": info["n_encoded"],
                "failed": int(info.get("n_failed", 0)), "stochastic": info["stochastic"],
                "date": info.get("date_finished", info.get("date", "")),
                "checkpoint": str(info.get("checkpoint_hash", ""))[:12],
            })
        frame = store.attributes()
        subjects = pd.Series(np.asarray(store.subject_ids).astype(str), index=frame.index)
        for name, spec in store.schema().items():
            column = frame[name]
            missing = column.isna()
            entry: dict[str, Any] = {"name": name, "kind": spec.kind, "role": spec.role,
                                     "inferred": spec.inferred, "missing": int(missing.sum()),
                                     "missing_subjects": int(subjects[missing].nunique())}
            present = column.dropna()
            if spec.kind == "continuous" and len(present):
                values = present.to_numpy(dtype=float)
                entry["summary"] = f"mean {values.mean():.3g}, range {values.min():.3g}..{values.max():.3g}"
            else:
                entry["summary"] = subjects_per_value(present.map(_format_category), subjects[present.index])
            summary["attributes"].append(entry)
        for model, methods in store.projections().items():
            for method in methods:
                pinfo = store.projection_info(model, method)
                status = store.projection_status(model, method)
                trust = pinfo.get("trustworthiness")
                summary["projections"].append({
                    "model": model, "method": method, "params": pinfo.get("params", {}),
                    "trustworthiness": None if trust is None or np.isnan(trust) else float(trust),
                    "fitted": int((status == 1).sum()), "transformed": int((status == 2).sum()),
                    "library": f"{pinfo.get('library', '')} {pinfo.get('library_version', '')}".strip(),
                })
    return summary


def render_info(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    out.print(f"[bold]{summary['path']}[/]  schema v{summary['schema_version']}, embedx "
              f"{summary['embedx_version']}, created {summary['created']}")
    out.print(f"{summary['samples']} samples, {summary['subjects']} subjects, "
              f"{summary['thumbnails']} thumbnails")
    named = {k: v for k, v in summary["cohorts"].items() if k}
    if named:
        out.print("cohorts: " + ", ".join(f"{k or '(unnamed)'} {v}" for k, v in summary["cohorts"].items()))
    if summary["duplicate_images"]:
        out.print(f"[yellow]{summary['duplicate_images']} rows hold an image that another row also holds "
                  "(same file content under another path)[/]")
    models = Table(title="models")
    for col in ("name", "kind", "dim", "encoded", "failed", "date", "checkpoint"):
        models.add_column(col)
    for m in summary["models"]:
        models.add_row(m["name"], m["kind"], str(m["dim"]), f"{m['encoded']}/{summary['samples']}",
                       str(m["failed"]), str(m["date"]), m["checkpoint"])
    out.print(models)
    attrs = Table(title="attributes")
    for col in ("name", "kind", "role", "missing: subjects (images)", "values: subjects (images)"):
        attrs.add_column(col)
    for a in summary["attributes"]:
        kind = a["kind"] + (" (inferred)" if a["inferred"] else "")
        missing = f"{a.get('missing_subjects', '?')} ({a['missing']})" if a["missing"] else "0"
        attrs.add_row(a["name"], kind, a["role"], missing, a["summary"])
    out.print(attrs)
    if summary["projections"]:
        proj = Table(title="projections")
        columns = ("model", "method", "fitted", "transformed", "trustworthiness (k=10)", "params", "library")
        for col in columns:
            proj.add_column(col)
        for p in summary["projections"]:
            trust = "-" if p["trustworthiness"] is None else f"{p['trustworthiness']:.3f}"
            params = ", ".join(f"{k}={v}" for k, v in p["params"].items())
            proj.add_row(p["model"], p["method"], str(p["fitted"]), str(p["transformed"]), trust, params,
                         p["library"])
        out.print(proj)
    else:
        out.print("projections: none (run `embedx project`)")
    if summary["analyses"]:
        out.print("analyses: " + ", ".join(f"{k} ({n})" for k, n in summary["analyses"].items()))
    else:
        out.print("analyses: none")
