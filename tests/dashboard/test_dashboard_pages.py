"""Every page of the explorer runs under Streamlit's AppTest on a synthetic store and shows the right numbers.

AppTest cannot draw a lasso (charts are opaque there), so the selection panel is driven by putting row ids
into `st.session_state["selection"]`, exactly where the map's selection handler keeps them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from synthstore import cohort

import embedx.dashboard
from embedx.dashboard.data import STORE_ENV
from embedx.store.h5store import Store

PAGES = Path(embedx.dashboard.__file__).resolve().parent / "views"
APP = PAGES.parent / "app.py"


def run_page(name: str, store: Path, monkeypatch: pytest.MonkeyPatch, **state: object) -> AppTest:
    monkeypatch.setenv(STORE_ENV, str(store))
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def stored(store: Path, kind: str) -> list[dict]:
    with Store.open(store) as handle:
        return handle.read_analysis(kind)


def frames(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


@pytest.mark.parametrize("entry", [APP, Path(__file__).resolve().parents[2] / "dashboards" / "app.py"])
def test_app_entry_points_run_the_map_page(entry: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged app and the checkout's `dashboards/app.py` launcher both open on the map."""
    monkeypatch.setenv(STORE_ENV, str(store))
    at = AppTest.from_file(str(entry), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Map"


def test_map_page_offers_every_attribute_and_reports_map_quality(store: Path, monkeypatch) -> None:
    at = run_page("map", store, monkeypatch)
    colour = at.sidebar.selectbox(key="map_colour")
    assert set(colour.options) >= {"site", "sex", "age", "finding", "insurance"}
    assert colour.value == "site"
    metrics = {m.label: float(m.value) for m in at.metric}
    assert 0.5 < metrics["Trustworthiness (k=10)"] <= 1.0
    quality = next(m.value for m in at.markdown if m.value.startswith("| attribute | latent | map | gap |"))
    site = next(line for line in quality.splitlines() if line.startswith("| site |"))
    assert float(site.split("|")[2]) > 0.9  # the synthetic vae encodes the site
    sex = next(line for line in quality.splitlines() if line.startswith("| sex |"))
    assert float(sex.split("|")[2]) < 0.7  # sex has no pixel effect: near chance
    captions = " ".join(c.value for c in at.caption)
    assert "Select points on the map" in captions and "vae · pca (seed=0)" in captions


def test_map_selection_panel_shows_composition_thumbnails_and_download(store, monkeypatch) -> None:
    table = cohort(300)
    north = np.flatnonzero(table["site"].to_numpy() == "north")[:60]
    at = run_page("map", store, monkeypatch, selection=north)
    assert any("Selection: 60 images" in s.value for s in at.subheader)
    composition = next(f for f in frames(at) if "pct_selected" in f)
    top = composition[(composition["attribute"] == "site") & (composition["value"] == "north")].iloc[0]
    assert top["pct_selected"] == pytest.approx(1.0) and top["fold"] > 1.5 and top["q_value"] < 1e-6
    assert len(at.get("download_button")) == 1
    assert len(at.get("image")) >= 1  # the thumbnail grid
    rows = next(f for f in frames(at) if "image" in f)
    assert rows["image"].str.startswith("data:image/png;base64,").all()
    assert set(rows["row"]) <= set(north.tolist()) and len(rows) == min(60, 48)


def test_a_single_clicked_point_lists_its_latent_neighbours(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = run_page("map", store, monkeypatch, selection=np.array([7]))
    assert any("Row 7 and its 12 nearest neighbours in `vae` latent space" in m.value for m in at.markdown)


def test_colour_by_continuous_and_filters_rerun_cleanly(store, monkeypatch) -> None:
    at = run_page("map", store, monkeypatch, selection=np.arange(10))
    at.sidebar.selectbox(key="map_colour").set_value("age").run()
    assert not at.exception
    assert len(at.sidebar.multiselect) == 0 and "300 of 300 images" in at.sidebar.caption[0].value
    at.sidebar.toggle(key="map_filtering").set_value(True).run()  # the filters appear when asked for
    at.sidebar.multiselect(key="map_f_site").set_value(["south"]).run()
    assert not at.exception
    south = int((cohort(300)["site"] == "south").sum())
    assert f"{south:,} of 300 images pass the filters" in " ".join(c.value for c in at.sidebar.caption)
    # the kept selection survives the recolour and the filter
    assert at.session_state["selection"].tolist() == list(range(10))


def test_probes_page_shows_the_stored_balanced_accuracy(store, monkeypatch) -> None:
    results = {(p["model"], p["attribute"]): p for p in stored(store, "probes")}
    at = run_page("probes", store, monkeypatch)
    formatted = frames(at)[0].set_index("attribute")
    site_score = results[("dae", "site")]["score"]
    assert formatted.loc["site", "dae"].startswith(f"{site_score:.2f} [")
    assert formatted.loc["site", "dae"].endswith("*")  # encoded
    detail = frames(at)[1].set_index(["model", "attribute"])
    assert detail.loc[("vae", "site"), "score"] == pytest.approx(results[("vae", "site")]["score"])
    assert detail.loc[("vae", "site"), "chance"] == pytest.approx(results[("vae", "site")]["chance"])
    # known answers: both models encode the site, only the dae encodes the sex, nobody the age
    assert detail.loc[("vae", "site"), "verdict"] == "encoded"
    assert detail.loc[("dae", "sex"), "verdict"] == "encoded"
    assert detail.loc[("vae", "sex"), "verdict"] == "not distinguishable from chance"
    assert detail.loc[("dae", "age"), "verdict"] == "not distinguishable from chance"
    # a continuous verdict rests on the correlation's CI, shown beside it; classes have none
    age = results[("dae", "age")]
    assert detail.loc[("dae", "age"), "r [95% CI]"].startswith(f"{age['correlation']:.2f} [")
    assert detail.loc[("dae", "site"), "r [95% CI]"] == ""


def test_fairness_page_shows_groups_cis_and_gaps(store, monkeypatch) -> None:
    result = stored(store, "fairness")[0]
    at = run_page("fairness", store, monkeypatch)
    gaps = {m.label: m.value for m in at.metric}
    assert gaps["demographic parity difference"] == f"{result['demographic_parity_difference']:.3f}"
    groups = frames(at)[0].set_index("group")
    female = result["by_group"]["F"]
    assert groups.loc["F", "tpr"] == pytest.approx(female["tpr"])
    assert groups.loc["F", "tpr lo"] == pytest.approx(female["ci"]["tpr"][0])
    assert groups.loc["M", "n"] == result["by_group"]["M"]["n"]


def test_controls_page_draws_the_cross_site_matrix(store, monkeypatch) -> None:
    at = run_page("controls", store, monkeypatch)
    labels = [m.label for m in at.metric]
    assert "internal AUC" in labels and "external AUC" in labels
    assert any("control background" in c.value for c in at.code)  # background control not stored: hint


def test_clusters_page_names_clusters_by_enriched_attributes(store, monkeypatch) -> None:
    at = run_page("clusters", store, monkeypatch)
    overview = frames(at)[0]
    assert overview["size"].sum() == 300 and len(overview) == 3
    assert overview["name"].str.contains("site=").any()  # dae clusters follow the injected site
    # k-means is compared with Gaussian clouds of the same covariance: the page says what it found
    assert any("beyond a Gaussian cloud" in c.value for c in [*at.caption, *at.warning])
    at.button(key="cl_select").click().run()
    chosen = int(at.selectbox(key="cl_pick").value)
    assert len(at.session_state["selection"]) == int(overview.set_index("cluster").loc[chosen, "size"])


def test_neighbours_are_taken_in_latent_space_and_share_the_site(store, monkeypatch) -> None:
    at = run_page("neighbours", store, monkeypatch, focus_row=5)
    assert any("nearest neighbours in `vae` latent space" in m.value for m in at.markdown)
    agreement = frames(at)[-1].set_index("attribute")
    assert agreement.loc["site", "neighbours sharing it"] > 0.8  # the vae encodes site
    assert agreement.loc["site", "cohort share"] < 0.6


def test_compare_page_scores_neighbourhood_overlap(store, monkeypatch) -> None:
    at = run_page("compare", store, monkeypatch)
    overlap = float(at.metric[0].value)
    assert 0.0 < overlap < 1.0


def test_counterfactual_page_explains_a_missing_run_folder(store, monkeypatch) -> None:
    at = run_page("counterfactual", store, monkeypatch)
    assert "not on this machine" in at.warning[0].value


@pytest.mark.parametrize(
    ("page", "command"),
    [
        ("probes", "embedx probe "),
        ("fairness", "embedx fairness "),
        ("clusters", "embedx clusters "),
        ("controls", "embedx control cross-site "),
    ],
)
def test_missing_analyses_show_the_command_to_run(bare_store, monkeypatch, page, command) -> None:
    at = run_page(page, bare_store, monkeypatch)
    codes = [c.value for c in at.code]
    assert any(c.startswith(command) and str(bare_store) in c for c in codes), codes


def test_controls_page_summarises_a_background_control(bare_store, monkeypatch) -> None:
    # the shape `embedx control background --store` writes (fields as in embedx.analysis.background)
    result = {
        "control": "background",
        "model": "background-patches",
        "attribute": "site",
        "kind": "categorical",
        "metric": "balanced_accuracy",
        "score": 0.9731,
        "ci": [0.95, 0.99],
        "chance": 0.25,
        "p_value": 0.002,
        "encoded": True,
        "n": 60,
        "patch": 8,
        "positions": [[0, 0]],
        "verdict": "acquisition signature: the attribute is readable from blank background",
    }
    with Store.open(bare_store, "a") as handle:
        handle.write_analysis("controls", "background__site", result)
    at = run_page("controls", bare_store, monkeypatch)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["balanced accuracy"] == "0.973" and metrics["95 % CI"] == "[0.95, 0.99]"
    assert any("readable from blank background" in c.value for c in at.caption)


def test_probes_page_reads_each_model_beside_the_pixel_reference(store, tmp_path, monkeypatch) -> None:
    """A pixel reference that carries sex: the vae (whose latents have no sex axis) discards it."""
    from synthstore import latents

    from embedx.analysis.probes import ProbeConfig, run_probes

    copy = tmp_path / "with-pixels.h5"
    copy.write_bytes(store.read_bytes())
    with Store.open(copy, "a") as handle:
        z = latents(handle.attributes(), 8, with_sex=True, seed=7)
        handle.ensure_embedding("pixels", z.shape[1], {"kind": "pixels"})
        handle.write_latents("pixels", np.arange(handle.n), z)
    run_probes(copy, models=["pixels"], attributes=["site", "sex", "age"],
               config=ProbeConfig(n_permutations=300, n_bootstrap=200, folds=3, c_grid=(0.1, 1.0), seed=0))
    at = run_page("probes", copy, monkeypatch)
    table = next(f for f in frames(at) if "reading" in f.columns).set_index(["model", "attribute"])
    assert table.loc[("vae", "sex"), "reading"] == "discards"
    assert table.loc[("dae", "sex"), "reading"] in ("keeps", "keeps less", "amplifies")
    assert "pixels" not in table.index.get_level_values("model")
    assert any("vae discards sex" in m.value for m in at.markdown)


def test_controls_page_draws_the_shift_matrix_per_tier(bare_store, monkeypatch, tmp_path) -> None:
    # the shape `embedx experiment shift --dims 3 --store` writes (embedx.analysis.shift_volumes)
    groups = ["GE", "Siemens", "all"]
    summary = [
        {"tier": tier, "train": a, "test": b, "auroc_mean": 0.9 if a in (b, "all") else 0.6, "auroc_sd": 0.01,
         "specificity_mean": 0.95 if a in (b, "all") else 0.2, "specificity_sd": 0.02}
        for tier in ("easy", "hard") for a in groups for b in groups
    ]
    result = {
        "control": "shift", "experiment": "shift", "dims": 3, "task": "classify", "target": "finding",
        "by": "manufacturer", "headline": "auroc", "metrics": ["auroc", "specificity"],
        "tiers": ["easy", "hard"], "groups": groups[:2], "train_groups": groups, "summary": summary,
        "gaps": [{"tier": "easy", "train": "GE", "metric": "auroc", "own": 0.9, "others": 0.6, "gap": 0.3}],
        "settings": {"replicates": 2, "model": "MONAI 3-D ResNet (seed 001)"},
    }
    copy = tmp_path / "with-shift.h5"
    copy.write_bytes(bare_store.read_bytes())
    with Store.open(copy, "a") as handle:
        handle.write_analysis("controls", "shift__3d__classify__finding__manufacturer", result)
    at = run_page("controls", copy, monkeypatch)
    assert not at.exception
    assert any("finding by manufacturer: 3-D classify" in s.value for s in at.subheader)
    assert len(at.get("plotly_chart")) >= 2  # one matrix per tier
    frame = at.dataframe[-1].value
    assert list(frame["gap"]) == [0.3]
    # and the report renders the same result as a table and one figure per metric
    from embedx.report.sections import Collector, shift_section

    html = shift_section([result], Collector(tmp_path / "report"))
    assert "seed 001" in html and html.count("<figure>") == 2 and "<td>0.3" in html


def test_a_selection_made_elsewhere_is_shown_on_the_map(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster's "use as selection" (or another page's map) sets the kept selection; the map page, whose
    drawing has not changed, must still show it, not the selection it baked before."""
    import json

    from embedx.dashboard.map_payload import unpacked

    at = run_page("map", store, monkeypatch)
    first = json.loads(at.get("bidi_component")[0].proto.json)
    assert not first["any_selected"]
    chosen = np.arange(0, 300, 7)
    at.session_state["selection"] = chosen
    at.run()
    payload = json.loads(at.get("bidi_component")[0].proto.json)
    drawn = unpacked(payload["ids"], "<i4")
    flags = unpacked(payload["flags"], "u1")
    assert payload["any_selected"] and set(drawn[flags == 1]) == set(chosen)
