"""Pure data shaping for the explorer: no Streamlit here, so every piece is unit-tested without a browser.

The page files only render what these functions return, and `data.py` only caches them. Rows are always
addressed by their *global row id* (the store row), never by a position in what is drawn. A map's selection
events are read in `selection_events`.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

MISSING_LABEL = "(missing)"


# --------------------------------------------------------------------------- attributes and filters


def is_categorical(values: pd.Series, kind: str | None = None) -> bool:
    """Categorical and binary attributes are coloured with a palette; continuous ones with a scale."""
    if kind is not None:
        return kind != "continuous"
    return not pd.api.types.is_numeric_dtype(values) or values.nunique(dropna=True) <= 12


def category_labels(values: pd.Series) -> pd.Series:
    """String labels for a categorical column as the enrichment tables write them (binary 1.0 -> "1"),
    missing values spelled out rather than dropped. Values are told apart as the tables' factorising tells
    them apart: in a mixed object column True and 1 are one value, as they are there."""
    from embedx.analysis.labels import value_text  # not enrichment: scipy.stats would cost the map 1 s

    # each distinct value formatted once, not each row: 3.7 s -> 0.1 s for a million rows
    try:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)  # missing values get -1
    except TypeError:  # unhashable values (lists in an object column): format each row
        labels = values.astype("object").where(values.notna(), MISSING_LABEL)
        return labels.map(lambda v: MISSING_LABEL if v is None or v == "" else value_text(v))
    names = [MISSING_LABEL if v is None or v == "" else value_text(v) for v in uniques]
    labels = np.asarray([*names, MISSING_LABEL], dtype=object)[codes]  # -1 picks the last: missing
    return pd.Series(labels, index=values.index, name=values.name, dtype=object)


def apply_filters(attributes: pd.DataFrame, filters: Mapping[str, Any]) -> np.ndarray:
    """Boolean row mask: a list/set keeps those category labels, a (lo, hi) tuple keeps that numeric range."""
    mask = np.ones(len(attributes), dtype=bool)
    for name, allowed in filters.items():
        if name not in attributes.columns or allowed is None:
            continue
        column = attributes[name]
        if isinstance(allowed, tuple) and len(allowed) == 2 and pd.api.types.is_numeric_dtype(column):
            low, high = allowed
            values = column.to_numpy(dtype=float)
            mask &= (values >= low) & (values <= high)
        else:
            mask &= category_labels(column).isin([str(a) for a in allowed]).to_numpy()
    return mask


# --------------------------------------------------------------------------- scale: density sample


def density_sample(
    rows: np.ndarray,
    groups: pd.Series | np.ndarray | None,
    max_points: int,
    seed: int = 0,
    min_per_group: int = 50,
) -> np.ndarray:
    """About `max_points` of `rows`, drawn uniformly within each group so the picture keeps its density.

    A uniform draw preserves where the map is dense and where it is sparse; drawing per group with a floor
    keeps a rare category (a small site) visible instead of sampling it away. The floors come on top of the
    proportional share, and shrink with the number of groups so that they add at most half of `max_points`
    (a colour with thousands of values would otherwise draw every row). Only the scatter uses this —
    statistics always run on every row.
    """
    rows = np.asarray(rows)
    if len(rows) <= max_points:
        return rows
    rng = np.random.default_rng(seed)
    if groups is None:
        return np.sort(rng.choice(rows, size=max_points, replace=False))
    labels = np.asarray(groups)
    if len(labels) != len(rows):
        raise ValueError("groups must align with rows")
    keep: list[np.ndarray] = []
    uniques, inverse = np.unique(labels.astype(str), return_inverse=True)
    fraction = max_points / len(rows)
    min_per_group = min(min_per_group, max_points // (2 * len(uniques)))
    for index in range(len(uniques)):
        members = rows[inverse == index]
        take = max(min(len(members), min_per_group), round(len(members) * fraction))
        take = min(take, len(members))
        keep.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(keep))


def fair_sample(rows: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """A capped, uniformly drawn subset of a selection for the thumbnail grid.

    The first `cap` rows would show whatever the store happened to hold first (often one site); a seeded
    uniform draw shows the selection as it is, and stays the same across reruns.
    """
    rows = np.asarray(rows)
    if len(rows) <= cap:
        return rows
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=cap, replace=False))


# --------------------------------------------------------------------------- thumbnails and tables


def png_data_url(thumb: np.ndarray) -> str:
    """A 64×64 uint8 thumbnail as a PNG data URL: what `st.column_config.ImageColumn` can display."""
    from PIL import Image

    image = Image.fromarray(np.asarray(thumb, dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def rows_table(
    attributes: pd.DataFrame,
    rows: np.ndarray,
    sample_ids: np.ndarray | None = None,
    thumbnails: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The rows of a selection as a table: row id, sample id, optional thumbnail data URL, attributes."""
    rows = np.asarray(rows, dtype=np.int64)
    table = attributes.iloc[rows].copy()
    table.insert(0, "row", rows)
    if sample_ids is not None:
        table.insert(1, "sample_id", np.asarray(sample_ids)[rows])
    if thumbnails is not None:
        table.insert(1, "image", list(thumbnails))
    return table.reset_index(drop=True)


def markdown_table(frame: pd.DataFrame, digits: int = 2) -> str:
    """A small table as markdown (numbers rounded to `digits`), for panels that must not pull in the
    data-grid's scripts; markdown's own characters in cells are escaped."""

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "–" if np.isnan(value) else f"{value:.{digits}f}"
        # CommonMark lets any ASCII punctuation be escaped; Streamlit would read $…$ as LaTeX
        return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", " ".join(str(value).split()))

    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---:" if right else "---" for right in numeric) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def selection_csv(attributes: pd.DataFrame, rows: np.ndarray, sample_ids: np.ndarray | None = None) -> bytes:
    """Selected rows as CSV bytes (no thumbnails), ready for `st.download_button`."""
    return rows_table(attributes, rows, sample_ids).to_csv(index=False).encode("utf-8")


def hover_text(
    attributes: pd.DataFrame, columns: Iterable[str] | None = None, max_columns: int = 6
) -> np.ndarray:
    """One compact hover line per row ("site=north · sex=F · age=54")."""
    columns = list(columns or attributes.columns)[:max_columns]
    parts: list[pd.Series] = []
    for name in columns:
        column = attributes[name]
        if pd.api.types.is_float_dtype(column):
            text = column.map(lambda v: "NA" if pd.isna(v) else f"{v:.3g}")
        else:
            text = category_labels(column)
        parts.append(name + "=" + text.astype(str))
    if not parts:
        return np.full(len(attributes), "", dtype=object)
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + " · " + part
    return joined.to_numpy(dtype=object)


# --------------------------------------------------------------------------- neighbours


def knn_indices(z: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The k nearest rows (Euclidean, excluding the row itself) of each query row within `z`."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=min(k + 1, len(z))).fit(z)
    _, found = index.kneighbors(z[rows])
    return drop_self(found, rows, k)


def drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Remove the query row from its own neighbour list (ties can put it anywhere, not only first)."""
    out = np.empty((len(rows), k), dtype=np.int64)
    for i, (row, candidates) in enumerate(zip(rows, found, strict=True)):
        kept = candidates[candidates != row][:k]
        out[i, : len(kept)] = kept
        if len(kept) < k:
            out[i, len(kept) :] = -1
    return out


def neighbour_overlap(
    z_a: np.ndarray,
    z_b: np.ndarray,
    k: int = 10,
    sample: int = 2000,
    seed: int = 0,
    max_rows: int = 20_000,
) -> float:
    """Mean Jaccard overlap of each sample's k-NN set in two embeddings of the same rows.

    1 means both models see the same neighbourhoods; two unrelated embeddings give about k/(2N−k), the
    overlap of random k-sets. Rows that either model did not encode are left out. Above `max_rows` the
    neighbourhoods are taken within one seeded subset of that size (the same rows for both models), which
    keeps brute-force kNN in 512-d to seconds at 220k rows.
    """
    if z_a.shape[0] != z_b.shape[0]:
        raise ValueError("both embeddings must cover the same rows")
    ok = ~(np.isnan(z_a).any(axis=1) | np.isnan(z_b).any(axis=1))
    valid = np.flatnonzero(ok)
    if len(valid) <= k + 1:
        return math.nan
    rng = np.random.default_rng(seed)
    if len(valid) > max_rows:
        valid = np.sort(rng.choice(valid, max_rows, replace=False))
    a, b = z_a[valid], z_b[valid]
    queries = np.arange(len(valid)) if len(valid) <= sample else rng.choice(len(valid), sample, replace=False)
    near_a = knn_indices(a, queries, k)
    near_b = knn_indices(b, queries, k)
    scores = [len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(near_a, near_b, strict=True)]
    return float(np.mean(scores))


def neighbour_agreement(
    attributes: pd.DataFrame, row: int, neighbours: np.ndarray, kinds: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Per attribute: share of a row's neighbours that share its value, against that value's cohort share.

    A neighbourhood that shares the scanner far more than the cohort does, but not the sex, says the latent
    space is organised by acquisition. Continuous attributes report the mean |difference| instead.
    """
    records = []
    for name in attributes.columns:
        column = attributes[name]
        if is_categorical(column, (kinds or {}).get(name)):
            labels = category_labels(column).to_numpy()
            own = labels[row]
            share = float(np.mean(labels[neighbours] == own))
            base = float(np.mean(labels == own))
            records.append(
                {"attribute": name, "value": own, "neighbours sharing it": share, "cohort share": base}
            )
        else:
            values = column.to_numpy(dtype=float)
            records.append(
                {
                    "attribute": name,
                    "value": f"{values[row]:.3g}",
                    "neighbours sharing it": math.nan,
                    "cohort share": math.nan,
                    "mean |difference|": float(np.nanmean(np.abs(values[neighbours] - values[row]))),
                }
            )
    return pd.DataFrame.from_records(records)


# --------------------------------------------------------------------------- map quality


def map_quality(
    latent: np.ndarray,
    xy: np.ndarray,
    attributes: pd.DataFrame,
    k: int = 10,
    sample: int = 1500,
    seed: int = 0,
    kinds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """How faithful a 2-D map is to its latent space, on a seeded sample of encoded rows.

    trustworthiness (sklearn, O(n²), hence the sample), kNN recall@k (share of latent neighbours still
    neighbours in 2-D), and per attribute the 5-fold kNN accuracy in latent space vs in 2-D: a large gap
    means the picture hides (or invents) structure that the probes see.
    """
    from sklearn.manifold import trustworthiness
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    ok = ~(np.isnan(latent).any(axis=1) | np.isnan(xy).any(axis=1))
    valid = np.flatnonzero(ok)
    rng = np.random.default_rng(seed)
    rows = valid if len(valid) <= sample else np.sort(rng.choice(valid, sample, replace=False))
    if len(rows) <= k + 2:
        return {"n": len(rows), "trustworthiness": math.nan, "knn_recall": math.nan, "attributes": []}
    z, p = latent[rows], xy[rows]
    trust = float(trustworthiness(z, p, n_neighbors=k))
    queries = np.arange(len(rows))
    near_z = knn_indices(z, queries, k)
    near_p = knn_indices(p, queries, k)
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(near_z, near_p, strict=True)]))
    per_attribute = []
    for name in attributes.columns:
        column = attributes[name].iloc[rows]
        if not is_categorical(column, (kinds or {}).get(name)):
            continue
        labels = category_labels(column).to_numpy()
        counts = pd.Series(labels).value_counts()
        if len(counts) < 2 or counts.min() < 5:
            continue
        knn = KNeighborsClassifier(n_neighbors=k)
        latent_acc = float(cross_val_score(knn, z, labels, cv=5, scoring="balanced_accuracy").mean())
        map_acc = float(cross_val_score(knn, p, labels, cv=5, scoring="balanced_accuracy").mean())
        per_attribute.append(
            {
                "attribute": name,
                "latent": latent_acc,
                "map": map_acc,
                "gap": latent_acc - map_acc,
                "chance": 1.0 / len(counts),
            }
        )
    return {
        "n": len(rows),
        "k": k,
        "trustworthiness": trust,
        "knn_recall": recall,
        "attributes": per_attribute,
    }


# --------------------------------------------------------------------------- analysis results


def _walk_dicts(payload: Any) -> Iterable[dict]:
    if isinstance(payload, Mapping):
        yield dict(payload)
        for value in payload.values():
            if isinstance(value, (list, tuple, Mapping)):
                yield from _walk_dicts(value)
    elif isinstance(payload, (list, tuple)):
        for item in payload:
            yield from _walk_dicts(item)


def probe_records(payloads: Any) -> list[dict]:
    """Every design-card probe dict found in the stored payloads, however they are nested."""
    return [d for d in _walk_dicts(payloads) if {"model", "attribute", "score"} <= set(d)]


def fairness_records(payloads: Any) -> list[dict]:
    return [d for d in _walk_dicts(payloads) if {"sensitive", "by_group"} <= set(d)]


def fairness_group_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Per-group metrics of one fairness result as a flat table.

    CIs arrive either as `{metric: [lo, hi]}` under a `ci` key (the design card's shape) or as a
    `[lo, hi]` metric value; both become `<metric> lo` / `<metric> hi` columns beside the metric.
    """
    records = []
    for group, metrics in (result.get("by_group") or {}).items():
        row: dict[str, Any] = {"group": str(group)}
        for name, value in (metrics or {}).items():
            if name == "ci" and isinstance(value, Mapping):
                for metric, bounds in value.items():
                    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
                        row[f"{metric} lo"], row[f"{metric} hi"] = bounds
            elif isinstance(value, (list, tuple)) and len(value) == 2:
                row[f"{name} lo"], row[f"{name} hi"] = value
            elif isinstance(value, Mapping):
                for sub, sub_value in value.items():
                    row[f"{name} {sub}"] = sub_value
            else:
                row[name] = value
        records.append(row)
    return pd.DataFrame.from_records(records)


def fairness_gaps(result: Mapping[str, Any]) -> dict[str, float]:
    """The scalar gap fields of a fairness result (difference / ratio / gap in the name)."""
    return {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and any(word in k for word in ("difference", "ratio", "gap"))
    }


def intervals_as_text(frame: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Columns holding `[low, high]` pairs become "[0.48, 0.60]" strings; a table cell cannot show a list."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if values.map(lambda v: isinstance(v, (list, tuple)) and len(v) == 2).any():
            out[column] = values.map(
                lambda v: (
                    f"[{_num(v[0], digits)}, {_num(v[1], digits)}]" if isinstance(v, (list, tuple)) else v
                )
            )
    return out


def _num(value: Any, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
