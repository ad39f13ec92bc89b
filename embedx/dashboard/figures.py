"""Plotly figure builders for the explorer (no Streamlit), so figure shape is testable on its own.

Every scatter point carries its global store row id in `customdata`; the pages read selections back
through `shaping.selected_row_ids`, never through per-trace point indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from embedx.dashboard.density import DensityImage
from embedx.dashboard.shaping import MISSING_LABEL, category_labels, trace_positions

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Alphabet
MISSING_COLOUR = "#b0b0b0"
HOVER = "row %{customdata}<br>%{text}<extra></extra>"
HOVER_BARE = "row %{customdata}<extra>%{fullData.name}</extra>"


def _marker_size(n: int) -> float:
    return 7.0 if n < 2_000 else 5.0 if n < 20_000 else 3.0 if n < 100_000 else 2.0


def map_figure(
    xy: np.ndarray,
    rows: np.ndarray,
    colour: pd.Series | None,
    categorical: bool,
    hover: np.ndarray | None,
    selected: np.ndarray | None = None,
    highlight: np.ndarray | None = None,
    title: str = "",
    height: int = 560,
    density: DensityImage | None = None,
) -> go.Figure:
    """A WebGL scatter of `rows` (global ids) at `xy[rows]`, coloured by `colour` (aligned with store rows).

    Categorical colour: one trace per value (legend toggles a category), missing values grey.
    Continuous colour: one trace on a Viridis scale with a colour bar, missing values a grey trace.
    `selected` (row ids) is drawn as Plotly's selection so a kept selection survives a recolour;
    `highlight` (row ids, e.g. a cluster) is outlined on top. `hover` (one line per store row) is what a
    point shows on hover besides its row id; None shows only the id and the colour value (the trace
    name), which keeps a 200k-point figure's JSON to a few MB. `density` (the image of every row, when `rows`
    is a sample of them) is drawn beneath the points, and the axes span it.
    """
    rows = np.asarray(rows, dtype=np.int64)
    selected = np.asarray(selected if selected is not None else [], dtype=np.int64)
    size = _marker_size(len(rows))
    traces: list[go.Scattergl] = []

    def add(name: str, members: np.ndarray, marker: dict[str, Any], showlegend: bool = True) -> None:
        trace = go.Scattergl(
            x=xy[members, 0],
            y=xy[members, 1],
            mode="markers",
            name=name,
            customdata=members,
            text=None if hover is None else hover[members],
            hovertemplate=HOVER_BARE if hover is None else HOVER,
            marker=marker,
            showlegend=showlegend,
        )
        if len(selected):
            trace.selectedpoints = trace_positions(members, selected)
            trace.unselected = {"marker": {"opacity": 0.15}}
        traces.append(trace)

    if colour is None:
        add("all", rows, {"size": size, "color": PALETTE[0]}, showlegend=False)
    elif categorical:
        labels = category_labels(colour).to_numpy()[rows]
        values = sorted(pd.unique(labels), key=lambda v: (v == MISSING_LABEL, v))
        for index, value in enumerate(values):
            members = rows[labels == value]
            tint = MISSING_COLOUR if value == MISSING_LABEL else PALETTE[index % len(PALETTE)]
            add(f"{value} ({len(members)})", members, {"size": size, "color": tint})
    else:
        values = colour.to_numpy(dtype=float)[rows]
        present = ~np.isnan(values)
        add(
            str(colour.name),
            rows[present],
            {
                "size": size,
                "color": values[present],
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": str(colour.name)}, "thickness": 12},
            },
            showlegend=False,
        )
        if (~present).any():
            add(MISSING_LABEL, rows[~present], {"size": size, "color": MISSING_COLOUR})

    if highlight is not None and len(highlight):
        highlight = np.asarray(highlight, dtype=np.int64)
        traces.append(
            go.Scattergl(
                x=xy[highlight, 0],
                y=xy[highlight, 1],
                mode="markers",
                name=f"highlight ({len(highlight)})",
                customdata=highlight,
                text=None if hover is None else hover[highlight],
                hovertemplate=HOVER_BARE if hover is None else HOVER,
                marker={"size": size + 4, "color": "rgba(0,0,0,0)", "line": {"color": "black", "width": 1.5}},
            )
        )

    figure = go.Figure(traces)
    figure.update_layout(
        title=title or None,
        height=height,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        dragmode="lasso",
        legend={"itemsizing": "constant"},
        uirevision="map",
        xaxis={"showticklabels": False, "title": None},
        yaxis={"showticklabels": False, "title": None},
    )
    if density is not None:
        x0, x1, y0, y1 = density.extent
        figure.add_layout_image(source=density.url, xref="x", yref="y", x=x0, y=y1, sizex=x1 - x0,
                                sizey=y1 - y0, sizing="stretch", layer="below", name="density")
        figure.update_xaxes(range=[x0, x1])
        figure.update_yaxes(range=[y0, y1])
    return figure


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
