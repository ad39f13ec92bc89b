"""`embedx report` on a small store built from arrays: one self-contained HTML, report.json, PNG figures."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from embedx.analysis.calibration import CalibrationSettings
from embedx.analysis.results import PROBE_FIELDS
from embedx.cli import app
from embedx.data.schema import AttributeSpec
from embedx.report.builder import build_report, pick_site, pick_target
from embedx.store.h5store import Store, write_store_from_arrays

SCHEMA = {
    "site": AttributeSpec("site", "categorical", "acquisition"),
    "sex": AttributeSpec("sex", "binary", "demographic"),
    "age": AttributeSpec("age", "continuous", "demographic"),
    "finding": AttributeSpec("finding", "binary", "clinical"),
}


# The report calibrates a model that has no calibration stored. Its own suite checks calibration; here it only
# has to be present, so a small run stands in for `embedx calibrate`'s 200 + 200 labels.
LIGHT_CALIBRATION = CalibrationSettings(
    n_null=20, n_planted=20, prevalences=(0.2,), effects=(0.8,), correlations=(0.3,), probe_checks=2,
    probe_bootstrap=200,
)


def _probe(model: str, attribute: str, kind: str, score: float, chance: float, encoded: bool,
           rows_encoded: int | None = None) -> dict:
    metric = "mae" if kind == "continuous" else "balanced_accuracy"
    return {
        "rows_encoded": rows_encoded,
        "model": model,
        "attribute": attribute,
        "kind": kind,
        "metric": metric,
        "score": score,
        "ci": [score - 0.04, score + 0.04],
        "chance": chance,
        "p_value": 0.001 if encoded else 0.4,
        "encoded": encoded,
        "n": 300,
        "classes": {},
        "verdict": "encoded" if encoded else "not found",
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models; the 'vae' has a stored t-SNE map, probes and fairness, the 'dae' has nothing yet."""
    rng = np.random.default_rng(0)
    n_subjects = 160
    reps = rng.integers(1, 3, n_subjects)
    subjects = np.repeat([f"p{i}" for i in range(n_subjects)], reps)
    n = len(subjects)
    site_idx = np.repeat(rng.integers(0, 3, n_subjects), reps)
    finding = (rng.random(n) < np.array([0.15, 0.5, 0.85])[site_idx]).astype(float)
    attrs = pd.DataFrame(
        {
            "site": np.array(["north", "south", "east"])[site_idx],
            "sex": np.repeat(rng.choice(["F", "M"], n_subjects), reps),
            "age": np.repeat(rng.normal(60, 12, n_subjects), reps),
            "finding": finding,
        }
    )
    z = rng.normal(size=(n, 12)).astype(np.float32)
    z[np.arange(n), site_idx] += 3.0
    z[:, 4] += finding
    pixels = z.copy()  # the pixel reference carries sex too: both models discard it
    pixels[:, 8] += 2.5 * (attrs["sex"] == "F").to_numpy()
    folder = tmp_path_factory.mktemp("report")
    path = write_store_from_arrays(
        folder / "s.h5",
        [f"s{i}" for i in range(n)],
        subjects,
        attrs,
        SCHEMA,
        {"vae": z, "dae": z + rng.normal(size=z.shape).astype(np.float32), "pixels": pixels},
        thumbnails=rng.integers(0, 255, (n, 64, 64)).astype(np.uint8),
        embedding_attrs={
            "vae": {"kind": "vae", "checkpoint_hash": "c0ffee", "config": "model:\n  kind: vae\n",
                    "run_dir": "/home/jane.doe/runs/vae-7"},
            "dae": {"kind": "dae", "checkpoint_hash": "beef"},
            "pixels": {"kind": "pixels"},
        },
    )
    with Store.open(path, "a") as s:
        s.write_projection("vae", "tsne", z[:, :2], np.ones(n, dtype=np.int8), {"perplexity": 30})
        for p in (
            _probe("vae", "site", "categorical", 0.95, 1 / 3, True, n),
            _probe("vae", "sex", "binary", 0.51, 0.5, False, n),
            _probe("vae", "age", "continuous", 9.8, 9.9, False, n),
            _probe("vae", "finding", "binary", 0.7, 0.5, True, n),
            _probe("pixels", "site", "categorical", 0.95, 1 / 3, True, n),  # current: kept by the report
            _probe("pixels", "sex", "binary", 0.80, 0.5, True, n),
            _probe("pixels", "age", "continuous", 9.7, 9.9, False, n),
            _probe("pixels", "finding", "binary", 0.85, 0.5, True, n),
        ):
            s.write_analysis("probes", f"{p['model']}__{p['attribute']}", p)
        s.write_analysis(
            "fairness",
            "vae__finding__sex",
            {
                "target": "finding",
                "sensitive": "sex",
                "model": "vae",
                "by_group": {
                    "F": {"n": 150, "tpr": 0.8, "fpr": 0.1, "auc": 0.85, "ci": {"tpr": [0.7, 0.9]}},
                    "M": {"n": 140, "tpr": 0.6, "fpr": 0.2, "auc": 0.8, "too_small": False},
                },
                "demographic_parity_difference": 0.05,
                "equalized_odds_difference": 0.2,
            },
        )
    return path


@pytest.fixture(scope="module")
def built(store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out")
    document = build_report(
        store, out, n_bootstrap=100, probe_options={"n_permutations": 20, "n_bootstrap": 100},
        calibration=LIGHT_CALIBRATION,
    )
    return out, document


def test_html_is_one_self_contained_file(built: tuple[Path, dict]) -> None:
    out, _ = built
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') >= 6
    # Every image is embedded; nothing is fetched from elsewhere (no external CSS/JS, no file links).
    assert not re.search(r"<(script|link)\b", page)
    assert not re.search(r'src="(?!data:)', page)
    for section in ("Probes", "Fairness", "Clusters", "Control experiments", "Provenance", "Maps"):
        assert section in page
    assert "c0ffee" in page  # checkpoint hash in the provenance
    # the run by its folder's name: the folders above it may name people
    assert "vae-7" in page and "jane.doe" not in page


def test_report_json_has_design_card_probes_and_the_rest(built: tuple[Path, dict], store: Path) -> None:
    out, document = built
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data == document
    assert data["store"] == store.name and data["embedx_version"]
    assert {m["name"]: m["run_dir"] for m in data["provenance"]["models"]}["vae"] == "vae-7"
    family = {p["family_size"] for p in data["probes"] if not p.get("skipped")}
    assert len(family) == 1 and data["calibration"]  # one Holm family; the calibration made for it
    assert {c["family_size"] for c in data["calibration"]} == family
    models = {p["model"] for p in data["probes"]}
    assert models == {"vae", "dae", "pixels"}  # stored for the vae and pixels, run by the report for the dae
    for p in data["probes"]:
        assert set(PROBE_FIELDS) <= set(p)
    # the dae's probes are run by the report (the others are stored as an older embedx wrote them)
    continuous = [p for p in data["probes"] if p["kind"] == "continuous" and p["model"] == "dae"]
    assert continuous and all(len(p["correlation_ci"]) == 2 for p in continuous)
    html_text = (out / "report.html").read_text(encoding="utf-8")
    shown = continuous[0]
    assert "r [95% CI]" in html_text and f"{shown['correlation']:.2f} [" in html_text
    assert data["fairness"][0]["sensitive"] == "sex"
    assert data["target"] == "finding"
    assert {c["model"] for c in data["clusters"]} == {"vae", "dae"}
    assert all("labels" not in c for c in data["clusters"])
    cross = data["controls"]["cross_site"]
    assert {c["model"] for c in cross} == {"vae", "dae"}  # one matrix per model
    assert all(c["target"] == "finding" and c["site"] == "site" and len(c["matrix"]) == 3 for c in cross)
    factors = [c["internal_vs_external"]["widening"]["factor"] for c in cross]
    assert all(f >= 1 for f in factors) and f"widened ×{factors[0]:.2f}" in html_text
    assert {d["model"] for d in data["controls"]["distribution"]} == {"vae", "dae"}
    assert [m["checkpoint_hash"] for m in data["provenance"]["models"]] == ["c0ffee", "beef", None]
    assert any("PCA computed" in n or "PCA" in n for n in data["notes"])  # the dae had no stored map
    assert any("background-patch control" in n for n in data["notes"])


def test_png_figures_are_written(built: tuple[Path, dict]) -> None:
    out, document = built
    files = [f["file"] for f in document["figures"]]
    for expected in (
        "figures/probes.png",
        "figures/map_vae_tsne.png",
        "figures/cross_site_vae_finding_site.png",
        "figures/cross_site_dae_finding_site.png",
        "figures/fairness_vae_finding_sex.png",
    ):
        assert expected in files
    for name in files:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_target_and_site_rules() -> None:
    assert pick_target(SCHEMA) == "finding"
    assert pick_target({k: v for k, v in SCHEMA.items() if k != "finding"}) is None
    assert pick_site(SCHEMA) == "site"
    assert pick_site({"manufacturer": AttributeSpec("manufacturer", "categorical", "acquisition")}) is None


def test_cli_report_clusters_and_controls(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(store), "--out", str(tmp_path / "r"), "--no-run"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.html").exists()
    result = runner.invoke(
        app, ["clusters", str(store), "--model", "vae", "--json", str(tmp_path / "c.json")]
    )
    assert result.exit_code == 0, result.output
    assert "site=" in result.output
    result = runner.invoke(app, ["control", "distribution", str(store), "--model", "vae"])
    assert result.exit_code == 0, result.output
    assert "site:" in result.output
    result = runner.invoke(
        app,
        [
            "control",
            "cross-site",
            str(store),
            "--target",
            "finding",
            "--bootstrap",
            "50",
            "--png",
            str(tmp_path / "cs.png"),
            "--json",
            str(tmp_path / "cs.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cs.json").read_text())["sites"] == ["east", "north", "south"]
    assert "by site-permuted refits" in result.output  # the headline says why its interval is wide
    assert (tmp_path / "cs.png").read_bytes()[:4] == b"\x89PNG"


def test_a_pilot_cohort_gets_a_report_that_says_what_it_left_out(tmp_path: Path) -> None:
    """12 images of 12 patients: probes are skipped or thin, fairness and calibration are skipped with a
    reason, and the report is still written."""
    rng = np.random.default_rng(3)
    n = 12
    path = write_store_from_arrays(
        tmp_path / "pilot.h5",
        [f"i{i}" for i in range(n)],
        [f"p{i}" for i in range(n)],
        pd.DataFrame(
            {
                "site": rng.choice(["a", "b", "c", "d"], n),
                "sex": ["F", "M"] * 6,
                "age": rng.normal(60, 10, n),
                "finding": [0.0, 1.0, 0.0] * 4,
            }
        ),
        SCHEMA,
        {"vae": rng.normal(size=(n, 8)).astype(np.float32)},
    )
    with Store.open(path, "a") as store:  # an encode that could not read 3 images: the report must say so
        store.set_embedding_attrs("vae", n_failed=3)
    doc = build_report(path, tmp_path / "out", probe_options={"n_permutations": 50, "n_bootstrap": 50},
                       calibration=LIGHT_CALIBRATION)
    assert (tmp_path / "out" / "report.html").is_file()
    notes = " ".join(doc["notes"])
    assert "vae: 3 image(s) could not be read by its last encode" in notes
    assert "calibration of vae skipped" in notes and "fairness for target 'finding' skipped" in notes
    finding = next(p for p in doc["probes"] if p["attribute"] == "finding")  # 4 positive patients of 12
    assert finding["skipped"].startswith("fewer than 2 classes") and not finding["encoded"]
    assert not any(p["encoded"] for p in doc["probes"])  # noise latents: nothing is found


def test_partial_and_stale_analyses_are_recomputed_not_reused(tmp_path: Path) -> None:
    """Probes of one attribute, run while the encode was half done: the report probes every attribute on
    every row encoded now, and says so."""
    from embedx.analysis.probes import ProbeConfig, run_probes

    rng = np.random.default_rng(4)
    n = 240
    site = rng.choice(["a", "b"], n)
    z = rng.normal(size=(n, 6)).astype(np.float32) + 1.5 * (site == "a")[:, None]
    half = z.copy()
    half[120:] = np.nan  # an encode stopped halfway
    path = write_store_from_arrays(
        tmp_path / "s.h5",
        [f"i{i}" for i in range(n)],
        [f"p{i}" for i in range(n)],
        pd.DataFrame({"site": site, "sex": rng.choice(["F", "M"], n)}),
        None,
        {"m": half},
    )
    run_probes(path, attributes=["site"], config=ProbeConfig(n_permutations=99, n_bootstrap=100))
    with Store.open(path, "a") as store:
        store.write_latents("m", np.arange(120, n), z[120:])  # the encode finishes
    doc = build_report(path, tmp_path / "out", probe_options={"n_permutations": 200, "n_bootstrap": 100},
                       calibration=LIGHT_CALIBRATION)
    by = {p["attribute"]: p for p in doc["probes"]}
    assert set(by) == {"site", "sex"}
    assert by["site"]["n"] == n and by["site"]["rows_encoded"] == n
    assert any("recomputed" in note and "encoded since" in note for note in doc["notes"])


def test_each_model_is_read_beside_the_pixel_reference(built: tuple[Path, dict]) -> None:
    out, document = built
    by = {(c["model"], c["attribute"]): c for c in document["reference"]}
    assert {m for m, _ in by} == {"vae", "dae"}  # the reference is the yardstick, not a row of its own
    assert by[("vae", "sex")]["reading"] == "discards"
    assert by[("vae", "site")]["reading"] == "keeps"  # same score and interval
    assert by[("vae", "site")]["kept"] == pytest.approx(1.0)
    assert by[("vae", "age")]["reading"] == "neither"
    assert by[("vae", "finding")]["reading"] == "keeps less"  # 0.70 [0.66, 0.74] vs 0.85 [0.81, 0.89]
    assert by[("vae", "finding")]["kept"] == pytest.approx(0.2 / 0.35)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "vae discards sex: the pixels carry it, its latents do not show it" in page
    assert 'id="reference"' in page


def test_probes_with_too_few_permutations_for_the_reports_family_get_no_verdict_or_are_rerun(
    tmp_path: Path,
) -> None:
    """A site the latents carry plainly, probed with 30 permutations: Holm over the report's tests cannot pass
    it, which must read as no verdict (not 'not distinguishable from chance'); run_missing reruns it with
    enough permutations for the report's family, and it is then encoded."""
    from embedx.analysis.probes import ProbeConfig, run_probes

    rng = np.random.default_rng(5)
    n = 240
    site = rng.choice(["a", "b"], n)
    z = rng.normal(size=(n, 6)).astype(np.float32) + 1.5 * (site == "a")[:, None]
    path = write_store_from_arrays(
        tmp_path / "s.h5", [f"i{i}" for i in range(n)], [f"p{i}" for i in range(n)],
        pd.DataFrame({"site": site, "sex": rng.choice(["F", "M"], n)}), None, {"m": z},
    )  # fmt: skip
    run_probes(path, config=ProbeConfig(n_permutations=30, n_bootstrap=100))
    kept = build_report(path, tmp_path / "kept", run_missing=False)
    site_probe = next(p for p in kept["probes"] if p["attribute"] == "site")
    assert not site_probe["encoded"] and site_probe["verdict"].startswith("no verdict: 30 permutations")
    assert sum("permutations" in note for note in kept["notes"]) == 1, kept["notes"]  # said once
    summary = (tmp_path / "kept" / "report.html").read_text(encoding="utf-8")
    assert "<b>No verdict</b> (see each probe&#x27;s verdict): sex, site." in summary

    rerun = build_report(path, tmp_path / "rerun", probe_options={"n_bootstrap": 100},
                         calibration=LIGHT_CALIBRATION)
    site_probe = next(p for p in rerun["probes"] if p["attribute"] == "site")
    assert site_probe["encoded"] and site_probe["permutation"]["permutations"] >= 1000
    assert any("too few permutations" in note for note in rerun["notes"])


def test_a_probes_own_notes_are_listed_under_the_probe_tables(tmp_path: Path) -> None:
    """A continuous attribute with entry errors, a merged class: the CLI prints these under its table; the
    report printed the verdict without them."""
    from embedx.report.sections import Collector, probe_section

    sex = _probe("vae", "sex", "binary", 0.5, 0.5, False, 300)
    bmi = {**_probe("vae", "bmi", "continuous", 1.4e8, 2.0, False, 300),
           "notes": ["values of 3 subject(s) lie more than 20 interquartile ranges beyond the quartiles"]}
    page = probe_section([bmi, sex], Collector(tmp_path))
    assert "Notes on these probes" in page and "vae / bmi: values of 3 subject(s) lie" in page
    assert "Notes on these probes" not in probe_section([sex], Collector(tmp_path))


def test_an_encoded_sites_classes_are_ranked_under_the_probe_tables(tmp_path: Path) -> None:
    """'site encoded' says nothing of which site: the report lists each class's one-vs-rest AUC."""
    from embedx.analysis.tables import CLASS_SEPARATION_TITLE
    from embedx.report.sections import Collector, probe_section

    site = {**_probe("vae", "site", "categorical", 0.6, 1 / 3, True, 300),
            "class_auc": {"C": 0.94, "A": 0.58, "B": 0.55}}
    page = probe_section([site], Collector(tmp_path))
    assert html.escape(CLASS_SEPARATION_TITLE) in page and "vae/site: C 0.94 · A 0.58 · B 0.55" in page
    quiet = probe_section([{**site, "encoded": False}], Collector(tmp_path))
    assert html.escape(CLASS_SEPARATION_TITLE) not in quiet


def test_power_cells_say_estimated_and_untestable_as_the_terminal_does() -> None:
    """2/15 with power 0.17 read as a contradiction: an estimated cell is marked and says what it counted."""
    from embedx.report.sections import power_cell

    exact = {"power": 0.4, "ci": [0.2, 0.6], "found": 6, "n_labels": 15}
    assert power_cell(exact) == "0.40 [0.20, 0.60] (6/15)"
    estimated = {**exact, "power": 0.17, "found": 2, "found_estimated": True, "passed_p": 5,
                 "probe_checked": 3, "probe_confirmed": 1}
    assert power_cell(estimated).startswith("~0.17 [0.20, 0.60] (estimated: 5/15 passed p, 1 of 3 re-run")
    assert "(2/15)" not in power_cell(estimated)
    assert power_cell({**exact, "untestable": "too few", "positive_subjects": 3}) == "untestable (3 subjects)"
