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


def _ci_err(values: Sequence[float | None], cis: Sequence[Sequence[float | None]]) -> np.ndarray:
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
                err = _ci_err([p["score"]], [p.get("ci") or [None, None]])
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
            labels.append(f"{g} (n={entry.get('n', '?')}{', small' if small[-1] else ''})")
        x = np.arange(len(names))
        shown = np.nan_to_num(values)
        err = _ci_err([v if np.isfinite(v) else 0.0 for v in values], cis)
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
        f"(DP diff {_num(result.get('demographic_parity_difference'))}, "
        f"EO diff {_num(result.get('equalized_odds_difference'))}; grey: too small to judge)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def cross_site_heatmap(result: Mapping[str, Any]) -> Figure:
    """AUC matrix (rows trained on, columns tested on) with CIs in the cells, plus the pooled row."""
    sites = list(result["sites"])
    matrix = np.array([[np.nan if v is None else v for v in row] for row in result["matrix"]], dtype=float)
    pooled = result.get("pooled", {}).get("by_site", {})
    full = np.vstack(
        [matrix, [[np.nan if pooled.get(s, {}).get("auc") is None else pooled[s]["auc"] for s in sites]]]
    )
    cis = [list(row) for row in result.get("matrix_ci", [])] + [[pooled.get(s, {}).get("ci") for s in sites]]
    fig, ax = plt.subplots(figsize=(1.3 * len(sites) + 3, 1.0 * (len(sites) + 1) + 1.8))
    im = ax.imshow(full, cmap="RdYlGn", vmin=0.4, vmax=1.0)
    for i in range(full.shape[0]):
        for j in range(full.shape[1]):
            if not np.isfinite(full[i, j]):
                continue
            ci = cis[i][j] if i < len(cis) and j < len(cis[i]) else None
            text = f"{full[i, j]:.2f}"
            if ci and ci[0] is not None:
                text += f"\n[{ci[0]:.2f}, {ci[1]:.2f}]"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, fontweight="bold" if i == j else "normal"
            )
    ax.set_xticks(range(len(sites)))
    ax.set_xticklabels(sites)
    ax.set_yticks(range(len(sites) + 1))
    ax.set_yticklabels([*sites, "pooled (CV)"])
    ax.set_xlabel(f"tested on ({result.get('site')})")
    ax.set_ylabel("trained on")
    ax.axhline(len(sites) - 0.5, color="white", linewidth=3)
    fig.colorbar(im, ax=ax, label="AUC", shrink=0.8)
    head = result.get("internal_vs_external") or {}
    ci = head.get("ci") or [None, None]
    subtitle = ""
    if head.get("difference") is not None:
        subtitle = (
            f"\nleave-one-site-out: internal {head['internal_auc']:.2f} vs external "
            f"{head['external_auc']:.2f}, Δ {head['difference']:.2f}"
            + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] is not None else "")
        )
    ax.set_title(
        f"{result.get('target')}: train on one {result.get('site')}, test on another{subtitle}", fontsize=9
    )
    fig.tight_layout()
    return fig


def background_figure(results: Sequence[Mapping[str, Any]]) -> Figure:
    """Balanced accuracy from blank background patches per attribute, CI and chance."""
    fig, ax = plt.subplots(figsize=(1.6 * max(len(results), 2) + 2, 3.4))
    x = np.arange(len(results))
    scores = [r["score"] for r in results]
    err = _ci_err(scores, [r.get("ci") or [None, None] for r in results])
    colours = ["#c44e52" if r.get("encoded") else "#8c8c8c" for r in results]
    ax.bar(x, scores, 0.6, color=colours, yerr=err, capsize=4)
    for xi, r in zip(x, results, strict=True):
        ax.hlines(r["chance"], xi - 0.35, xi + 0.35, colors="black", linestyles="--")
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{r['attribute']}\n{r.get('patch', '?')} px, n={r['n']}" for r in results], fontsize=8
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("balanced accuracy")
    ax.set_title("Background-patch control (red: readable from blank background; dashed: chance)", fontsize=9)
    fig.tight_layout()
    return fig


def distribution_figure(result: Mapping[str, Any]) -> Figure:
    """-log10 q of the strongest pair per attribute x PCA mode (BY-corrected KS tests)."""
    tests = result.get("tests") or []
    attrs = list(dict.fromkeys(t["attribute"] for t in tests))
    k = int(result.get("n_modes", 0))
    grid = np.zeros((max(len(attrs), 1), max(k, 1)))
    for t in tests:
        q = t.get("q_value")
        if q is None:
            continue
        i, j = attrs.index(t["attribute"]), t["mode"] - 1
        grid[i, j] = max(grid[i, j], -np.log10(max(q, 1e-300)))
    fig, ax = plt.subplots(figsize=(0.55 * max(k, 1) + 3, 0.45 * max(len(attrs), 1) + 1.6))
    im = ax.imshow(np.minimum(grid, 20), cmap="magma_r", aspect="auto", vmin=0)
    ax.set_xticks(range(k))
    ax.set_xticklabels([str(m + 1) for m in range(k)])
    ax.set_yticks(range(len(attrs)))
    ax.set_yticklabels(attrs)
    ax.set_xlabel("PCA mode")
    threshold = -np.log10(result.get("alpha", 0.05))
    for i in range(len(attrs)):
        for j in range(k):
            if grid[i, j] > threshold:
                ax.text(j, i, "●", ha="center", va="center", color="white", fontsize=7)
    fig.colorbar(im, ax=ax, label="-log10 q (strongest pair, capped at 20)")
    ax.set_title(
        f"KS tests per PCA mode ({result.get('model')}; ● q < {result.get('alpha', 0.05)})", fontsize=9
    )
    fig.tight_layout()
    return fig


def cluster_montage(grid: Sequence[Sequence[np.ndarray]], names: Sequence[str], per_row: int = 6) -> Figure:
    """One row per cluster: its representatives' 64x64 thumbnails, the cluster's name on the left."""
    n_rows = max(len(grid), 1)
    fig, axes = plt.subplots(n_rows, per_row, figsize=(1.3 * per_row + 3.5, 1.35 * n_rows), squeeze=False)
    for i, (thumbs, name) in enumerate(zip(grid, names, strict=True)):
        for j in range(per_row):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(thumbs):
                ax.imshow(thumbs[j], cmap="gray", vmin=0, vmax=255)
            else:
                ax.axis("off")
        label = "\n".join(part if len(part) <= 44 else part[:43] + "…" for part in name.split(" · "))
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def shift_figure(result: Mapping[str, Any], metric: str = "auroc") -> Figure:
    """One heatmap per difficulty tier: rows trained on, columns tested on, mean ± sd over replicates."""
    tiers, train_groups = list(result["tiers"]), list(result["train_groups"])
    cells = {(r["tier"], r["train"], r["test"]): r for r in result["summary"]}
    fig, axes = plt.subplots(1, len(tiers), figsize=(1.2 * len(train_groups) * len(tiers) + 2.5,
                                                      0.8 * len(train_groups) + 2.2), squeeze=False,
                             layout="constrained")
    im = None
    for ax, tier in zip(axes[0], tiers, strict=True):
        grid = np.full((len(train_groups), len(train_groups)), np.nan)
        for i, train in enumerate(train_groups):
            for j, test in enumerate(train_groups):
                cell = cells.get((tier, train, test))
                if cell is None or cell.get(f"{metric}_mean") is None:
                    continue
                grid[i, j] = cell[f"{metric}_mean"]
                sd = cell.get(f"{metric}_sd")
                ax.text(j, i, f"{grid[i, j]:.2f}" + (f"\n±{sd:.2f}" if sd else ""), ha="center", va="center",
                        fontsize=8, fontweight="bold" if train == test else "normal")
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0.5, vmax=1.0)
        ax.set_xticks(range(len(train_groups)))
        ax.set_xticklabels(train_groups, rotation=30, ha="right")
        ax.set_yticks(range(len(train_groups)))
        ax.set_yticklabels(train_groups if ax is axes[0][0] else [])
        ax.axhline(len(train_groups) - 1.5, color="white", linewidth=3)
        ax.axvline(len(train_groups) - 1.5, color="white", linewidth=3)
        ax.set_title(f"{tier} lesions" if tier != "all" else "all positives", fontsize=9)
        ax.set_xlabel(f"tested on ({result['by']})")
    axes[0][0].set_ylabel("trained on")
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), label=metric.upper() if metric == "auroc" else metric, shrink=0.8)
    reps = result["settings"]["replicates"]
    fig.suptitle(f"{result['target']} detector: train on one {result['by']}, test on each "
                 f"(mean ± sd of {reps} replicate{'s' if reps > 1 else ''})", fontsize=10)
    return fig
