"""The controls' figures: cross-site matrix, background patches, KS tests per mode, experiment shift.

Same conventions as `embedx.report.figures` (matplotlib Agg, CIs as error bars, chance as a line).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from embedx.report.figures import ci_error_bars

__all__ = ["background_figure", "cross_site_heatmap", "distribution_figure", "shift_figure"]


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
    err = ci_error_bars(scores, [r.get("ci") or [None, None] for r in results])
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


def shift_figure(result: Mapping[str, Any], metric: str = "auroc") -> Figure:
    """One heatmap per difficulty tier: rows trained on, columns tested on; mean ± sd over replicates and the
    95 % subject-bootstrap interval (training's spread is usually the smaller of the two)."""
    tiers, train_groups = list(result["tiers"]), list(result["train_groups"])
    cells = {(r["tier"], r["train"], r["test"]): r for r in result["summary"]}
    fig, axes = plt.subplots(
        1,
        len(tiers),
        figsize=(1.2 * len(train_groups) * len(tiers) + 2.5, 0.8 * len(train_groups) + 2.2),
        squeeze=False,
        layout="constrained",
    )
    im = None
    for ax, tier in zip(axes[0], tiers, strict=True):
        grid = np.full((len(train_groups), len(train_groups)), np.nan)
        for i, train in enumerate(train_groups):
            for j, test in enumerate(train_groups):
                cell = cells.get((tier, train, test))
                if cell is None or cell.get(f"{metric}_mean") is None:
                    continue
                grid[i, j] = cell[f"{metric}_mean"]
                sd, ci = cell.get(f"{metric}_sd"), cell.get(f"{metric}_ci")
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.2f}" + (f"±{sd:.2f}" if sd else "")
                    + (f"\n[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
                    ha="center",
                    va="center",
                    fontsize=7,
                    fontweight="bold" if train == test else "normal",
                )
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0.5 if metric == "auroc" else 0.0, vmax=1.0)
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
    model = "3-D U-Net" if result.get("task") == "segment" else (
        "3-D classifier" if result.get("dims") == 3 else "detector")
    fig.suptitle(
        f"{result['target']} {model}, {metric}: train on one {result['by']}, test on each "
        f"(mean ± sd of {reps} replicate{'s' if reps > 1 else ''}; [95 % CI over test subjects])",
        fontsize=10,
    )
    return fig
