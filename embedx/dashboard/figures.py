"""Plotly figure builders for the explorer's charts (no Streamlit), so figure shape is testable on its own.

The map itself is not a Plotly figure: it is embedx's canvas (`map_payload` / `map_canvas`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Alphabet
MISSING_COLOUR = "#b0b0b0"


def probe_bars(probes: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Probe score per attribute and model with CI error bars and a chance marker per attribute."""
    figure = go.Figure()
    models = sorted({str(p["model"]) for p in probes})
    for index, model in enumerate(models):
        mine = [p for p in probes if str(p["model"]) == model]
        scores = [float(p["score"]) for p in mine]
        lows = [float(p["score"]) - float((p.get("ci") or [p["score"]] * 2)[0]) for p in mine]
        highs = [float((p.get("ci") or [p["score"]] * 2)[1]) - float(p["score"]) for p in mine]
        figure.add_bar(
            name=model,
            x=[str(p["attribute"]) for p in mine],
            y=scores,
            marker_color=PALETTE[index],
            error_y={"type": "data", "symmetric": False, "array": highs, "arrayminus": lows},
        )
    chance = {str(p["attribute"]): p.get("chance") for p in probes if p.get("chance") is not None}
    figure.add_scatter(
        name="chance",
        x=list(chance),
        y=[float(v) for v in chance.values()],
        mode="markers",
        marker={"symbol": "line-ew-open", "size": 40, "color": "black", "line": {"width": 2}},
    )
    figure.update_layout(
        barmode="group",
        height=380,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis_title="score (MAE for continuous)",
    )
    return figure


def heatmap(
    matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str, zlabel: str
) -> go.Figure:
    """An annotated heatmap, e.g. the train-site × test-site matrix of the cross-site control."""
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(columns),
            y=list(rows),
            colorscale="Blues",
            colorbar={"title": {"text": zlabel}},
            text=np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.2f}")(np.asarray(matrix, dtype=float)),
            texttemplate="%{text}",
        )
    )
    figure.update_layout(
        title=title,
        height=380,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis_title="tested on",
        yaxis_autorange="reversed",  # diagonal (internal scores) from top left to bottom right
        yaxis_title="trained on",
    )
    return figure


def group_metric_bars(table: pd.DataFrame, metric: str) -> go.Figure:
    """One metric per group with its CI (columns `<metric> lo` / `<metric> hi` when present)."""
    error = None
    if f"{metric} lo" in table and f"{metric} hi" in table:
        error = {
            "type": "data",
            "symmetric": False,
            "array": table[f"{metric} hi"] - table[metric],
            "arrayminus": table[metric] - table[f"{metric} lo"],
        }
    figure = go.Figure(go.Bar(x=table["group"], y=table[metric], error_y=error, marker_color=PALETTE[0]))
    figure.update_layout(height=300, margin={"l": 10, "r": 10, "t": 30, "b": 10}, title=metric)
    return figure


def calibration_lines(result: Mapping[str, Any]) -> go.Figure:
    """Power of the audit against planted effect, one line per prevalence, Wilson CIs as error bars."""
    figure = go.Figure()
    binary = [r for r in result.get("power", []) if r["kind"] == "binary"]
    for index, prevalence in enumerate(sorted({r["prevalence"] for r in binary})):
        rows = sorted((r for r in binary if r["prevalence"] == prevalence), key=lambda r: r["effect"])
        figure.add_scatter(
            name=f"prevalence {prevalence:.0%}",
            x=[r["effect"] for r in rows],
            y=[r["power"] for r in rows],
            mode="lines+markers",
            marker_color=PALETTE[index % len(PALETTE)],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [r["ci"][1] - r["power"] for r in rows],
                "arrayminus": [r["power"] - r["ci"][0] for r in rows],
            },
        )
    figure.add_hline(y=float(result.get("alpha", 0.05)), line_dash="dash", line_color="black")
    figure.update_layout(
        height=340,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis_title="planted effect (Cohen's d along a random latent direction)",
        yaxis_title=f"found (p < alpha / {result.get('family_size', 1)})",
        yaxis_range=[-0.02, 1.02],
    )
    return figure
