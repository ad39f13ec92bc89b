"""What the terminal and the report print about results: rich tables, the Holm line, gap sentences.

The JSON shapes live in `embedx.analysis.results`; this module only formats them (the CLI prints these
tables to stdout, the report and the dashboard reuse `family_line` and `gap_summary`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from embedx.analysis.probe_result import verdict_text
from embedx.analysis.results import probe_table

__all__ = [
    "calibration_rich_table",
    "fairness_rich_table",
    "family_line",
    "gap_summary",
    "poster_rich_table",
    "probe_rich_table",
    "subjects_and_images",
    "terminal_console",
]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if abs(float(value)) < 1e-12:  # floating-point dust (a Wilson bound of 1.39e-17), not a small value
        value = 0.0
    return (
        f"{float(value):.{digits}g}"
        if abs(float(value)) < 1e-3 and value != 0
        else f"{float(value):.{digits}f}"
    )


def _fmt_ci(ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"


PILOT_SUBJECTS = 100


def family_line(results: Iterable[Mapping[str, Any]]) -> str:
    """The sentence printed under every probe table: how many tests Holm corrected for, with what."""
    results = [r for r in results if not r.get("skipped")]
    if not results:
        return "no probe was run (every one was skipped; see the reasons)"
    sizes = sorted({int(r.get("family_size") or 0) for r in results})
    perms = sorted({int((r.get("permutation") or {}).get("permutations") or 0) for r in results})
    alpha = results[0].get("alpha", 0.05)
    size = sizes[0] if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    line = (
        f"Holm over {size} test(s) at alpha {alpha:g} (the table above); p-values from "
        f"{'/'.join(map(str, perms))} subject permutations on label-free folds, p = (k + 1) / (P + 1)"
    )
    subjects = [int(r.get("n_subjects") or 0) for r in results]
    small = sorted(n for n in subjects if 0 < n < PILOT_SUBJECTS)
    # "not distinguishable" from a pilot is weak evidence of absence; a strata table's probes differ in size,
    # and naming the largest ("a pilot of 49") hid strata of 12
    if small and len(small) == len(subjects) and small[0] == small[-1]:
        line += f". A pilot of {small[0]} subjects finds only large effects"
    elif small:
        span = f"{small[0]}" if small[0] == small[-1] else f"{small[0]}-{small[-1]}"
        line += (
            f". {len(small)} of these {len(subjects)} probes rest on fewer than {PILOT_SUBJECTS} subjects "
            f"({span}) and find only large effects"
        )
    if small:
        line += ": `embedx calibrate STORE` measures the power of these tests on this cohort"
    return line


def class_separation_lines(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """For each encoded attribute of more than two classes, which classes its probe tells apart: the
    one-vs-rest AUC of every class, highest first ("site" encoded may mean one hospital, not all)."""
    lines = []
    for r in results:
        aucs = r.get("class_auc") or {}
        if r.get("encoded") and len(aucs) > 2:
            ranked = " · ".join(f"{name} {auc:.2f}" for name, auc in aucs.items())
            lines.append(f"{r.get('model')}/{r.get('attribute')}: {ranked}")
    return lines


CLASS_SEPARATION_TITLE = (
    "Which classes the probe tells apart (one-vs-rest AUC of the out-of-fold scores, 0.5 = not at all; "
    "descriptive, no test per class)"
)


def probe_rich_table(results: Iterable[Mapping[str, Any]], title: str = "Probes") -> Any:
    """One row per model x attribute: score [95 % CI], chance, Holm p, subjects (images) and the verdict;
    notes below."""
    from rich.table import Table

    results = list(results)
    table = Table(title=title, header_style="bold")
    n_column = "subjects (images)"  # subjects first: the unit of every fold, interval and permutation
    columns = ("model", "attribute", "metric", "score [95% CI]", "chance", "p (Holm)", n_column, "verdict")
    for column in columns:
        table.add_column(column, justify="right" if column in ("chance", "p (Holm)", n_column) else "left")
    for r in results:
        verdict = r.get("verdict") or verdict_text(bool(r.get("encoded")), r.get("skipped"))
        style = "green" if r.get("encoded") else ("yellow" if r.get("skipped") else "")
        extra = ""
        if r.get("normalized_encoding") is not None:
            extra = f" (E={_fmt(r['normalized_encoding'], 2)})"
        if r.get("correlation") is not None:  # what a continuous verdict is judged on
            extra += f" r {_fmt(r['correlation'], 2)}{_fmt_ci(r.get('correlation_ci'))}"
        table.add_row(
            str(r.get("model", "")) + (f" [{r['stratum']}]" if r.get("stratum") else ""),
            str(r["attribute"]),
            {"balanced_accuracy": "bal. acc", "mae": "MAE"}.get(
                str(r.get("metric")), str(r.get("metric", ""))
            ),
            ("-" if r.get("score") is None else _fmt(r["score"]) + _fmt_ci(r.get("ci"))) + extra,
            _fmt(r.get("chance")),
            _fmt(r.get("p_holm")),
            subjects_and_images(r, "n_subjects", "n"),
            f"[{style}]{verdict}[/]" if style else verdict,
        )
    captions = []
    notes = note_lines(results)
    if notes:
        captions.append("notes (also in the JSON): " + "; ".join(notes))
    separation = class_separation_lines(results)
    if separation:
        captions.append(CLASS_SEPARATION_TITLE + ": " + "; ".join(separation))
    if captions:
        table.caption = "\n".join(captions)
    return table


MAX_NOTES = 8
_FIRST_NOTES = ("left out of this probe", "merged into")  # a minority out of "not encoded" must be seen


def note_lines(results: Iterable[Mapping[str, Any]], limit: int = MAX_NOTES) -> list[str]:
    """The probes' notes for a caption: one line per distinct note with the probes it concerns, notes on
    classes left out or merged first, at most `limit` with a count of the rest (the JSON has them all).
    Listed alphabetically and cut at 8, a dropped minority class's note fell off the console."""
    results = list(results)
    where: dict[str, list[str]] = {}
    for r in results:
        for note in r.get("notes") or []:
            where.setdefault(str(note), []).append(f"{r.get('model')}/{r.get('attribute')}")
    ordered = sorted(where, key=lambda n: (not any(k in n for k in _FIRST_NOTES), n))
    lines = [f"{', '.join(dict.fromkeys(where[n]))}: {n}" for n in ordered]
    shown = lines[: max(limit, sum(any(k in n for k in _FIRST_NOTES) for n in ordered))]
    if len(shown) < len(lines):
        shown.append(f"{len(lines) - len(shown)} more note(s) in the JSON")
    return _without_vectors(results) + shown


def _without_vectors(results: list[Mapping[str, Any]]) -> list[str]:
    """One line per model with images that have no vector: they are in none of its probes, and the table's
    counts alone (781 (2684) beside a 2,734-image cohort) did not say why."""
    missing: dict[str, tuple[int, int]] = {}
    for r in results:
        total, encoded = r.get("n_total"), r.get("rows_encoded")
        if total is not None and encoded is not None and int(encoded) < int(total):
            missing[str(r.get("model"))] = (int(total) - int(encoded), int(total))
    return [f"{model}: {count} of {total} images have no vector (not encoded, or not in the imported file) "
            "and are in none of its probes" for model, (count, total) in missing.items()]


_GAP_LABELS = (
    ("demographic_parity_difference", "DP diff"),
    ("demographic_parity_ratio", "DP ratio"),
    ("equalized_odds_difference", "EO diff"),
    ("equal_opportunity_difference", "EOpp diff"),
    ("worst_group_auc", "worst-group AUC"),
    ("mae_difference", "MAE diff"),
)


FEW_GROUPS = "fewer than 2 groups large enough to compare"


def gap_summary(result: Mapping[str, Any]) -> str:
    """'DP diff 0.050 [-0.010, 0.110] (F - M), p 0.12; ...': each gap with its interval, pair and p-value."""
    gaps = result.get("gaps") or {}
    parts = []
    for key, label in _GAP_LABELS:
        if key not in gaps and result.get(key) is None:
            continue
        gap = gaps.get(key) or {}
        text = f"{label} {_fmt(result.get(key, gap.get('estimate')))}{_fmt_ci(gap.get('ci'))}"
        if gap.get("pair"):
            sign = " / " if key == "demographic_parity_ratio" else " - "
            text += f" ({sign.join(map(str, gap['pair']))})"
        if gap.get("p_value") is not None:
            text += f", p {_fmt(gap['p_value'])}"
            if gap.get("p_holm") is not None:
                text += f" (Holm over {gap.get('family_size')}: {_fmt(gap['p_holm'])})"
        parts.append(text)
    if result.get("kind") == "continuous" and result.get("worst_group"):
        parts.append(f"worst group {result['worst_group']}")
    return "; ".join(parts) or f"gaps not tested (not \"no gap\"): {result.get('gaps_note') or FEW_GROUPS}"


def subjects_and_images(group: Mapping[str, Any], subjects: str, images: str) -> str:
    """'87 (358)': subjects first, as the too-small rule and every interval count them; images beside."""
    if group.get(subjects) is None:  # a result stored before subjects were counted
        return _fmt(group.get(images))
    return f"{_fmt(group[subjects])} ({_fmt(group.get(images))})"


def fairness_rich_table(result: Mapping[str, Any]) -> Any:
    """One table per sensitive attribute: a row per group, gaps in the caption."""
    from rich.table import Table

    continuous = result.get("kind") == "continuous"
    title = f"{result.get('model', '')}: {result['target']} by {result['sensitive']}"
    table = Table(title=title, header_style="bold")
    columns = (
        ("group", "subjects (images)", "MAE [95% CI]", "bias", "note")
        if continuous
        else (
            "group",
            "subjects (images)",
            "positive subjects (images)",
            "accuracy",
            "TPR [95% CI]",
            "FPR [95% CI]",
            "AUC [95% CI]",
            "selection",
            "ECE",
            "note",
        )
    )
    for c in columns:
        table.add_column(c, justify="left" if c in ("group", "note") else "right")
    for group, g in result["by_group"].items():
        note = "too small: not in gaps" if g.get("too_small") else (g.get("auc_note") or "")
        ci = g.get("ci") or {}
        if continuous:
            row = [group, subjects_and_images(g, "n_subjects", "n"),
                   _fmt(g["mae"]) + _fmt_ci(ci.get("mae")),
                   _fmt(g.get("bias")), note]
        else:
            row = [
                group,
                subjects_and_images(g, "n_subjects", "n"),
                subjects_and_images(g, "positive_subjects", "positives"),
                _fmt(g.get("accuracy")),
                _fmt(g.get("tpr")) + _fmt_ci(ci.get("tpr")),
                _fmt(g.get("fpr")) + _fmt_ci(ci.get("fpr")),
                _fmt(g.get("auc")) + _fmt_ci(ci.get("auc")),
                _fmt(g.get("selection_rate")),
                _fmt(g.get("ece")) if _fmt(g.get("ece")) == "-" else f"{float(g['ece']):.3f}",  # one format
                note,
            ]
        table.add_row(*row, style="dim" if g.get("too_small") else None)
    caption = gap_summary(result)
    if not continuous:
        op = result.get("operating_point") or {}
        if op.get("rule"):
            caption += f"\noperating point: {op['rule']}"
    if result.get("gaps_note"):
        caption += f"\n{result['gaps_note']}"
    table.caption = caption
    return table


def calibration_rich_table(result: Mapping[str, Any]) -> Any:
    """Power per planted prevalence x effect, with the false-positive rate in the caption."""
    from rich.table import Table

    table = Table(
        title=f"{result['model']}: how often a planted attribute is found "
        f"(Holm threshold alpha / {result['family_size']} = {_fmt(result['threshold'])})",
        header_style="bold",
    )
    for column in ("kind", "prevalence", "effect", "found [95% CI]", "p < alpha alone", "labels"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for row in result["power"]:
        prevalence = "-" if row.get("prevalence") is None else f"{row['prevalence']:.0%}"
        effect = ("d " if row["kind"] == "binary" else "r ") + f"{row['effect']:g}"
        if not row.get("effect_reached", True):  # never show an asked effect the planting could not reach
            effect = f"d {row['realized_effect']:.2g} (asked {row['effect']:g})"
        found = _fmt(row["power"], 2) + _fmt_ci(row["ci"])
        if row.get("untestable"):
            found = f"0 (untestable: {row.get('positive_subjects')} subjects)"
        elif row.get("found_estimated"):
            found += " ~"
        table.add_row(
            row["kind"],
            prevalence,
            effect,
            found,
            _fmt(row["power_single_test"], 2),
            str(row["n_labels"]),
        )
    fpr = result.get("false_positive_rate")
    table.caption = (
        f"false-positive rate {_fmt(fpr)}{_fmt_ci(result.get('false_positive_ci'))} over {result['n_null']} "
        f"null labels (expected {result['alpha']:g}); mean p {_fmt(result.get('mean_p'))}; "
        f"{result['rows_used']} rows of {result['n']} used; found = the probe's `encoded` (p at Holm's "
        "strictest step, CI clear of chance, not degenerate); ~ estimated from a sample re-run through the "
        "probe"
    )
    return table


def poster_rich_table(results: Iterable[Mapping[str, Any]], title: str = "models x attributes") -> Any:
    """The poster's table as a rich table: rows models, columns attributes, cells 'score [CI]*'."""
    from rich.table import Table

    frame = probe_table(results, value="formatted")
    table = Table(
        title=title, header_style="bold", caption="* encoded (Holm p < 0.05 and CI clear of chance)"
    )
    table.add_column("model")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for model, row in frame.iterrows():
        table.add_row(str(model), *["-" if v is None or v != v else str(v) for v in row.tolist()])
    return table


def terminal_console() -> Any:
    """A stdout console: the terminal's width, or 160 columns when piped (tables would wrap at 80)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)
