"""The report's figures, drawn with matplotlib's Agg backend (no display, same PNG on every machine).

Each function takes result dicts (the JSON shapes of `embedx.analysis.results` and the controls) and
returns a Figure; `png_bytes` renders it. Figures are sized to read at 100 % in a browser and keep the
statistical content visible: CIs as error bars, chance as a line, n in the labels.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

MAX_LEGEND = 12  # categories beyond this are drawn but not listed (a legend of 40 sites helps nobody)
POINTS_MAX = 50_000  # maps subsample above this (evenly, seeded) so a PNG stays small and legible
MONTAGE_ROWS = 12  # clusters shown in the montage of representatives


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def ci_error_bars(values: Sequence[float | None], cis: Sequence[Sequence[float | None]]) -> np.ndarray:
    low = [
        v - c[0] if v is not None and c and c[0] is not None else 0.0
        for v, c in zip(values, cis, strict=True)
    ]
    high = [
        c[1] - v if v is not None and c and c[1] is not None else 0.0
        for v, c in zip(values, cis, strict=True)
    ]
    return np.clip(np.array([low, high], dtype=float), 0, None)


def maps_figure(
    coords: np.ndarray, attributes: pd.DataFrame, kinds: Mapping[str, str], title: str, seed: int = 0
) -> Figure:
    """One panel per attribute, the same 2-D map coloured by it (legend for categories, colorbar else)."""
    ok = np.isfinite(coords).all(axis=1)
    idx = np.flatnonzero(ok)
    if idx.size > POINTS_MAX:
        idx = np.sort(np.random.default_rng(seed).choice(idx, POINTS_MAX, replace=False))
    names = list(attributes.columns) or ["(none)"]
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    size = float(np.clip(3000 / max(idx.size, 1), 0.5, 12))
    for ax, name in zip(axes.flat, names, strict=False):
        ax.set_xticks([])
        ax.set_yticks([])
        if name not in attributes.columns:
            ax.scatter(coords[idx, 0], coords[idx, 1], s=size, c="0.4", linewidths=0)
            continue
        values = attributes[name].iloc[idx]
        if kinds.get(name) == "continuous":
            v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            missing = ~np.isfinite(v)
            ax.scatter(coords[idx[missing], 0], coords[idx[missing], 1], s=size, c="0.85", linewidths=0)
            sc = ax.scatter(
                coords[idx[~missing], 0],
                coords[idx[~missing], 1],
                s=size,
                c=v[~missing],
                cmap="viridis",
                linewidths=0,
            )
            fig.colorbar(sc, ax=ax, shrink=0.8)
        else:
            labels = values.map(lambda x: "missing" if pd.isna(x) else _fmt(x)).to_numpy()
            cats = sorted(set(labels) - {"missing"}) + (["missing"] if "missing" in labels else [])
            cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
            for i, cat in enumerate(cats):
                sel = labels == cat
                colour = "0.85" if cat == "missing" else cmap(i % cmap.N)
                ax.scatter(
                    coords[idx[sel], 0],
                    coords[idx[sel], 1],
                    s=size,
                    color=colour,
                    linewidths=0,
                    label=f"{cat} ({int(sel.sum())})",
                )
            if len(cats) <= MAX_LEGEND:
                ax.legend(fontsize=7, markerscale=max(1.0, 12 / size) ** 0.5, loc="best", frameon=False)
        ax.set_title(name, fontsize=10)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def probe_bars(probes: Sequence[Mapping[str, Any]]) -> Figure:
    """Grouped bars per attribute (one bar per model) with 95 % CI and a chance tick per bar.

    Classification probes (balanced accuracy, higher is better) and continuous ones (MAE, lower is better)
    sit in separate panels since their scales differ; encoded results are drawn solid, the rest hatched.
    """
    usable = [p for p in probes if p.get("score") is not None and not p.get("skipped")]
    panels = [
        ("balanced_accuracy", "balanced accuracy (higher = more encoded)"),
        ("mae", "MAE (lower = more encoded)"),
    ]
    present = [(m, label) for m, label in panels if any(p["metric"] == m for p in usable)] or [panels[0]]
    fig, axes = plt.subplots(
        1,
        len(present),
        figsize=(min(18.0, max(6.0, 0.45 * len(usable) + 2)), 4.2),  # ~0.45 in per bar, readable when printed
        squeeze=False,
        gridspec_kw={"width_ratios": [max(1, sum(p["metric"] == m for p in usable)) for m, _ in present]},
    )
    models = sorted({p["model"] for p in usable}) or ["-"]
    cmap = plt.get_cmap("tab10")
    width = 0.8 / len(models)
    for ax, (metric, label) in zip(axes[0], present, strict=True):
        rows = [p for p in usable if p["metric"] == metric]
        attrs = list(dict.fromkeys(p["attribute"] for p in rows))
        for mi, model in enumerate(models):
            for ai, attr in enumerate(attrs):
                match = [p for p in rows if p["model"] == model and p["attribute"] == attr]
                if not match:
                    continue
                p = match[0]
                x = ai - 0.4 + width * (mi + 0.5)
                err = ci_error_bars([p["score"]], [p.get("ci") or [None, None]])
                ax.bar(
                    x,
                    p["score"],
                    width * 0.9,
                    color=cmap(mi % 10),
                    yerr=err,
                    capsize=3,
                    hatch=None if p.get("encoded") else "//",
                    edgecolor="white" if p.get("encoded") else "0.3",
                    label=model if ai == 0 else None,
                )
                if p.get("chance") is not None:
                    ax.hlines(
                        p["chance"],
                        x - width / 2,
                        x + width / 2,
                        colors="black",
                        linestyles="--",
                        linewidth=1.2,
                    )
        ax.set_xticks(range(len(attrs)))
        ax.set_xticklabels(attrs, rotation=30, ha="right")
        ax.set_ylabel(label)
        if metric == "balanced_accuracy":
            ax.set_ylim(0, 1.05)
        ax.plot([], [], "k--", label="chance")
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle(
        "Probes per attribute (bars: 95 % CI; dashed: chance; hatched: not distinguishable from chance)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def fairness_figure(result: Mapping[str, Any], metrics: Sequence[str] = ("tpr", "fpr", "auc")) -> Figure:
    """One panel per metric: the value for every group of one sensitive attribute, with its CI and n.

    Groups marked too small to judge are drawn grey and hatched (shown with their n, never dropped); a
    metric that is undefined for a group (e.g. AUC with one class) is written "n/a" instead of a bar.
    """
    groups = result.get("by_group") or {}
    names = list(groups)
    panel_width = max(3.6, 0.45 * len(names) + 1.4)
    fig, axes = plt.subplots(1, len(metrics), figsize=(panel_width * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values, cis, labels, small = [], [], [], []
        for g in names:
            entry = groups[g] or {}
            value = entry.get(metric)
            ci = (entry.get("ci") or {}).get(metric) if isinstance(entry.get("ci"), Mapping) else None
            values.append(np.nan if value is None else float(value))
            cis.append(ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None])
            small.append(bool(entry.get("too_small")))
            count = (f"{entry['n_subjects']} subj." if entry.get("n_subjects") is not None  # the unit of
                     else f"n={entry.get('n', '?')}")  # every count and interval; older results: images
            labels.append(f"{g} ({count}{', small' if small[-1] else ''})")
        x = np.arange(len(names))
        shown = np.nan_to_num(values)
        err = ci_error_bars([v if np.isfinite(v) else 0.0 for v in values], cis)
        bars = ax.bar(x, shown, color=["0.7" if sm else "#4c72b0" for sm in small], yerr=err, capsize=3)
        for bar, sm, v in zip(bars, small, values, strict=True):
            if sm:
                bar.set_hatch("//")
            if not np.isfinite(v):
                ax.text(bar.get_x() + bar.get_width() / 2, 0.02, "n/a", ha="center", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(metric.upper(), fontsize=10)
    fig.suptitle(
        f"{result.get('target')} by {result.get('sensitive')}  "
        f"(DP diff {number_text(result.get('demographic_parity_difference'))}, "
        f"EO diff {number_text(result.get('equalized_odds_difference'))}; grey: too small to judge)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def number_text(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cluster_montage(grid: Sequence[Sequence[np.ndarray]], names: Sequence[str], per_row: int = 6) -> Figure:
    """One row per cluster: its representatives' thumbnails, the cluster's name on the left.

    The thumbnails are tiled into one grey image drawn by one `imshow`: a grid of 72 small axes took
    matplotlib ~4 s to lay out and draw, a sixth of the whole report.
    """
    n_rows = max(len(grid), 1)
    side = max((max(np.shape(t)[:2]) for row in grid for t in row[:per_row]), default=64)
    gap = max(2, side // 16)
    step = side + gap
    mosaic = np.full((n_rows * step - gap, per_row * step - gap), np.nan, dtype=np.float32)
    for i, row in enumerate(grid):
        for j, thumb in enumerate(row[:per_row]):
            image = np.asarray(thumb, dtype=np.float32)
            if image.ndim == 3:  # RGB(A) thumbnails are shown by their luminance, as the grey ones are
                image = image[..., :3].mean(axis=-1)
            h, w = image.shape
            mosaic[i * step : i * step + h, j * step : j * step + w] = image
    fig, ax = plt.subplots(figsize=(1.3 * per_row + 3.5, 1.35 * n_rows))
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    labels = ["\n".join(_cut(part, 44) for part in name.split(" · ")) for name in names]
    ax.set_yticks([i * step + side / 2 for i in range(len(labels))], labels, fontsize=8)
    ax.set_xticks([])
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout()
    return fig


def calibration_figure(results: Sequence[Mapping[str, Any]]) -> Figure:
    """Power of the audit per planted prevalence against effect size, one panel per model; FPR in title."""
    fig, axes = plt.subplots(
        1, max(1, len(results)), figsize=(4.8 * max(1, len(results)), 3.6), squeeze=False
    )
    for ax, result in zip(axes.flat, results, strict=False):
        binary = [r for r in result["power"] if r["kind"] == "binary"]
        for prevalence in sorted({r["prevalence"] for r in binary}):
            rows = sorted((r for r in binary if r["prevalence"] == prevalence), key=lambda r: r["effect"])
            x = [r["effect"] for r in rows]
            y = [r["power"] for r in rows]
            ax.errorbar(
                x,
                y,
                yerr=ci_error_bars(y, [r["ci"] for r in rows]),
                marker="o",
                capsize=3,
                label=f"prevalence {prevalence:.0%}",
            )
        fpr = result.get("false_positive_rate")
        ax.axhline(result["alpha"], color="black", linestyle="--", linewidth=0.8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("planted effect (Cohen's d along a random latent direction)")
        ax.set_ylabel(f"found (p < alpha / {result['family_size']})")
        ax.set_title(
            f"{result['model']}: false-positive rate {number_text(fpr)} "
            f"({result['n_null']} null labels; dashed: alpha)",
            fontsize=9,
        )
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
