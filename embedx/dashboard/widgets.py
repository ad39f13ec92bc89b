"""Streamlit pieces that several pages share: the store guard, hints, pickers, the selectable map and the
selection panel. Logic lives in `shaping` / `figures` and loading in `data`; this module only lays out.

The kept selection is a numpy array of global row ids in `st.session_state["selection"]`, shared by every
page (the map, compare, neighbours and counterfactual pages all read it).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from embedx.dashboard import data, shaping
from embedx.dashboard import selection_events as events
from embedx.dashboard.map_canvas import draw_map

SELECTION = "selection"
SELECTION_ORIGIN = "selection_origin"
FOCUS = "focus_row"
CLEARS = "selection_clears"
# Above this many points the map draws a density-preserving sample over an image of every point: 200k
# points took Chromium 15 s to first paint (bench/dashboard_browser.py). $EMBEDX_SCATTER_MAX changes it (and
# lets the browser test exercise the sampled path on a small store).
SCATTER_MAX = int(os.environ.get("EMBEDX_SCATTER_MAX", "30000"))
THUMB_CAP = 48
MAP_HEIGHT = 560


def quote(path: Path | str) -> str:
    return shlex.quote(str(path))


def require_store() -> tuple[Path, data.StoreMeta]:
    """The store and its metadata, or a clear message with the command to run (and stop the page)."""
    path = data.store_path()
    if path is None:
        st.error("No store given. Start the explorer with a store:")
        st.code("embedx dashboard store.h5", language="bash")
        st.stop()
    if not path.exists():
        st.error(f"Store {path} does not exist. Create it with `embedx encode`, then start the explorer:")
        st.code(
            f"embedx encode RUN_DIR --manifest manifest.csv --out {quote(path)}\n"
            f"embedx dashboard {quote(path)}",
            language="bash",
        )
        st.stop()
    meta = data.meta(path)
    if not meta.models:
        hint(
            "This store holds no embeddings yet. Encode a trained model into it:",
            f"embedx encode RUN_DIR --manifest manifest.csv --out {quote(path)}",
        )
        st.stop()
    return path, meta


def hint(message: str, command: str) -> None:
    """What is missing and the exact command that produces it."""
    st.info(message, icon=":material/info:")
    st.code(command, language="bash")


def selection() -> np.ndarray:
    return st.session_state.get(SELECTION, np.empty(0, dtype=np.int64))


def set_selection(rows: np.ndarray, origin: str) -> None:
    st.session_state[SELECTION] = np.asarray(rows, dtype=np.int64)
    st.session_state[SELECTION_ORIGIN] = origin


def clear_selection() -> None:
    """Empty the kept selection; every map is sent a new drawing without it (and without its outline)."""
    set_selection(np.empty(0, dtype=np.int64), "")
    st.session_state[CLEARS] = st.session_state.get(CLEARS, 0) + 1


def model_and_method(
    meta: data.StoreMeta, key: str, default_model: int = 0, container: Any = st.sidebar
) -> tuple[str, str] | None:
    """Pick a model that has a 2-D map, and one of its methods; None (with a hint) when there is none."""
    mapped = [m for m in meta.models if meta.projections.get(m)]
    if not mapped:
        hint(
            "No 2-D map in this store yet. Project a model's latents:",
            f"embedx project {quote(meta.path)} --method tsne",
        )
        return None
    model = container.selectbox(
        "Model", mapped, index=min(default_model, len(mapped) - 1), key=f"{key}_model"
    )
    method = container.selectbox("Map", meta.projections[model], key=f"{key}_method")
    return model, method


def default_colour(meta: data.StoreMeta) -> str | None:
    """What the map is coloured by until the user picks: the acquisition attribute a shortcut would use."""
    return next((a for a in ("site", "manufacturer", "scanner") if a in meta.attribute_names), None)


def colour_picker(meta: data.StoreMeta, key: str, container: Any = st.sidebar) -> str | None:
    options = ["(none)", *meta.attribute_names]
    preferred = default_colour(meta)
    index = options.index(preferred) if preferred else 0
    choice = container.selectbox("Colour by", options, index=index, key=f"{key}_colour")
    return None if choice == "(none)" else choice


def filters(path: Path, meta: data.StoreMeta, key: str) -> dict[str, Any]:
    """Sidebar filters: category multiselects and numeric range sliders; only narrowed ones are returned.

    Behind a toggle, not in a collapsed expander: an expander's widgets are sent and built even while it is
    closed, and their scripts made the browser draw the map ~0.3 s later (bench/dashboard_browser.py).
    """
    chosen: dict[str, Any] = {}
    if not st.sidebar.toggle("Filter the cohort", key=f"{key}_filtering",
                             help="Narrow the map and every statistic to some sites, ages, …"):
        return chosen
    with st.sidebar.container(border=True):
        for name in meta.attribute_names:
            column = meta.attributes[name]
            if meta.kinds.get(name) == "continuous":
                values = column.to_numpy(dtype=float)
                if np.isnan(values).all():
                    continue
                low, high = float(np.nanmin(values)), float(np.nanmax(values))
                if low == high:
                    continue
                picked = st.slider(name, low, high, (low, high), key=f"{key}_f_{name}")
                if tuple(picked) != (low, high):
                    chosen[name] = tuple(picked)
            else:
                values = sorted(data.labels(path, name).unique())
                if len(values) > 60:
                    continue
                picked = st.multiselect(name, values, default=[], key=f"{key}_f_{name}", placeholder="all")
                if picked:
                    chosen[name] = list(picked)
    return chosen


def cohort_mask(path: Path, meta: data.StoreMeta, key: str) -> np.ndarray:
    """The rows that pass the sidebar's filters; with none set, every row, without reading the attributes
    (a page's first map then needs only its colour's column)."""
    chosen = filters(path, meta, key)
    return shaping.apply_filters(meta.attributes, chosen) if chosen else np.ones(meta.n, dtype=bool)


def _token(*parts: Any) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def on_map(path: Path, model: str, method: str, mask: np.ndarray) -> np.ndarray:
    """Which rows of `mask` lie on the map (finite coordinates), as a mask over the store's rows."""
    return mask & data.placed(path, model, method)


def absorb_selection(
    path: Path, model: str, method: str, mask: np.ndarray, key: str, placed: np.ndarray | None = None
) -> None:
    """Fold the last event of map `key` into the kept selection (idempotent; call before drawing maps).

    The event is read from `st.session_state[key]` before any map is drawn, so every map on the page is
    drawn with the newest selection. A box or lasso selects every row of the filtered cohort inside its
    outline, not only the drawn points: when the map draws a sample, statistics never run on the sample.
    `placed` is `on_map(...)`, when the caller has it already.
    """
    event = st.session_state.get(key)
    seen_key = f"{key}__seen"
    serial, seen = events.event_serial(event), st.session_state.get(seen_key)
    if serial is not None and isinstance(seen, str) and serial == seen:
        return  # this map's last event, already folded in: a rerun need not find its rows again
    if placed is None:
        placed = on_map(path, model, method, mask)
    clicked = events.selected_row_ids(event)
    outlined = events.rows_in_regions(event, data.projection(path, model, method), placed)
    event_rows = np.union1d(clicked, outlined) if len(clicked) and len(outlined) else (
        outlined if len(outlined) else clicked)
    before = selection()
    kept, st.session_state[seen_key] = events.reconcile_selection(before, event_rows, seen, serial)
    if kept is not before:
        set_selection(kept, f"{model} · {method}")
        st.session_state[f"{key}__own"] = selection()  # drawn by the browser already: no need to send it back


def selectable_map(
    path: Path,
    model: str,
    method: str,
    colour: str | None,
    mask: np.ndarray,
    key: str,
    follow: bool = False,
    highlight: np.ndarray | None = None,
    height: int = MAP_HEIGHT,
    title: str = "",
    max_points: int | None = None,
) -> None:
    """Draw one model's map with box/lasso/click selection and fold its events into the kept selection.

    `follow=True` (compare page) bakes the shared selection into the drawing on every run; otherwise it is
    baked only when the drawing itself changes (recolour, filter), so a fresh lasso stays as drawn, with its
    outline and the user's zoom, and the browser redraws nothing.
    """
    max_points = SCATTER_MAX if max_points is None else max_points
    placed = on_map(path, model, method, mask)
    absorb_selection(path, model, method, mask, key, placed)
    drawing_token = _token(model, method, colour, data.mask_digest(placed), max_points,
                           data.digest(highlight), st.session_state.get(CLEARS, 0))
    baked_key = f"{key}__baked"
    baked = st.session_state.get(baked_key)
    # a selection made elsewhere (a cluster's button, another page's map) is shown; this map's own lasso is
    # already drawn in the browser, and baking it in would redraw the map and drop the lasso's outline
    foreign = baked is not None and selection() is not baked[1] and selection() is not st.session_state.get(
        f"{key}__own"
    )
    if follow or baked is None or baked[0] != drawing_token or foreign:
        baked = (drawing_token, selection())
        st.session_state[baked_key] = baked
    payload = data.map_drawing(path, model, method, colour, placed, max_points, baked[1], highlight, title,
                               height)
    if payload["density"] is not None:
        st.caption(
            f"Drawing a density-preserving sample of {payload['n']:,} of {int(placed.sum()):,} points over a "
            "grey density image of all of them; selections and statistics use every row."
        )
    draw_map(payload, key, drawing=drawing_token)


def selection_panel(
    path: Path, meta: data.StoreMeta, cohort: np.ndarray, model: str | None, key: str = "panel"
) -> None:
    """Thumbnails, composition vs cohort with tests and effect sizes, neighbours of a clicked row, CSV."""
    rows = selection()
    if len(rows) == 0:
        st.caption("Select points on the map (box or lasso; click for one point) to inspect them here.")
        return
    head, clear = st.columns([3, 1], vertical_alignment="center")
    head.subheader(f"Selection: {len(rows):,} images")
    origin = st.session_state.get(SELECTION_ORIGIN)
    if origin:
        head.caption(f"selected on {origin}")
    if clear.button("Clear selection", key=f"{key}_clear"):
        clear_selection()
        st.rerun()

    shown = shaping.fair_sample(rows, THUMB_CAP)
    st.markdown(f"**Thumbnails** ({len(shown)} of {len(rows):,}, drawn uniformly at random)")
    urls = data.thumbnail_urls(path, shown)
    st.image(urls, width=72, caption=[str(r) for r in shown])

    mask = np.zeros(meta.n, dtype=bool)
    mask[rows] = True
    st.markdown(
        "**Composition vs the cohort** (2×2 test per value, BH-corrected; effect: fold and odds ratio; "
        "continuous: Mann–Whitney, median shift)"
    )
    table = data.cohort_tests(path, cohort).table(mask[cohort])
    # an attribute's V (on subjects) only where its own test passes BH across the attributes: ungated, the
    # largest V of a random selection reads like a finding
    table["cramers_v"] = table["cramers_v"].where(table["attribute_q"] < 0.05)
    if table.empty:
        st.caption("The selection covers the whole (filtered) cohort: nothing to compare against.")
    else:
        shown_columns = [
            "attribute",
            "value",
            "n_selected",
            "pct_selected",
            "pct_rest",
            "fold",
            "odds_ratio",
            "median_selected",
            "median_rest",
            "cramers_v",
            "test",
            "p_value",
            "q_value",
            "significant",
        ]
        st.dataframe(
            table[[c for c in shown_columns if c in table]],
            hide_index=True,
            width="stretch",
            column_config={
                "pct_selected": st.column_config.NumberColumn("% selection", format="percent"),
                "pct_rest": st.column_config.NumberColumn("% rest", format="percent"),
                "fold": st.column_config.NumberColumn(format="%.2f"),
                "odds_ratio": st.column_config.NumberColumn("odds ratio", format="%.2f"),
                "cramers_v": st.column_config.NumberColumn(
                    "Cramér's V", format="%.2f", help="On subjects; blank unless the attribute's q < 0.05"
                ),
                "p_value": st.column_config.NumberColumn("p", format="%.2g"),
                "q_value": st.column_config.NumberColumn("q (BH)", format="%.2g"),
            },
            key=f"{key}_composition",
        )

    st.download_button(
        "Download selected rows (CSV)",
        # made when clicked, not on every selection (0.13 s for 22k rows, seconds for 100k)
        functools.partial(shaping.selection_csv, meta.attributes, rows.copy(), meta.sample_ids),
        file_name="selection.csv",
        mime="text/csv",
        key=f"{key}_csv",
    )

    if model is not None and len(rows) == 1:  # a click on one point: its neighbours straight away
        neighbours(path, meta, model, int(rows[0]))
    elif model is not None:
        st.markdown("**Rows** — click a row to list its nearest neighbours in latent space")
        table_rows = shaping.rows_table(
            meta.attributes, shown, meta.sample_ids, data.thumbnail_urls(path, shown)
        )
        event = st.dataframe(
            table_rows,
            hide_index=True,
            width="stretch",
            on_select="rerun",
            selection_mode="single-row",
            key=f"{key}_rows",
            column_config={"image": st.column_config.ImageColumn("image", width="small")},
        )
        picked = event.selection.rows if event is not None else []
        if picked:
            st.session_state[FOCUS] = int(shown[picked[0]])
            neighbours(path, meta, model, int(shown[picked[0]]))


def neighbours(path: Path, meta: data.StoreMeta, model: str, row: int, k: int = 12) -> None:
    """A row, its k nearest neighbours in the model's latent space, and how much they share with it."""
    found, distances = data.nearest(path, model, row, k)
    if len(found) == 0:
        st.warning(f"Row {row} was not encoded by {model}.")
        return
    st.markdown(
        f"**Row {row} and its {len(found)} nearest neighbours in `{model}` latent space** "
        "(not in the 2-D map)"
    )
    both = np.concatenate([[row], found])
    captions = [f"query {row}", *[f"{r} · d={d:.2f}" for r, d in zip(found, distances, strict=True)]]
    st.image(data.thumbnail_urls(path, both), width=72, caption=captions)
    table = shaping.rows_table(meta.attributes, both, meta.sample_ids)
    table.insert(1, "distance", np.concatenate([[0.0], distances]))
    st.dataframe(table, hide_index=True, width="stretch")
    agreement = shaping.neighbour_agreement(meta.attributes, row, found, meta.kinds)
    st.markdown(
        "Share of neighbours with the same value as the query, against that value's share in the cohort:"
    )
    st.dataframe(
        agreement,
        hide_index=True,
        width="stretch",
        column_config={
            "neighbours sharing it": st.column_config.NumberColumn(format="percent"),
            "cohort share": st.column_config.NumberColumn(format="percent"),
        },
    )


def frame_or_caption(frame: pd.DataFrame, empty: str, **kwargs: Any) -> None:
    if frame.empty:
        st.caption(empty)
    else:
        st.dataframe(frame, hide_index=True, width="stretch", **kwargs)
