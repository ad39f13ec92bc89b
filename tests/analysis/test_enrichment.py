"""Known-answer tests for selection / cluster enrichment (what the dashboard's lasso and clusters report)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.analysis.enrichment import COLUMNS, bh_adjust, enrichment, one_per_subject, top_enriched
from embedx.data.schema import AttributeSpec
from embedx.errors import EmbedxError

SCHEMA = {
    "site": AttributeSpec("site", "categorical", "acquisition"),
    "sex": AttributeSpec("sex", "binary", "demographic"),
    "age": AttributeSpec("age", "continuous", "demographic"),
    "finding": AttributeSpec("finding", "binary", "clinical"),
}


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 2000
    frame = pd.DataFrame(
        {
            "site": rng.choice(["north", "south", "east", "west"], n),
            "sex": rng.choice(["F", "M"], n),
            "age": rng.normal(60, 10, n),
            "finding": rng.choice([0.0, 1.0], n),
        }
    )
    frame.loc[rng.random(n) < 0.05, "age"] = np.nan  # missing values are allowed and counted
    return frame


def test_over_represented_value_is_top_and_significant(cohort: pd.DataFrame) -> None:
    rng = np.random.default_rng(1)
    south = np.flatnonzero(cohort["site"].to_numpy() == "south")
    other = np.flatnonzero(cohort["site"].to_numpy() != "south")
    chosen = np.concatenate([rng.choice(south, 140, replace=False), rng.choice(other, 60, replace=False)])
    mask = np.zeros(len(cohort), dtype=bool)
    mask[chosen] = True
    table = enrichment(cohort, mask, SCHEMA)
    assert list(table.columns) == COLUMNS
    top = top_enriched(table)
    assert top.iloc[0]["attribute"] == "site" and top.iloc[0]["value"] == "south"
    assert top.iloc[0]["q_value"] < 0.05
    # 70 % in the selection against ~20 % in the rest: fold ~3.5, odds-ratio CI well above 1.
    assert 2.5 < top.iloc[0]["fold"] < 4.5
    assert top.iloc[0]["or_ci_low"] > 1
    assert top.iloc[0]["cramers_v"] > 0.2
    # The other sites are depleted, not enriched; nothing unrelated is flagged.
    flagged = table[table["significant"]]
    assert set(flagged["attribute"]) == {"site"}
    assert (flagged[flagged["value"] != "south"]["direction"] == "under").all()


def test_random_selection_gives_nothing_significant(cohort: pd.DataFrame) -> None:
    mask = np.random.default_rng(3).random(len(cohort)) < 0.1
    table = enrichment(cohort, mask, SCHEMA)
    assert not table["significant"].any()
    assert top_enriched(table).empty
    assert table["q_value"].min() > 0.05


def test_continuous_shift_and_missing_counts(cohort: pd.DataFrame) -> None:
    age = cohort["age"].to_numpy()
    mask = (
        np.nan_to_num(age, nan=0) > 70
    )  # the oldest ~16 %: age clearly shifted, missing ages never selected
    row = enrichment(cohort, mask, SCHEMA).set_index("attribute").loc["age"]
    assert row["test"] == "mannwhitney" and row["significant"]
    assert row["median_shift"] > 10 and row["ks_statistic"] > 0.9
    assert row["missing_rest"] == int(np.isnan(age).sum()) and row["missing_selected"] == 0


def test_sparse_tables_use_fisher_and_binary_values_print_as_integers() -> None:
    frame = pd.DataFrame({"rare": ["x"] * 6 + ["y"] * 194, "finding": [1.0] * 100 + [0.0] * 100})
    mask = np.zeros(200, dtype=bool)
    mask[:10] = True  # all six "x" are inside a 10-sample selection
    table = enrichment(frame, mask)
    x = table[(table["attribute"] == "rare") & (table["value"] == "x")].iloc[0]
    assert x["test"] == "fisher" and x["q_value"] < 0.05
    assert set(table[table["attribute"] == "finding"]["value"]) == {"0", "1"}


def test_degenerate_selections_and_bad_masks(cohort: pd.DataFrame) -> None:
    assert enrichment(cohort, np.zeros(len(cohort), bool)).empty
    assert enrichment(cohort, np.ones(len(cohort), bool)).empty
    with pytest.raises(EmbedxError, match="one flag per store row"):
        enrichment(cohort, np.ones(5, bool))
    with pytest.raises(EmbedxError, match="unknown attribute"):
        enrichment(cohort, np.ones(len(cohort), bool), columns=["scanner"])


def test_bh_matches_the_textbook_procedure() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    q = bh_adjust(p)
    # sorted p 0.005, 0.01, 0.03, 0.04 with m = 4: q = min over k>=i of p_(k) m / k
    assert np.allclose(q[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(q[4])


def test_subject_level_tests_do_not_count_one_patient_many_times() -> None:
    """Two patients with 30 images each, both from 'south', selected: 60 images look overwhelming, but they
    are two independent observations. Image-level testing calls it significant; with ``groups`` it is not,
    while the shares and the fold still describe all 60 images."""
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"p{i}" for i in range(40)], 30)
    site = np.repeat(rng.choice(["north", "south", "east", "west"], 40), 30)
    south_subjects = np.unique(subjects[site == "south"])[:2]
    mask = np.isin(subjects, south_subjects)
    frame = pd.DataFrame({"site": site})
    image_level = enrichment(frame, mask).set_index("value").loc["south"]
    subject_level = enrichment(frame, mask, groups=subjects).set_index("value").loc["south"]
    assert image_level["significant"]
    assert not subject_level["significant"] and subject_level["units_tested"] == 40
    assert subject_level["n_selected"] == 60 and subject_level["fold"] == image_level["fold"]


def test_odds_ratio_and_its_interval_come_from_the_same_units() -> None:
    """With subjects given and every subject wholly in or out of the selection, the test, odds ratio and
    interval are those of the 2 x 2 table of all subjects, so the ratio lies inside its own interval."""
    rng = np.random.default_rng(3)
    subjects = np.repeat([f"p{i}" for i in range(120)], rng.integers(1, 8, 120))
    per_subject = dict(zip(np.unique(subjects), rng.choice(["a", "b"], 120), strict=True))
    site = pd.Series(subjects).map(per_subject).to_numpy()
    picked = {s for s in np.unique(subjects) if rng.random() < (0.6 if per_subject[s] == "a" else 0.2)}
    mask = np.isin(subjects, list(picked))
    rows = enrichment(pd.DataFrame({"site": site}), mask, groups=subjects).set_index("value")
    a = np.array([per_subject[s] == "a" for s in np.unique(subjects)])
    selected = np.isin(np.unique(subjects), list(picked))
    table = [[np.sum(a & selected), np.sum(~a & selected)], [np.sum(a & ~selected), np.sum(~a & ~selected)]]
    expected = table[0][0] * table[1][1] / (table[0][1] * table[1][0])
    assert rows.loc["a", "odds_ratio"] == pytest.approx(expected)  # every subject once, not images
    for row in rows.itertuples():
        assert row.or_ci_low <= row.odds_ratio <= row.or_ci_high
        assert row.units_tested == 120


def test_split_subjects_are_tested_on_their_shares_as_scipy_tests_them() -> None:
    """Subjects whose images fall partly in the selection: each value's subjects' shares against the rest's
    by Mann-Whitney (scipy's, continuity-corrected; below p = 0.05 its permutation p, as scipy's
    permutation test of the rank sum gives it) and the attribute by Kruskal-Wallis (scipy's). Every subject
    has 4 images, so there is one image-count stratum (`test_share_strata.py` tests several)."""
    from scipy import stats

    rng = np.random.default_rng(8)
    sizes = np.full(200, 4)
    subjects = np.repeat(np.arange(200), sizes)
    value = rng.choice(["x", "y", "z"], 200, p=[0.5, 0.4, 0.1])
    mask = rng.random(len(subjects)) < np.where(value[subjects] == "z", 0.5, 0.3)
    rows = enrichment(pd.DataFrame({"v": value[subjects]}), mask, groups=subjects).set_index("value")
    share = np.bincount(subjects[mask], minlength=200) / sizes
    for v in ("x", "y", "z"):
        expected = stats.mannwhitneyu(share[value == v], share[value != v], use_continuity=True,
                                      method="asymptotic")
        if expected.pvalue >= 0.05:
            assert rows.loc[v, "p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
            assert rows.loc[v, "test"] == "mannwhitney (subject shares)"
            continue
        assert "permutation p" in rows.loc[v, "test"]
        ranks = stats.rankdata(share)
        inside = value == v

        def deviation(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
            return np.abs(x.sum(axis=axis) - x.shape[axis] * (len(share) + 1) / 2)

        scipy_p = stats.permutation_test((ranks[inside], ranks[~inside]), deviation, alternative="greater",
                                         permutation_type="independent", n_resamples=20_000,
                                         rng=np.random.default_rng(1)).pvalue
        assert rows.loc[v, "p_value"] == pytest.approx(scipy_p, rel=0.4, abs=3e-4)
    assert any("permutation p" in t for t in rows["test"])  # the case exercises both paths
    samples = [share[value == v] for v in ("x", "y", "z")]
    kruskal = stats.kruskal(*samples)
    assert kruskal.pvalue < 0.05  # below 0.05 it is a permutation p, as scipy's permutation test gives it
    scipy_p = stats.permutation_test(samples, lambda *x, axis: stats.kruskal(*x, axis=axis).statistic,
                                     alternative="greater", permutation_type="independent",
                                     n_resamples=10_000, rng=np.random.default_rng(2)).pvalue
    assert rows.loc["x", "attribute_p"] == pytest.approx(scipy_p, rel=0.4)


def test_subject_shares_keep_the_size_and_find_what_one_drawn_image_misses() -> None:
    """300 subjects x 8 images, a value on 10 % of them, each of their images selected with probability
    0.3 against 0.2 for the others: one drawn image per subject found it 23 % of the time (a review's
    figure), every subject's share ~90 %. Under the null (0.2 for all), p < 0.05 stays near 5 %."""
    rng = np.random.default_rng(12)
    subjects = np.repeat(np.arange(300), 8)

    def rate(p_value_subjects: float, reps: int) -> float:
        hits = 0
        for _ in range(reps):
            flagged = rng.random(300) < 0.1
            chance = np.where(flagged, p_value_subjects, 0.2)[subjects]
            mask = rng.random(len(subjects)) < chance
            frame = pd.DataFrame({"t": np.where(flagged, "yes", "no")[subjects]})
            row = enrichment(frame, mask, groups=subjects).set_index("value").loc["yes"]
            hits += bool(row["p_value"] < 0.05)
        return hits / reps

    assert rate(0.2, 200) <= 0.085
    assert rate(0.3, 40) >= 0.7


def test_precomputed_units_and_categorical_codes_give_the_same_table(cohort: pd.DataFrame) -> None:
    """The explorer tests each lasso with the cohort's units drawn once and its columns as categoricals:
    the table must be the one that subject ids and plain values give."""
    rng = np.random.default_rng(4)
    subjects = np.array([f"p{i}" for i in rng.integers(0, len(cohort) // 3, len(cohort))])
    table = cohort.copy()
    table["flag"] = rng.integers(0, 2, len(table)).astype(float)  # binary codes kept as floats
    table.loc[table.index[::17], "site"] = None  # missing values
    schema = {**SCHEMA, "flag": AttributeSpec("flag", "binary", "clinical")}
    selected = rng.random(len(table)) < 0.2
    plain = enrichment(table, selected, schema, groups=subjects)
    coded = table.copy()
    for name in ("site", "sex", "finding", "flag"):
        coded[name] = coded[name].astype("category")
    fast = enrichment(coded, selected, schema, units=one_per_subject(subjects))
    pd.testing.assert_frame_equal(fast, plain)
    assert (plain["units_tested"] == len(np.unique(subjects))).all()
    with pytest.raises(EmbedxError, match="units"):
        enrichment(table, selected, schema, units=np.array([0, len(table)]))


@pytest.mark.parametrize("n_selected", [1, 7, 300, 1900])
def test_rank_statistics_ranked_once_match_scipy(n_selected: int) -> None:
    """Mann-Whitney U, its two-sided asymptotic p and the KS statistic come from ranks computed once per
    cohort; they must be scipy's, with ties, missing values and lopsided selections."""
    from scipy import stats

    rng = np.random.default_rng(n_selected)
    age = rng.normal(60, 10, 2000).round()  # many ties
    age[rng.random(2000) < 0.05] = np.nan
    selected = np.zeros(2000, dtype=bool)
    selected[rng.choice(2000, n_selected, replace=False)] = True
    (row,) = enrichment(pd.DataFrame({"age": age}), selected, SCHEMA).to_dict("records")
    present = np.isfinite(age)
    inside, outside = age[present & selected], age[present & ~selected]
    if inside.size == 0:
        assert row["test"] == "none"
        return
    mw = stats.mannwhitneyu(inside, outside, alternative="two-sided", method="asymptotic")
    assert row["statistic"] == pytest.approx(mw.statistic, rel=1e-12)
    assert row["p_value"] == pytest.approx(mw.pvalue, rel=1e-9, abs=1e-300)
    assert row["ks_statistic"] == pytest.approx(stats.ks_2samp(inside, outside).statistic, rel=1e-12)
    assert row["median_selected"] == np.median(inside) and row["median_rest"] == np.median(outside)


def test_rank_statistics_from_selected_positions_match_scipy_over_many_tied_cohorts() -> None:
    """The selection's medians, U and KS come from its own rows' places in value order (never a pass over
    the rest): over many small cohorts with heavy ties, missing values and selections from one row to all
    but one, each must be scipy's / numpy's on the explicit two samples."""
    from scipy import stats

    rng = np.random.default_rng(11)
    for case in range(300):
        n = int(rng.integers(2, 60))
        values = rng.integers(0, int(rng.integers(1, 6)), n).astype(float)  # 1 to 5 distinct values
        values[rng.random(n) < 0.15] = np.nan
        selected = np.zeros(n, dtype=bool)
        selected[rng.choice(n, int(rng.integers(1, n)), replace=False)] = True
        (row,) = enrichment(pd.DataFrame({"age": values}), selected, SCHEMA).to_dict("records")
        present = np.isfinite(values)
        inside, outside = values[present & selected], values[present & ~selected]
        assert (row["missing_selected"], row["missing_rest"]) == (
            int((selected & ~present).sum()), int((~selected & ~present).sum())), case
        if inside.size == 0 or outside.size == 0:
            assert row["test"] == "none", case
            continue
        assert row["median_selected"] == np.median(inside) and row["median_rest"] == np.median(outside), case
        ks = stats.ks_2samp(inside, outside).statistic
        assert row["ks_statistic"] == pytest.approx(ks, abs=1e-12), case
        mw = stats.mannwhitneyu(inside, outside, alternative="two-sided", method="asymptotic")
        assert row["statistic"] == pytest.approx(mw.statistic, rel=1e-12), case
        if np.isfinite(mw.pvalue):
            assert row["p_value"] == pytest.approx(mw.pvalue, rel=1e-9, abs=1e-300), case


def test_cohort_tests_carry_nothing_from_one_selection_to_the_next(cohort: pd.DataFrame) -> None:
    """One prepared cohort, many selections (clusters, lassos): each table is the one a fresh call gives."""
    from embedx.analysis.enrichment import CohortTests

    subjects = np.arange(len(cohort)) // 2
    tests = CohortTests(cohort, SCHEMA, groups=subjects)
    rng = np.random.default_rng(9)
    for share in (0.01, 0.3, 0.9):
        selected = rng.random(len(cohort)) < share
        fresh = enrichment(cohort, selected, SCHEMA, groups=subjects)
        pd.testing.assert_frame_equal(tests.table(selected), fresh)
    with pytest.raises(EmbedxError, match="one flag per store row"):
        tests.table(np.ones(3, dtype=bool))


def test_many_null_selections_are_found_at_about_the_nominal_rate_and_a_rare_real_one_is_found() -> None:
    """The lasso's verdicts under the null and under a rare effect, through the prepared cohort the explorer
    uses (subject-level units, selection-sized work): over hundreds of random selections of 1-50 % of the
    subjects, with a 6 %-prevalence finding and a 3-level site, p < 0.05 comes out about 5 % of the time for
    Mann-Whitney and at most that for the (conservative) Yates / Fisher 2x2 tests; a selection where the
    rare finding is 4x as common is found nearly always."""
    from embedx.analysis.enrichment import CohortTests

    rng = np.random.default_rng(21)
    subjects = np.repeat(np.arange(1500), 2)  # two images per patient, selected together as a lasso would
    per_subject = pd.DataFrame({
        "site": rng.choice(["north", "south", "east"], 1500, p=[0.6, 0.3, 0.1]),
        "age": rng.normal(60, 12, 1500).round(),  # ties, as ages in years have
        "finding": (rng.random(1500) < 0.06).astype(float),
    })
    cohort = per_subject.iloc[subjects].reset_index(drop=True)
    tests = CohortTests(cohort, SCHEMA, groups=subjects)
    null_p: dict[str, list[float]] = {"age": [], "finding": [], "site": []}
    for _ in range(400):
        share = float(rng.uniform(0.01, 0.5))
        picked = rng.random(1500) < share
        table = tests.table(picked[subjects]).set_index(["attribute", "value"])
        null_p["age"].append(table.loc[("age", ""), "p_value"])
        null_p["finding"].append(table.loc[("finding", "1"), "p_value"])
        null_p["site"].extend(table.loc["site", "p_value"].tolist())
    rates = {name: float(np.mean(np.asarray(p) < 0.05)) for name, p in null_p.items()}
    assert 0.025 <= rates["age"] <= 0.08, rates
    assert rates["finding"] <= 0.075 and rates["site"] <= 0.075, rates
    assert rates["site"] >= 0.01, rates  # conservative, not dead
    found = 0
    positives = np.flatnonzero(per_subject["finding"].to_numpy() == 1)
    negatives = np.flatnonzero(per_subject["finding"].to_numpy() == 0)
    for _ in range(50):  # 120 patients, a quarter of them with the finding (6 % in the cohort)
        chosen = np.r_[rng.choice(positives, 30, replace=False), rng.choice(negatives, 90, replace=False)]
        picked = np.isin(subjects, chosen)
        row = tests.table(picked).set_index(["attribute", "value"]).loc[("finding", "1")]
        found += bool(row["q_value"] < 0.05 and row["direction"] == "over")
    assert found >= 45, found


def test_cramers_v_comes_from_the_tested_subjects_not_from_images() -> None:
    """V describes the association the test judges, so it is computed on the same units: the subject table
    (whole subjects), the share-weighted subject table (split subjects), the drawn image per subject (an
    attribute that varies within a subject, and continuous ones: |rank-biserial|). On images a patient
    with 11 images counts 11 times, which inflated the report's V (median top V 0.20 in null cohorts)."""
    from scipy import stats

    from embedx.analysis.enrichment import CohortTests

    rng = np.random.default_rng(4)
    n_subjects = 200
    sizes = rng.integers(1, 12, n_subjects)
    subjects = np.repeat(np.arange(n_subjects), sizes)
    site = rng.choice(["a", "b", "c"], n_subjects)
    frame = pd.DataFrame({
        "site": site[subjects],
        "view": rng.choice(["PA", "AP", "LAT"], len(subjects)),
        "age": rng.normal(60, 10, n_subjects)[subjects] + rng.normal(0, 1, len(subjects)),
    })
    schema = {**SCHEMA, "view": AttributeSpec("view", "categorical", "acquisition")}
    tests = CohortTests(frame, schema, groups=subjects)

    def v_of(table: np.ndarray) -> float:
        chi2 = stats.chi2_contingency(table, correction=False)[0]
        return float(np.sqrt(chi2 / table.sum()))

    # whole subjects: picked with a preference for site a (and for large subjects, so images and subjects
    # disagree)
    whole = rng.random(n_subjects) < np.where(site == "a", 0.5, 0.25) * np.where(sizes > 6, 1.5, 0.7)
    rows = tests.table(whole[subjects]).drop_duplicates("attribute").set_index("attribute")
    subject_table = pd.crosstab(site, whole).to_numpy()
    image_table = pd.crosstab(site[subjects], whole[subjects]).to_numpy()
    assert rows.loc["site", "cramers_v"] == pytest.approx(v_of(subject_table), rel=1e-9)
    assert abs(v_of(image_table) - v_of(subject_table)) > 0.02  # the two units really differ here

    # the drawn image per subject for an attribute that varies within subjects, and for continuous ones
    units = one_per_subject(subjects, 0)
    view_table = pd.crosstab(frame["view"].to_numpy()[units], whole[subjects][units]).to_numpy()
    assert rows.loc["view", "cramers_v"] == pytest.approx(v_of(view_table), rel=1e-9)
    age, inside = frame["age"].to_numpy()[units], whole[subjects][units]
    u1 = stats.mannwhitneyu(age[inside], age[~inside]).statistic
    expected = abs(2 * u1 / (inside.sum() * (~inside).sum()) - 1)
    assert rows.loc["age", "cramers_v"] == pytest.approx(expected, rel=1e-9)

    # split subjects: the table of share-weighted subject counts (a subject with 3 of 4 images inside
    # counts 0.75 inside and 0.25 outside)
    split = rng.random(len(subjects)) < np.where(site[subjects] == "a", 0.45, 0.3)
    rows = tests.table(split).drop_duplicates("attribute").set_index("attribute")
    share = np.bincount(subjects[split], minlength=n_subjects) / sizes
    weighted = np.array([[share[site == s].sum(), (1 - share[site == s]).sum()] for s in ("a", "b", "c")])
    assert rows.loc["site", "cramers_v"] == pytest.approx(v_of(weighted), rel=1e-9)


def test_attribute_q_corrects_each_attributes_own_test_across_the_attributes(cohort: pd.DataFrame) -> None:
    """One test per attribute (its attribute_p), Benjamini-Hochberg across the attributes of the call; the
    value rows of an attribute share its q. Without correction (pooled by the caller) it is NaN."""
    from embedx.analysis.enrichment import attribute_bh

    selected = (cohort["site"] == "north").to_numpy() | (np.arange(len(cohort)) % 7 == 0)
    table = enrichment(cohort, selected, SCHEMA)
    per_attribute = table.groupby("attribute")["attribute_p"].first()
    expected = dict(zip(per_attribute.index, bh_adjust(per_attribute.to_numpy()), strict=True))
    for row in table.itertuples():
        assert row.attribute_q == pytest.approx(expected[row.attribute])
    assert table["attribute_q"].min() < 1e-6  # site: found
    assert np.isnan(enrichment(cohort, selected, SCHEMA, correct=False)["attribute_q"]).all()
    pooled = pd.concat([table.assign(cluster=0), table.assign(cluster=1)])
    q = attribute_bh(pooled, ("cluster", "attribute"))  # twice the tests: larger q
    assert (q >= np.r_[table["attribute_q"], table["attribute_q"]] - 1e-12).all()
