"""ComBat: removes an injected site shift and scale, keeps a covariate, and never looks at test rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedx.analysis.combat import ComBat, fold_harmoniser, probe_after_combat, run_confound_controls
from embedx.analysis.probes import ProbeConfig
from embedx.errors import EmbedxError
from embedx.store.h5store import Store

FAST = ProbeConfig(n_permutations=200, n_bootstrap=300, c_grid=(0.1, 1.0))


def _cohort(
    seed: int = 0, n_subjects: int = 240, dim: int = 16
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Latents = biology (sex: 3 features, age: 2) + site shift + site-scaled noise (ComBat's own model)."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), 2)
    sex = rng.choice(["F", "M"], n_subjects)[subject]
    age = rng.uniform(20, 80, n_subjects)[subject]
    site = rng.choice(["a", "b", "c"], n_subjects)[subject]
    noise = rng.normal(size=(len(subject), dim))
    biology = np.zeros_like(noise)
    biology[:, :3] += 1.5 * (sex == "M")[:, None]
    biology[:, 3:5] += ((age - 50) / 15)[:, None]
    shift = rng.normal(0, 1.5, size=(3, dim))
    scale = rng.uniform(0.5, 2.0, size=(3, dim))
    codes = np.searchsorted(["a", "b", "c"], site)
    X = biology + noise * scale[codes] + shift[codes]
    frame = pd.DataFrame({"site": site, "sex": sex, "age": age})
    return X, frame, subject.astype(str)


def test_combat_removes_site_location_and_scale_but_keeps_sex() -> None:
    X, frame, _ = _cohort()
    out = ComBat().fit_transform(X, frame["site"], frame[["sex", "age"]])
    site_means = np.vstack([out[frame["site"] == s].mean(axis=0) for s in "abc"])
    site_sds = np.vstack([out[frame["site"] == s].std(axis=0) for s in "abc"])
    raw_means = np.vstack([X[frame["site"] == s].mean(axis=0) for s in "abc"])
    assert np.ptp(site_means, axis=0).max() < 0.35 * np.ptp(raw_means, axis=0).max()
    raw_sds = np.vstack([X[frame["site"] == s].std(axis=0) for s in "abc"])
    assert np.ptp(site_sds[:, 5:], axis=0).max() < 0.35 * np.ptp(raw_sds[:, 5:], axis=0).max()
    sex_gap = out[frame["sex"] == "M", :3].mean() - out[frame["sex"] == "F", :3].mean()
    assert sex_gap > 0.8  # the covariate effect survives
    assert np.isfinite(out).all() and out.shape == X.shape


def test_without_covariates_a_confounded_covariate_would_be_eroded() -> None:
    """Sanity of the covariate term: sex made site-confounded is kept only when declared."""
    X, frame, _ = _cohort(seed=1)
    frame = frame.copy()
    frame["sex"] = np.where(frame["site"] == "a", "M", np.where(frame["site"] == "b", "F", frame["sex"]))
    X[:, :3] += 2.0 * (frame["sex"] == "M").to_numpy()[:, None]
    kept = ComBat().fit_transform(X, frame["site"], frame[["sex"]])
    lost = ComBat().fit_transform(X, frame["site"])
    gap = lambda Z: Z[frame["sex"] == "M", :3].mean() - Z[frame["sex"] == "F", :3].mean()  # noqa: E731
    assert gap(kept) > gap(lost) + 0.5


def test_fit_uses_training_rows_only() -> None:
    X, frame, _ = _cohort(seed=2)
    train = np.arange(len(X)) < 360
    combat = ComBat().fit(X[train], frame["site"][train], frame[["sex", "age"]][train])
    params = (
        combat.gamma_.copy(),
        combat.delta_.copy(),
        combat.grand_mean_.copy(),
        combat.var_pooled_.copy(),
    )
    train_out = combat.transform(X[train], frame["site"][train], frame[["sex", "age"]][train])
    wild = X.copy()
    wild[~train] = 1e3 * np.random.default_rng(0).normal(size=wild[~train].shape)
    refit = ComBat().fit(wild[train], frame["site"][train], frame[["sex", "age"]][train])
    for a, b in zip(params, (refit.gamma_, refit.delta_, refit.grand_mean_, refit.var_pooled_), strict=True):
        np.testing.assert_allclose(a, b)
    # transforming test rows (however extreme) never changes the parameters or the training rows' output
    combat.transform(wild[~train], frame["site"][~train], frame[["sex", "age"]][~train])
    np.testing.assert_allclose(
        combat.transform(X[train], frame["site"][train], frame[["sex", "age"]][train]), train_out
    )
    with pytest.raises(EmbedxError, match="not in the training rows"):
        combat.transform(X[:2], np.array(["zzz", "a"]), frame[["sex", "age"]][:2])


def test_probe_after_combat_site_falls_to_chance_while_sex_and_age_hold() -> None:
    X, frame, groups = _cohort(seed=3)
    out = probe_after_combat(
        X, frame, groups, {"site": "categorical", "sex": "binary", "age": "continuous"}, config=FAST
    )
    before = {r["attribute"]: r for r in out["before"]}
    after = {r["attribute"]: r for r in out["after"]}
    assert before["site"]["encoded"] and before["site"]["score"] > 0.8
    # falls to near chance (a held-out fold keeps a trace: its site offsets are estimated, not known)
    assert after["site"]["score"] < before["site"]["chance"] + 0.1
    assert after["sex"]["encoded"] and after["age"]["encoded"]
    assert after["sex"]["score"] > 0.75


def test_confound_controls_on_the_synthetic_cohort(synth_store) -> None:
    """Site stays decodable inside every sex x age stratum; after ComBat it is gone while sex and age hold."""
    path = synth_store(1.0)
    strata, combat = run_confound_controls(path, ["pixels-pca"], config=FAST)
    probed = [r for r in strata["strata"] if not r["skipped"]]
    assert len(probed) >= 2 and strata["encoded_in_every_stratum"]
    small = [r for r in strata["strata"] if r["skipped"]]
    assert all(r["n"] < 30 and r["verdict"].startswith("skipped") for r in small)  # shown with n, not dropped
    after = {r["attribute"]: r for r in combat["after"]}
    assert not after["site"]["encoded"]
    assert after["sex"]["encoded"] and after["age"]["encoded"]
    with Store.open(path) as store:
        assert store.read_analysis("controls", "combat__pixels-pca__site")["batch"] == "site"


def test_matches_neurocombat_on_a_small_fixture() -> None:
    """Fit and transform with each row's own covariates is neuroCombat's harmonisation, number for number."""
    from neuroCombat import neuroCombat

    X, frame, _ = _cohort(seed=4, n_subjects=60, dim=8)
    covars = frame.copy()
    reference = neuroCombat(
        dat=X.T, covars=covars, batch_col="site", categorical_cols=["sex"], continuous_cols=["age"]
    )["data"].T
    ours = ComBat().fit_transform(X, frame["site"], frame[["sex", "age"]])
    np.testing.assert_allclose(ours, reference, rtol=2e-3, atol=2e-3)
    # and without empirical Bayes (plain location / scale per site)
    plain = neuroCombat(
        dat=X.T, covars=covars, batch_col="site", categorical_cols=["sex"], continuous_cols=["age"], eb=False
    )["data"].T
    np.testing.assert_allclose(
        ComBat(empirical_bayes=False).fit_transform(X, frame["site"], frame[["sex", "age"]]),
        plain,
        rtol=1e-6,
        atol=1e-6,
    )


def test_flipping_a_test_rows_sex_leaves_its_harmonised_features_unchanged() -> None:
    """The control's harmonisation is blind to the probed label: a held-out row's features do not move when
    its sex or age changes (neuroCombat's own-covariate transform would move them)."""
    X, frame, _groups = _cohort(seed=5)
    fold = np.repeat(np.arange(len(X) // 2) % 5, 2)  # subjects keep both images in one fold
    site = frame["site"].to_numpy()
    flipped = frame.copy()
    test = fold == 0
    flipped.loc[test, "sex"] = np.where(frame.loc[test, "sex"] == "F", "M", "F")
    flipped.loc[test, "age"] = frame.loc[test, "age"] + 30
    original = fold_harmoniser(X, site, frame[["sex", "age"]], fold)(0)
    changed = fold_harmoniser(X, site, flipped[["sex", "age"]], fold)(0)
    np.testing.assert_array_equal(original[test], changed[test])
    # the transform with each row's own covariates, which the control does not use, would have leaked
    combat = ComBat().fit(X[~test], site[~test], frame[["sex", "age"]][~test])
    own = combat.transform(X[test], site[test], frame[["sex", "age"]][test])
    moved = combat.transform(X[test], site[test], flipped[["sex", "age"]][test])
    assert np.abs(own - moved).max() > 0.05
    sex_gap = (
        original[test & (frame["sex"] == "M").to_numpy(), :3].mean()
        - original[test & (frame["sex"] == "F").to_numpy(), :3].mean()
    )
    assert sex_gap > 0.8  # the biology in the latents is kept


def test_after_combat_a_covariate_with_no_signal_stays_at_chance() -> None:
    """The covariate term must not write the probed label into the features: a sex label with no effect on
    the latents, declared as a ComBat covariate, is not found after harmonisation."""
    X, frame, groups = _cohort(seed=6)
    X[:, :3] -= 1.5 * (frame["sex"] == "M").to_numpy()[:, None]  # remove the sex effect entirely
    out = probe_after_combat(
        X, frame, groups, {"site": "categorical", "sex": "binary", "age": "continuous"}, config=FAST
    )
    after = {r["attribute"]: r for r in out.after}
    assert not after["sex"].encoded and after["sex"].score < 0.6


def test_sex_confounded_with_site_is_not_found_after_combat_when_the_latents_carry_no_sex() -> None:
    """Sex shares of 10 / 50 / 90 % across three sites, a strong site effect and no sex effect. Harmonising
    with sex as a covariate shifts each site along the estimated sex direction by its sex mix, and the sex
    probe reads it (2 of these 4 cohorts called sex "encoded" that way). The control leaves the probed
    covariate out of its own harmonisation, so sex stays at chance."""
    cfg = ProbeConfig(n_permutations=199, n_bootstrap=200, c_grid=(0.1,))
    found = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n = 800
        site = rng.integers(0, 3, n)
        sex = (rng.random(n) < np.array([0.1, 0.5, 0.9])[site]).astype(int)
        X = rng.normal(size=(n, 16))
        X[:, :4] += np.array([2.0, 0.0, -2.0])[site][:, None]
        frame = pd.DataFrame({"site": np.array(["A", "B", "C"])[site], "sex": np.array(["F", "M"])[sex]})
        out = probe_after_combat(
            X,
            frame,
            np.arange(n).astype(str),
            {"site": "categorical", "sex": "binary"},
            covariates=("sex",),
            probe=["site", "sex"],
            config=cfg,
        )
        after = {r.attribute: r for r in out.after}
        found.append(after["sex"].encoded)
        assert after["sex"].harmonised["covariates"] == []
        assert "conservative" in " ".join(after["site"].notes)
    assert not any(found)


def test_a_stratum_is_counted_in_subjects_not_images() -> None:
    """40 images of 5 women are 5 subjects: too few to probe the site inside that stratum; 80 men are 80."""
    from embedx.analysis.strata import probe_within_strata

    rng = np.random.default_rng(0)
    subjects = np.concatenate([np.repeat(np.arange(5), 8), np.arange(100, 180)]).astype(str)
    sex = np.array(["F"] * 40 + ["M"] * 80)
    site = rng.choice(["a", "b"], len(sex))
    X = rng.normal(size=(len(sex), 4))
    out = probe_within_strata(
        X, site, subjects, pd.DataFrame({"sex": sex}), {"sex": "binary"}, kind="binary",
        config=ProbeConfig(n_permutations=19, n_bootstrap=20),
    )  # fmt: skip
    by = {r.stratum: r for r in out.strata}
    assert by["F"].skipped == "stratum has 5 subjects (< 30)" and by["F"].n == 40
    assert not by["M"].skipped


def test_a_site_too_small_for_the_folds_is_left_out_with_its_reason() -> None:
    """A fourth site of 3 subjects, one missing its age: 2 subjects cannot leave 2 in every training fold,
    so the site is left out (named, with its count) and the control runs on the other three."""
    X, frame, subject = _cohort(seed=2, n_subjects=120, dim=8)
    rng = np.random.default_rng(0)
    extra = rng.normal(size=(6, X.shape[1])) + 3
    X = np.vstack([X, extra])
    small = pd.DataFrame({"site": "d", "sex": ["F", "F", "M", "M", "F", "F"],
                          "age": [40.0, 40.0, 50.0, 50.0, np.nan, np.nan]})
    frame = pd.concat([frame, small], ignore_index=True)
    subject = np.r_[subject, ["d0", "d0", "d1", "d1", "d2", "d2"]]
    kinds = {"site": "categorical", "sex": "categorical", "age": "continuous"}
    config = ProbeConfig(n_permutations=50, n_bootstrap=50, c_grid=(0.1,))
    result = probe_after_combat(X, frame, subject, kinds, probe=["site"], config=config)
    assert list(result.excluded_sites) == ["d"]
    why = result.excluded_sites["d"]
    assert why.startswith("2 subject(s)") and "takes 3 with 5 folds" in why
    assert result.n == 240 and result.n_excluded == 6
    with pytest.raises(EmbedxError, match="fewer than 2 values of 'site'"):
        probe_after_combat(X[-6:], frame.iloc[-6:], subject[-6:], kinds, probe=["site"], config=config)
