"""The JSON shapes that `probe --json`, `fairness --json`, `report.json` and the store's /analysis share.

The design card fixes the field names and meanings; this module is the one place that knows them, so a
reader (report, dashboard, a user's CI script) and every writer agree. Fields may be added, never renamed or
given a new meaning. Everything that leaves here is plain JSON: numpy scalars become Python numbers and NaN /
infinity become `null` (JSON has no NaN, and a silent "NaN" string would break strict parsers).

Probe result (one per model x attribute)::

    model, attribute, kind ("categorical" | "binary" | "continuous"),
    metric ("balanced_accuracy" | "mae"), score, ci [low, high] (95 %, cluster bootstrap by subject),
    chance (Dummy baseline on the same folds), p_value (permutation, raw), encoded (Holm-corrected verdict:
    adjusted p < 0.05 AND the CI clear of chance), n (rows probed), classes ({value: rows}; {} if continuous)
    -- added: verdict, p_holm, auc / r2, auc_chance, n_missing, n_subjects, folds, estimator, C, kernel,
    permutation {...}, bootstrap {...}, normalized_encoding, skipped (reason or null), role.

Fairness result (one per target x sensitive attribute or intersection)::

    target, sensitive, by_group {group: {n, positives, accuracy, tpr, fpr, auc, selection_rate, ece,
    too_small, ci: {...}}}, demographic_parity_difference, equalized_odds_difference
    -- added: demographic_parity_ratio, equal_opportunity_difference, worst_group_auc, operating_point, ...
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from embedx._version import __version__
from embedx.analysis.probe_result import VERDICT_ENCODED, VERDICT_NOT_FOUND, verdict_text
from embedx.analysis.typed import to_jsonable
from embedx.errors import EmbedxError

__all__ = [
    "FAIRNESS_FIELDS",
    "PROBE_FIELDS",
    "VERDICT_ENCODED",
    "VERDICT_NOT_FOUND",
    "build_document",
    "correlation_text",
    "fairness_key",
    "probe_key",
    "probe_table",
    "to_jsonable",
    "validate_fairness",
    "validate_probe",
    "verdict_text",
    "write_json",
]

PROBE_FIELDS = (
    "model",
    "attribute",
    "kind",
    "metric",
    "score",
    "ci",
    "chance",
    "p_value",
    "encoded",
    "n",
    "classes",
)
FAIRNESS_FIELDS = (
    "target",
    "sensitive",
    "by_group",
    "demographic_parity_difference",
    "equalized_odds_difference",
)


def _safe_key(text: str) -> str:
    return str(text).replace("/", "_")


def probe_key(result: Mapping[str, Any]) -> str:
    """Key under /analysis/probes/: one per model x attribute (slashes are not allowed in HDF5 names)."""
    return f"{_safe_key(result['model'])}__{_safe_key(result['attribute'])}"


def fairness_key(result: Mapping[str, Any]) -> str:
    """Key under /analysis/fairness/: model x target x sensitive attribute (or intersection)."""
    model = result.get("model") or "model"
    return f"{_safe_key(model)}__{_safe_key(result['target'])}__{_safe_key(result['sensitive'])}"


def _check(result: Mapping[str, Any], fields: tuple[str, ...], what: str) -> None:
    missing = [f for f in fields if f not in result]
    if missing:
        raise EmbedxError(f"{what} result lacks the field(s) {', '.join(missing)}: {dict(result)!r:.200}")


def validate_probe(result: Mapping[str, Any]) -> None:
    """Raise if a probe dict lacks a design-card field (a programming error surfaces early and by name)."""
    _check(result, PROBE_FIELDS, "probe")


def validate_fairness(result: Mapping[str, Any]) -> None:
    _check(result, FAIRNESS_FIELDS, "fairness")


def build_document(
    store: str | Path | None,
    probes: Iterable[Mapping[str, Any]] = (),
    fairness: Iterable[Mapping[str, Any]] = (),
    **extra: Any,
) -> dict[str, Any]:
    """The design card's top-level document; `extra` adds fields (e.g. controls) after the fixed ones."""
    probes = list(probes)
    fairness = list(fairness)
    for p in probes:
        validate_probe(p)
    for f in fairness:
        validate_fairness(f)
    doc: dict[str, Any] = {
        "embedx_version": __version__,
        "store": None if store is None else str(store),
        "probes": probes,
        "fairness": fairness,
    }
    doc.update(extra)
    return to_jsonable(doc)


def write_json(document: Mapping[str, Any], path: str | Path) -> Path:
    """Write the document (strict JSON: no NaN) and return the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(to_jsonable(document), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as err:
        raise EmbedxError(f"cannot write JSON results to {path}: {err}") from err
    return path


def correlation_text(result: Mapping[str, Any]) -> str:
    """A continuous probe's r of predictions with the value and its CI (what its verdict rests on); blank
    for classes."""
    r, ci = result.get("correlation"), result.get("correlation_ci") or (None, None)
    if r is None:
        return ""
    return f"{r:.2f}" + ("" if ci[0] is None or ci[1] is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def _cell(result: Mapping[str, Any]) -> str:
    if result.get("skipped"):
        return "skipped"
    score, ci = result.get("score"), result.get("ci") or [None, None]
    if score is None:
        return "-"
    mark = "*" if result.get("encoded") else ""
    if ci[0] is None or ci[1] is None:
        return f"{score:.2f}{mark}"
    return f"{score:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]{mark}"


def probe_table(results: Iterable[Mapping[str, Any]], value: str = "score") -> pd.DataFrame:
    """The poster's table: one row per model, one column per attribute.

    `value` picks what goes into the cells: a numeric field ("score", "chance", "p_holm", "auc",
    "normalized_encoding") or "formatted" for "score [low, high]*" strings (* = encoded). Column order follows
    first appearance, so callers control it by the order of `results`.
    """
    rows: dict[str, dict[str, Any]] = {}
    columns: list[str] = []
    for r in results:
        attribute = r["attribute"]
        if attribute not in columns:
            columns.append(attribute)
        cell = _cell(r) if value == "formatted" else r.get(value)
        rows.setdefault(r["model"], {})[attribute] = cell
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table.reindex(columns=columns)
    table.index.name = "model"
    return table
