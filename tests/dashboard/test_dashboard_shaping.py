"""Pure shaping functions of the explorer: known answers, no Streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.analysis.enrichment import enrichment, top_enriched
from embedx.dashboard import selection_events as events
from embedx.dashboard import shaping
from embedx.dashboard.figures import MISSING_COLOUR
from embedx.dashboard.map_payload import (
    HIGHLIGHT_MAX,
    MAX_CATEGORIES,
    OTHER_LABEL,
    SCALE_STEPS,
    map_payload,
    unpacked,
)


def test_enrichment_of_a_hand_built_selection_finds_the_over_represented_site() -> None:
    table = pd.DataFrame({"site": ["north"] * 100 + ["south"] * 100, "sex": ["F", "M"] * 100})
    selected = np.zeros(200, dtype=bool)
    selected[:40] = True  # 40 from north
    selected[100:110] = True  # 10 from south
    result = enrichment(table, selected)
    top = top_enriched(result).iloc[0]
    assert (top["attribute"], top["value"]) == ("site", "north")
    assert top["pct_selected"] == pytest.approx(0.8)
    assert top["fold"] > 1.5 and top["q_value"] < 0.01
    sex = result[result["attribute"] == "sex"]
    assert (sex["q_value"] > 0.05).all()  # sex was not selected on


def test_the_map_payload_packs_each_drawn_row_with_its_own_coordinates_colour_and_id() -> None:
    rng = np.random.default_rng(0)
    n = 60
    xy = rng.normal(size=(n, 2)).astype(np.float32)
    colour = pd.Series(np.where(np.arange(n) % 3 == 0, "a", "b"), name="site")
    colour[5] = None
    hover = shaping.hover_text(pd.DataFrame({"site": colour}))
    drawn = np.array([50, 3, 5, 17, 0, 44])  # a sample, not in row order
    payload = map_payload(xy, drawn, colour, categorical=True, hover=hover, selected=np.array([17, 44, 59]))
    ids = unpacked(payload["ids"], "<i4")
    assert ids.tolist() == drawn.tolist() and payload["n"] == len(drawn)
    np.testing.assert_array_equal(unpacked(payload["xy"], "<f4").reshape(-1, 2), xy[drawn])
    names = [payload["legend"][code]["name"] for code in unpacked(payload["codes"], "<u2")]
    assert names == [shaping.MISSING_LABEL if pd.isna(v) else str(v) for v in colour[drawn]]
    assert [e["count"] for e in payload["legend"]] == [names.count(e["name"]) for e in payload["legend"]]
    assert payload["legend"][-1]["colour"] == MISSING_COLOUR  # missing last, grey
    assert unpacked(payload["flags"], "u1").tolist() == [0, 0, 0, 1, 0, 1]  # 59 is selected but not drawn
    assert payload["hover"] == [hover[r] for r in drawn]
    x0, x1, y0, y1 = payload["extent"]
    assert x0 < xy[drawn, 0].min() and xy[drawn, 0].max() < x1
    assert y0 < xy[drawn, 1].min() and xy[drawn, 1].max() < y1
    # a click sends the clicked point's row id back, as Plotly's customdata did
    click = {"selection": {"points": [{"customdata": int(ids[3])}], "box": [], "lasso": [], "serial": "s-1"}}
    assert events.selected_row_ids(click).tolist() == [17]


def test_a_continuous_colour_is_a_scale_from_its_minimum_to_its_maximum() -> None:
    xy = np.zeros((5, 2))
    age = pd.Series([20.0, 40.0, np.nan, 80.0, 30.0], name="age")
    payload = map_payload(xy, np.arange(5), age, categorical=False, hover=None)
    codes = unpacked(payload["codes"], "<u2")
    assert codes.tolist() == [0, round(20 / 60 * 255), SCALE_STEPS, 255, round(10 / 60 * 255)]
    assert payload["scale"] == {"name": "age", "low": 20.0, "high": 80.0}
    assert len(payload["colours"]) == SCALE_STEPS + 1 and payload["colours"][SCALE_STEPS] == MISSING_COLOUR
    assert payload["legend"] == [{"name": shaping.MISSING_LABEL, "colour": MISSING_COLOUR, "count": 1}]
    plain = map_payload(xy, np.arange(5), None, categorical=False, hover=None, highlight=np.array([1, 3]))
    assert set(unpacked(plain["codes"], "<u2").tolist()) == {0} and plain["legend"] == []
    assert plain["highlight"]["n"] == 2 and plain["highlight"]["total"] == 2


def test_a_big_highlight_is_ringed_on_a_fair_sample_and_counted_in_full() -> None:
    xy = np.random.default_rng(2).normal(size=(50_000, 2))
    payload = map_payload(xy, np.arange(100), None, False, None, highlight=np.arange(50_000))
    rings = unpacked(payload["highlight"]["xy"], "<f4").reshape(-1, 2)
    assert payload["highlight"]["total"] == 50_000 and len(rings) == HIGHLIGHT_MAX
    assert 0.3 < (rings[:, 0] > 0).mean() < 0.7  # spread over the whole cluster, not its first rows


def test_customdata_given_as_list_and_empty_events() -> None:
    event = {"selection": {"points": [{"customdata": [7, "x"]}, {"customdata": 3}, {"x": 1}]}}
    assert events.selected_row_ids(event).tolist() == [3, 7]
    assert events.selected_row_ids(None).size == 0
    assert events.selected_row_ids({"selection": {"points": []}}).size == 0


def test_reconcile_keeps_selection_through_a_recolour_and_takes_only_new_events() -> None:
    kept = np.array([1, 2, 3])
    # the chart was remounted by a recolour: empty event, the selection stays
    kept, seen = events.reconcile_selection(kept, np.array([], dtype=np.int64), np.array([1, 2, 3]))
    assert kept.tolist() == [1, 2, 3]
    # another chart still reports its old selection: not new, ignored
    kept2, _ = events.reconcile_selection(np.array([9]), np.array([1, 2, 3]), np.array([1, 2, 3]))
    assert kept2.tolist() == [9]
    # a fresh lasso replaces it
    kept3, seen3 = events.reconcile_selection(kept, np.array([4, 5]), seen)
    assert kept3.tolist() == [4, 5] and seen3.tolist() == [4, 5]


def test_a_numbered_event_is_new_once_even_when_it_repeats_the_rows() -> None:
    event = {"selection": {"points": [{"customdata": 7}], "box": [], "lasso": [], "serial": "ab-3"}}
    serial = events.event_serial(event)
    assert serial == "ab-3" and events.event_serial({"selection": {"points": []}}) is None
    seen_before = np.array([], dtype=np.int64)  # what the map reported before it sent anything
    kept, seen = events.reconcile_selection(np.array([1, 2]), np.array([7]), seen_before, serial)
    assert kept.tolist() == [7] and seen == "ab-3"
    # the same event on the next rerun (e.g. after "Clear selection"): not new, the cleared selection stays
    kept, seen = events.reconcile_selection(np.empty(0, dtype=np.int64), np.array([7]), seen, serial)
    assert kept.tolist() == []
    # a new click on the same point: a new serial, so it is selected again
    kept, seen = events.reconcile_selection(kept, np.array([7]), seen, "ab-4")
    assert kept.tolist() == [7] and seen == "ab-4"
    # a lasso around nothing never clears
    kept, _ = events.reconcile_selection(kept, np.empty(0, dtype=np.int64), seen, "ab-5")
    assert kept.tolist() == [7]


def test_density_sample_keeps_every_category_and_the_proportions() -> None:
    rng = np.random.default_rng(1)
    groups = np.array(["big"] * 9_000 + ["mid"] * 990 + ["rare"] * 10)
    rows = np.arange(len(groups))
    drawn = shaping.density_sample(rows, groups, max_points=1_000, seed=0, min_per_group=50)
    kinds = pd.Series(groups[drawn]).value_counts()
    assert set(kinds.index) == {"big", "mid", "rare"}
    assert kinds["rare"] == 10  # a rare site is kept whole, not sampled away
    assert kinds["big"] == pytest.approx(900, abs=2) and kinds["mid"] == pytest.approx(99, abs=2)
    assert len(np.unique(drawn)) == len(drawn)
    assert shaping.density_sample(rows[:50], None, max_points=100).tolist() == list(range(50))
    # uniform within a group: a dense half of the map stays dense
    xy_dense = rng.random(len(rows)) < 0.8
    assert xy_dense[drawn].mean() == pytest.approx(0.8, abs=0.06)


def test_fair_sample_is_capped_seeded_and_spread() -> None:
    rows = np.arange(1000, 3000)
    shown = shaping.fair_sample(rows, 48, seed=0)
    assert len(shown) == 48 and np.array_equal(shown, shaping.fair_sample(rows, 48, seed=0))
    assert shown.max() > 2500 and shown.min() < 1500  # not the first 48 rows


def test_neighbour_overlap_identical_is_one_and_unrelated_near_random() -> None:
    rng = np.random.default_rng(0)
    n, k = 400, 10
    z = rng.normal(size=(n, 8))
    assert shaping.neighbour_overlap(z, z.copy(), k=k) == pytest.approx(1.0)
    unrelated = shaping.neighbour_overlap(z, rng.normal(size=(n, 8)), k=k)
    random_jaccard = k / (2 * (n - 1) - k)  # expected Jaccard of two random k-sets out of n-1
    assert unrelated < 5 * random_jaccard and unrelated < 0.06
    # above max_rows the neighbourhoods are taken within one subset, the same for both models
    assert shaping.neighbour_overlap(z, z.copy(), k=k, max_rows=150) == pytest.approx(1.0)
    # a rescaled copy keeps every neighbourhood
    assert shaping.neighbour_overlap(z, 3 * z + 1, k=k) == pytest.approx(1.0)


def test_map_quality_sees_a_faithful_and_a_scrambled_map() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b"], 400)
    z = rng.normal(size=(400, 6))
    z[:, 0] += 5 * (labels == "a")
    attributes = pd.DataFrame({"site": labels})
    faithful = shaping.map_quality(z, z[:, :2], attributes, sample=400)
    scrambled = shaping.map_quality(z, rng.normal(size=(400, 2)), attributes, sample=400)
    assert faithful["trustworthiness"] > scrambled["trustworthiness"]
    assert faithful["knn_recall"] > scrambled["knn_recall"]
    site = {a["attribute"]: a for a in scrambled["attributes"]}["site"]
    assert (
        site["latent"] > 0.95 and site["gap"] > 0.3
    )  # the latent knows the site, the scrambled map hides it


def test_filters_categories_and_ranges() -> None:
    table = pd.DataFrame({"site": ["a", "b", None, "a"], "age": [20.0, 40.0, 60.0, np.nan]})
    assert shaping.apply_filters(table, {"site": ["a"]}).tolist() == [True, False, False, True]
    assert shaping.apply_filters(table, {"site": [shaping.MISSING_LABEL]}).tolist() == [
        False,
        False,
        True,
        False,
    ]
    assert shaping.apply_filters(table, {"age": (30.0, 70.0)}).tolist() == [False, True, True, False]


def test_png_data_url_round_trips() -> None:
    import base64
    import io

    from PIL import Image

    thumb = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    url = shaping.png_data_url(thumb)
    assert url.startswith("data:image/png;base64,")
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert np.array_equal(back, thumb)


def test_selection_csv_has_ids_and_attributes() -> None:
    table = pd.DataFrame({"site": ["a", "b", "c"], "age": [1.0, 2.0, 3.0]})
    text = shaping.selection_csv(table, np.array([2, 0]), np.array(["x", "y", "z"])).decode()
    lines = text.strip().splitlines()
    assert lines[0] == "row,sample_id,site,age"
    assert lines[1] == "2,z,c,3.0" and lines[2] == "0,x,a,1.0"


def test_result_readers_tolerate_nesting_and_extra_fields() -> None:
    probe = {"model": "dae", "attribute": "site", "score": 0.9, "new_field": 1}
    payloads = [probe, {"probes": [dict(probe, attribute="sex")]}]
    assert [p["attribute"] for p in shaping.probe_records(payloads)] == ["site", "sex"]
    fairness = {
        "target": "t",
        "sensitive": "sex",
        "demographic_parity_difference": 0.1,
        "n_groups": 2,
        "by_group": {"F": {"n": 3, "tpr": 0.5, "ci": {"tpr": [0.4, 0.6]}}},
    }
    table = shaping.fairness_group_table(fairness)
    assert table.loc[0, "tpr lo"] == 0.4 and table.loc[0, "tpr hi"] == 0.6
    assert shaping.fairness_gaps(fairness) == {"demographic_parity_difference": 0.1}


def test_intervals_become_readable_text() -> None:
    frame = pd.DataFrame({"site": ["a", "b"], "ci": [[0.4812, 0.6], [None, 0.7]], "auc": [0.5, 0.6]})
    text = shaping.intervals_as_text(frame)
    assert text["ci"].tolist() == ["[0.48, 0.60]", "[–, 0.70]"]
    assert text["auc"].tolist() == [0.5, 0.6]


def test_a_lasso_or_box_on_a_sampled_map_selects_every_row_inside_it() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, size=(5_000, 2)).astype(np.float32)
    everyone = np.ones(5_000, dtype=bool)
    lasso = {
        "selection": {
            "points": [],
            "box": [],
            "lasso": [{"xref": "x", "yref": "y", "x": [0, 5, 5, 0], "y": [0, 0, 5, 5]}],
        }
    }
    inside = events.rows_in_regions(lasso, xy, everyone)
    expected = np.flatnonzero((xy[:, 0] < 5) & (xy[:, 1] < 5))
    assert len(np.setdiff1d(inside, expected)) == 0 and len(inside) >= len(expected) - 5  # edge points
    box = {"selection": {"box": [{"x": [8, 2], "y": [1, 3]}], "lasso": []}}
    every_other = np.zeros(5_000, dtype=bool)
    every_other[::2] = True
    in_box = events.rows_in_regions(box, xy, every_other)  # only rows on the map (the filtered cohort) count
    rows = np.arange(5_000)[::2]
    assert np.array_equal(
        in_box, rows[(xy[::2, 0] >= 2) & (xy[::2, 0] <= 8) & (xy[::2, 1] >= 1) & (xy[::2, 1] <= 3)]
    )
    # a box and a lasso together: every row inside either, each once, in row order
    both = {"selection": {"box": box["selection"]["box"], "lasso": lasso["selection"]["lasso"]}}
    assert np.array_equal(events.rows_in_regions(both, xy, every_other),
                          np.union1d(in_box, inside[inside % 2 == 0]))
    assert events.rows_in_regions({"selection": {"points": [{"customdata": 1}]}}, xy, everyone).size == 0
    assert events.rows_in_regions(lasso, xy, np.zeros(5_000, dtype=bool)).size == 0


def test_a_markdown_table_rounds_numbers_and_escapes_what_markdown_would_read() -> None:
    frame = pd.DataFrame({"attribute": ["site", "a|b $x$ *y*"], "latent": [0.991, np.nan]})
    lines = shaping.markdown_table(frame).splitlines()
    assert lines[:2] == ["| attribute | latent |", "|---|---:|"]
    assert lines[2] == "| site | 0.99 |"
    assert lines[3] == "| a\\|b \\$x\\$ \\*y\\* | – |"  # no cell split, no LaTeX, no emphasis


def test_a_colour_with_thousands_of_values_keeps_the_sample_and_the_legend_small() -> None:
    rng = np.random.default_rng(3)
    n = 60_000
    serial = pd.Series([f"scanner-{v}" for v in rng.zipf(1.3, n) % 5_000], name="serial")
    rows = np.arange(n)
    drawn = shaping.density_sample(rows, serial.to_numpy(), max_points=3_000)
    assert len(drawn) <= 4_500  # the floors of thousands of rare values no longer draw every row
    payload = map_payload(rng.normal(size=(n, 2)), drawn, serial, True, None, population=rows)
    names = [entry["name"] for entry in payload["legend"]]
    assert len(names) == MAX_CATEGORIES and names[-1] == OTHER_LABEL
    counts = serial.value_counts()
    top = counts.index[0]
    assert payload["legend"][names.index(top)]["count"] == counts[top]  # counted over every row, not drawn
    assert sum(entry["count"] for entry in payload["legend"]) == n
    codes = unpacked(payload["codes"], "<u2")
    assert codes.max() == len(names) - 1
    other = serial.to_numpy()[drawn][codes == names.index(OTHER_LABEL)]
    assert not set(other) & set(names)  # a value with its own colour is never drawn as "other"


def test_a_continuous_colour_with_no_value_has_no_scale() -> None:
    empty = pd.Series([np.nan] * 4, name="age")
    payload = map_payload(np.zeros((4, 2)), np.arange(4), empty, categorical=False, hover=None)
    assert payload["scale"] is None and payload["legend"][0]["count"] == 4
    assert set(unpacked(payload["codes"], "<u2").tolist()) == {0} and payload["colours"] == [MISSING_COLOUR]


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([1.0, 0.0, np.nan, 1.0, 2.5, -0.0], name="finding"),
        pd.Series(["south", None, "", "north", "south", "Zürich"], name="site"),
        pd.Series(["a", pd.NA, "b", "", "a", "c"], dtype="str", name="sex"),
        pd.Series([3, 1, 3, 2, 1, 1], name="grade", index=[10, 11, 12, 13, 14, 15]),
        pd.Series([np.nan] * 6, name="empty"),
        pd.Series([[1], [2], None, [1], "", "x"], name="lists"),  # unhashable: labelled row by row
    ],
)
def test_category_labels_are_each_rows_value_as_the_tables_write_it(values: pd.Series) -> None:
    """Labels are made per distinct value; they must be what formatting each row gives, missing named."""
    from embedx.analysis.labels import value_text

    expected = [shaping.MISSING_LABEL if pd.isna(v) or v == "" else value_text(v) for v in values]
    labels = shaping.category_labels(values)
    assert labels.tolist() == expected
    assert labels.index.equals(values.index) and labels.name == values.name
