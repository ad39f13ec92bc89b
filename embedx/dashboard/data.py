"""Cached loading for the explorer: the only module that uses `st.cache_data` / `st.cache_resource`.

Large arrays (latents, projections, the attribute table, kNN indexes) are `cache_resource`: one shared
object, no copy per rerun — at 220k rows a pickled copy on every lasso would cost more than the statistics.
Pages must treat what they get as read-only. Every loader is keyed by the store path *and* its
modification time, so re-running `embedx probe` on the store shows up without restarting the app.
Small derived results (thumbnail data URLs, map quality, analysis JSON) are `cache_data`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from embedx.dashboard import shaping
from embedx.dashboard.density import DensityImage, density_image
from embedx.dashboard.launch import STORE_ENV
from embedx.dashboard.map_payload import HOVER_TEXT_MAX, map_payload
from embedx.data.schema import AttributeSpec


def store_path() -> Path | None:
    """The store given on the command line (`streamlit run app.py -- --store S`) or in $EMBEDX_STORE."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store")
    known, _ = parser.parse_known_args(sys.argv[1:])
    value = known.store or os.environ.get(STORE_ENV)
    return Path(value) if value else None


def _stamp(path: Path) -> float:
    return path.stat().st_mtime


@dataclass
class StoreMeta:
    """What every page needs at once: small enough to keep for the whole session. The attribute table and
    the ids are read when first used, so that the map is drawn from its colour's column alone: at a million
    rows every text column costs ~0.25 s, and a real cohort has fifteen."""

    path: str
    n: int
    schema: dict[str, AttributeSpec]  # one entry per attribute column, in the store's order
    models: list[str]
    projections: dict[str, list[str]]
    embedding_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _columns: dict[str, pd.Series] = field(default_factory=dict, repr=False)

    def column(self, name: str) -> pd.Series:
        """One attribute column (read-only), read on first use."""
        if name not in self._columns:
            from embedx.store.h5store import Store

            with Store.open(self.path, "r") as store:
                self._columns[name] = store.attribute(name)[: self.n]
        return self._columns[name]

    @functools.cached_property
    def attributes(self) -> pd.DataFrame:
        """Every attribute column (read-only): the filters, statistics and tables of a selection."""
        return pd.DataFrame({name: self.column(name) for name in self.schema}, index=pd.RangeIndex(self.n))

    @functools.cached_property
    def sample_ids(self) -> np.ndarray:
        """Read when first shown (a selection's rows, its CSV), not before the map is drawn (0.35 s at a
        million rows). Rows are only ever appended to a store, so its first `n` ids are this metadata's."""
        return self._strings("sample_ids")

    @functools.cached_property
    def subject_ids(self) -> np.ndarray:
        """Pseudonymised subject ids (enrichment tests count each patient once); read when first tested."""
        return self._strings("subject_ids")

    def _strings(self, field_name: str) -> np.ndarray:
        from embedx.store.h5store import Store

        with Store.open(self.path, "r") as store:
            return np.asarray(getattr(store, field_name))[: self.n]

    @property
    def kinds(self) -> dict[str, str]:
        return {name: spec.kind for name, spec in self.schema.items()}

    @property
    def attribute_names(self) -> list[str]:
        return list(self.schema)


@st.cache_resource(show_spinner="Opening the store…", max_entries=4)
def _meta(path: str, stamp: float) -> StoreMeta:
    from embedx.store.h5store import Store

    with Store.open(path, "r") as store:  # embedding attrs carry run_dir / kind for the counterfactual view
        schema = store.schema()
        models = list(store.models())
        meta = StoreMeta(
            path=path,
            n=int(store.n),
            schema=dict(schema),
            models=models,
            projections={m: list(v) for m, v in store.projections().items()},
            embedding_attrs={m: store.embedding_info(m) for m in models},
        )
    return meta


def meta(path: Path) -> StoreMeta:
    return _meta(str(path), _stamp(path))


@st.cache_resource(show_spinner=False, max_entries=8)
def _cohort_tests(path: str, stamp: float, cohort_key: str, _cohort: np.ndarray) -> Any:
    from embedx.analysis.enrichment import CohortTests

    meta = _meta(path, stamp)
    everyone = bool(_cohort.all())
    attributes = meta.attributes if everyone else meta.attributes[_cohort].reset_index(drop=True)
    subjects = meta.subject_ids if everyone else meta.subject_ids[_cohort]
    return CohortTests(attributes, meta.schema, groups=subjects)


def cohort_tests(path: Path, cohort: np.ndarray) -> Any:
    """The (filtered) cohort prepared for a selection's statistics: columns coded and ranked, one image per
    subject drawn, once per cohort instead of once per lasso."""
    import hashlib

    key = hashlib.sha1(np.packbits(cohort).tobytes()).hexdigest()
    return _cohort_tests(str(path), _stamp(path), key, cohort)


@st.cache_resource(show_spinner="Loading latents…", max_entries=4)
def _latents(path: str, stamp: float, model: str) -> np.ndarray:
    from embedx.store.h5store import Store

    with Store.open(path, "r") as store:
        return np.asarray(store.latents(model), dtype=np.float32)


def latents(path: Path, model: str) -> np.ndarray:
    return _latents(str(path), _stamp(path), model)


@st.cache_resource(show_spinner="Loading the map…", max_entries=8)
def _projection(path: str, stamp: float, model: str, method: str) -> np.ndarray:
    from embedx.store.h5store import Store

    with Store.open(path, "r") as store:
        return np.asarray(store.projection(model, method), dtype=np.float32)


def projection(path: Path, model: str, method: str) -> np.ndarray:
    return _projection(str(path), _stamp(path), model, method)


@st.cache_resource(show_spinner=False, max_entries=8)
def _placed(path: str, stamp: float, model: str, method: str) -> np.ndarray:
    xy = _projection(path, stamp, model, method)
    return np.isfinite(xy[:, 0]) & np.isfinite(xy[:, 1])


def placed(path: Path, model: str, method: str) -> np.ndarray:
    """Which rows have a place on the map (finite coordinates); read-only, computed once per map (finding
    them again on every lasso cost ~20 ms at a million rows)."""
    return _placed(str(path), _stamp(path), model, method)


@st.cache_data(show_spinner=False, max_entries=16)
def _projection_note(path: str, stamp: float, model: str, method: str) -> str:
    from embedx.store.h5store import Store

    with Store.open(path, "r") as store:
        info = store.projection_info(model, method)
        try:
            placed_later = int((store.projection_status(model, method) == 2).sum())
        except Exception:  # a projection written without its state group: nothing to flag
            placed_later = 0
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if isinstance(v, (int, float, str)))
    note = f"{method}" + (f" ({shown})" if shown else "")
    if placed_later:
        note += f"; {placed_later:,} points were placed later by transform, not fitted with the map"
    return note


def projection_note(path: Path, model: str, method: str) -> str:
    """One line on how the map was made (parameters) and how many points were added later by `transform`."""
    return _projection_note(str(path), _stamp(path), model, method)


@st.cache_resource(max_entries=16)
def _hover(path: str, stamp: float) -> np.ndarray:
    return shaping.hover_text(_meta(path, stamp).attributes)


@st.cache_data(show_spinner=False, max_entries=64)
def _thumbnail_urls(path: str, stamp: float, rows: tuple[int, ...]) -> list[str]:
    from embedx.store.h5store import Store

    if not rows:
        return []
    order = np.argsort(rows)
    with Store.open(path, "r") as store:
        thumbs = store.thumbnails(np.asarray(rows, dtype=np.int64)[order])
    urls = [""] * len(rows)
    for position, thumb in zip(order, thumbs, strict=True):
        urls[position] = shaping.png_data_url(thumb)
    return urls


def thumbnail_urls(path: Path, rows: np.ndarray) -> list[str]:
    """PNG data URLs for the given rows (in their order); cached, as encoding is the slow part."""
    return _thumbnail_urls(str(path), _stamp(path), tuple(int(r) for r in rows))


@st.cache_resource(show_spinner="Building the neighbour index…", max_entries=4)
def _neighbour_index(path: str, stamp: float, model: str) -> tuple[Any, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    z = _latents(path, stamp, model)
    valid = np.flatnonzero(~np.isnan(z).any(axis=1))
    return NearestNeighbors().fit(z[valid]), valid


def nearest(path: Path, model: str, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest store rows to `row` in the model's latent space (not the 2-D map), with distances."""
    index, valid = _neighbour_index(str(path), _stamp(path), model)
    z = latents(path, model)
    if np.isnan(z[row]).any():
        return np.empty(0, dtype=np.int64), np.empty(0)
    distances, found = index.kneighbors(z[row : row + 1], n_neighbors=min(k + 1, len(valid)))
    rows, distances = valid[found[0]], distances[0]
    keep = rows != row
    return rows[keep][:k], distances[keep][:k]


@st.cache_data(show_spinner=False, max_entries=32)
def _analysis(path: str, stamp: float, kind: str) -> list[dict]:
    from embedx.store.h5store import Store

    with Store.open(path, "r") as store:
        try:
            found = store.read_analysis(kind)
        except (KeyError, LookupError):
            return []
    if isinstance(found, dict):
        return [found]
    return list(found or [])


def analysis(path: Path, kind: str) -> list[dict]:
    """Every stored result of one kind (probes | fairness | clusters | controls | calibration), [] if none."""
    return _analysis(str(path), _stamp(path), kind)


@st.cache_data(show_spinner="Measuring map quality on a sample…", max_entries=16)
def _map_quality(path: str, stamp: float, model: str, method: str, sample: int) -> dict[str, Any]:
    meta_ = _meta(path, stamp)
    return shaping.map_quality(
        _latents(path, stamp, model),
        _projection(path, stamp, model, method),
        meta_.attributes,
        sample=sample,
        kinds=meta_.kinds,
    )


def map_quality(path: Path, model: str, method: str, sample: int = 1500) -> dict[str, Any]:
    return _map_quality(str(path), _stamp(path), model, method, sample)


@st.cache_data(show_spinner="Comparing neighbourhoods…", max_entries=16)
def _overlap(path: str, stamp: float, model_a: str, model_b: str, k: int) -> float:
    return shaping.neighbour_overlap(_latents(path, stamp, model_a), _latents(path, stamp, model_b), k=k)


def overlap(path: Path, model_a: str, model_b: str, k: int = 10) -> float:
    return _overlap(str(path), _stamp(path), model_a, model_b, k)


@st.cache_resource(max_entries=16)
def _codes(path: str, stamp: float, column: str) -> pd.Series:
    """Category labels of one attribute (strings, missing spelled out), computed once per store."""
    return shaping.category_labels(_meta(path, stamp).column(column))


def labels(path: Path, column: str) -> pd.Series:
    return _codes(str(path), _stamp(path), column)


def digest(values: np.ndarray | None) -> str:
    """A cache key for a row-id array (the filtered cohort, a selection)."""
    if values is None:
        return ""
    return hashlib.sha1(np.ascontiguousarray(values, dtype=np.int64).tobytes()).hexdigest()


def mask_digest(mask: np.ndarray) -> str:
    """A cache key for a boolean mask over the store's rows: its bits, 1/64 of its row ids' bytes (hashing
    a million row ids took ~12 ms per rerun)."""
    return hashlib.sha1(np.packbits(mask).tobytes() + str(mask.size).encode()).hexdigest()


@st.cache_resource(show_spinner=False, max_entries=16)
def _drawn_points(path: str, stamp: float, model: str, method: str, colour: str | None, placed_key: str,
                  max_points: int, _rows: np.ndarray) -> tuple[np.ndarray, DensityImage | None]:
    meta = _meta(path, stamp)
    categorical = bool(colour) and meta.kinds.get(colour) != "continuous"
    groups = _codes(path, stamp, colour).to_numpy()[_rows] if categorical else None
    drawn = shaping.density_sample(_rows, groups, max_points)
    xy = _projection(path, stamp, model, method)
    return drawn, (density_image(xy[_rows]) if len(drawn) < len(_rows) else None)


@st.cache_resource(show_spinner=False, max_entries=32)
def _map_drawing(path: str, stamp: float, model: str, method: str, colour: str | None, placed_key: str,
                 max_points: int, selected_key: str, highlight_key: str, title: str, height: int,
                 _placed: np.ndarray, _selected: np.ndarray, _highlight: np.ndarray | None) -> dict[str, Any]:
    meta = _meta(path, stamp)
    rows = np.flatnonzero(_placed)
    drawn, background = _drawn_points(path, stamp, model, method, colour, placed_key, max_points, rows)
    return map_payload(
        _projection(path, stamp, model, method),
        drawn,
        meta.column(colour) if colour else None,
        categorical=bool(colour) and meta.kinds.get(colour) != "continuous",
        hover=_hover(path, stamp) if len(drawn) <= HOVER_TEXT_MAX else None,
        selected=_selected,
        highlight=_highlight,
        title=title,
        height=height,
        density=background,
        population=rows,
    )


def map_drawing(
    path: Path, model: str, method: str, colour: str | None, placed: np.ndarray, max_points: int,
    selected: np.ndarray, highlight: np.ndarray | None, title: str, height: int,
) -> dict[str, Any]:
    """The map's payload (`map_payload`): the rows of the mask `placed` (the filtered cohort on the map)
    drawn as a density-preserving sample of at most `max_points` over the density image of all of them,
    `selected` faded in, `highlight` ringed. Shared by every browser session: a second user, or a reload,
    gets the map without the 0.3-0.5 s of sampling, imaging and packing it costs at 220k rows. Keyed by the
    mask's bits, and its rows found only when the drawing is made."""
    return _map_drawing(str(path), _stamp(path), model, method, colour, mask_digest(placed), max_points,
                        digest(selected), digest(highlight), title, height, placed, selected, highlight)


@st.cache_resource(show_spinner="Loading the diffusion autoencoder…", max_entries=2)
def trained_run(run_dir: str) -> Any:
    """The DAE of a run folder, for the counterfactual view (CPU)."""
    from embedx.training.checkpoint import load_trained

    return load_trained(run_dir, device="cpu")


@st.cache_data(show_spinner=False, max_entries=64)
def _thumbnails(path: str, stamp: float, rows: tuple[int, ...]) -> np.ndarray:
    from embedx.store.h5store import Store

    with Store.open(path, "r") as store:
        return store.thumbnails(np.asarray(rows, dtype=np.int64))


def thumbnails(path: Path, rows: np.ndarray) -> np.ndarray:
    """Raw (n, 64, 64) uint8 thumbnails of sorted rows."""
    return _thumbnails(str(path), _stamp(path), tuple(int(r) for r in np.sort(rows)))


def stochastic_codes(path: Path, model: str, rows: np.ndarray) -> np.ndarray | None:
    """The stored DAE x_T of these (sorted) rows, or None when any of them has none."""
    from embedx.store.h5store import Store

    with Store.open(path, "r") as store:
        mask = store.stochastic_mask(model)
        if not mask[rows].all():
            return None
        return store.stochastic_codes(model, np.sort(rows))
