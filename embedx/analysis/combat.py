"""ComBat harmonisation of latents by site, fitted on training folds only, and the re-probe control.

ComBat (Johnson, Li & Rabinovic 2007; the neuroCombat formulation) models each latent feature as
`y = alpha + X beta + gamma_site + delta_site * eps`: a site shift (gamma) and a site scale (delta) on top of
the biology to keep (covariates such as sex and age). Per-site estimates are shrunk toward their mean across
features by empirical Bayes, which keeps small sites from being over-fitted.

Why it is implemented here: neuroCombat is not a dependency, and its "from training" path is marked under
development and takes no covariates. The users' top request (fairness-anchors, user ask 4) is exactly that:
fit on train, apply to test. `ComBat.fit` sees training rows only, so held-out rows cannot influence the
harmonisation.

**Blind to the probed label.** neuroCombat's `transform` subtracts each row's own covariate term (beta x its
sex and age) before rescaling and adds it back after, so a harmonised row depends on its own sex and age:
probing sex after such a ComBat would read a label that was written into the features. The control therefore
transforms every row *blind* (`transform(Y, batch)` without covariates): the covariate term is the training
rows' average, identical for every row, so a row's harmonised features depend on its latents and its site
only. The covariates still do their job in `fit` (the site effects are estimated net of sex and age); the
biology in a row's latents is kept, scaled by its site's 1/sqrt(delta). `transform(Y, batch, covariates)`
reproduces neuroCombat exactly where that is wanted (regression-tested against neuroCombat).

The control (`probe_after_combat`): if a site probe falls to chance after harmonisation while the sex and age
probes hold, the site signal was a location/scale shift per feature; if site stays decodable, it lives in
feature interactions that ComBat cannot remove. The site probe after harmonisation reads the latents net of
the covariates' fitted effects (`ComBat.transform_residual`): where sites differ in age mix and the latents
carry age, a blind transform left site readable through age in every simulated cohort (reproduction:
/tmp/review-controls/combat_null.py, scenario age_confounded), a false "still encoded".

The batch's verdict after harmonisation needs a Holm p < alpha and the CI clear of chance (the CI alone let
the RBF probe call 6-10 % of pure shift / scale sites "still encoded"); with the RBF kernel its ridge test
reads that kernel's Fourier features. Null: p < 0.05 in 22 / 450 RBF cohorts (/tmp/review-controls2/sim.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from embedx.analysis.combat_kernel_permutation import batch_permutation
from embedx.analysis.folds import subject_folds
from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe
from embedx.analysis.probe_result import ProbeResult, judge_family
from embedx.analysis.strata import StrataResult, probe_within_strata
from embedx.analysis.typed import JsonResult
from embedx.errors import EmbedxError

__all__ = ["ComBat", "CombatResult", "fold_harmoniser", "probe_after_combat", "run_confound_controls"]

_EPS = 1e-8
_BATCH_NOTE = ("after harmonising by this attribute: Holm p < alpha and CI clear of chance; the p is taken "
               "on matrices harmonised with the observed labels (conservative for a linear probe)")


@dataclass
class _Design:
    """How covariates become design columns; learnt on the training rows, replayed on any rows."""

    continuous: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (mean, std)
    categorical: dict[str, list[str]] = field(default_factory=dict)  # name -> levels (first = reference)

    @classmethod
    def learn(cls, covariates: pd.DataFrame | None) -> _Design:
        design = cls()
        if covariates is None:
            return design
        for name in covariates.columns:
            values = covariates[name]
            if pd.api.types.is_numeric_dtype(values) and values.nunique() > 2:
                v = values.to_numpy(float)
                design.continuous[str(name)] = (float(np.mean(v)), float(np.std(v)) or 1.0)
            else:
                design.categorical[str(name)] = sorted(values.astype(str).unique().tolist())
        return design

    def matrix(self, covariates: pd.DataFrame | None, n: int) -> np.ndarray:
        columns: list[np.ndarray] = []
        if covariates is None:
            return np.zeros((n, 0))
        if covariates.isna().any().any():
            bad = covariates.columns[covariates.isna().any()].tolist()
            raise EmbedxError(
                f"ComBat covariate(s) {', '.join(bad)} have missing values; drop those rows first"
            )
        for name, (mean, std) in self.continuous.items():
            columns.append((covariates[name].to_numpy(float) - mean) / std)
        for name, levels in self.categorical.items():
            values = covariates[name].astype(str).to_numpy()
            unseen = sorted(set(values) - set(levels))
            if unseen:
                raise EmbedxError(
                    f"ComBat covariate {name!r}: value(s) {unseen} were not in the training rows"
                )
            columns.extend((values == level).astype(float) for level in levels[1:])
        return np.column_stack(columns) if columns else np.zeros((n, 0))


class ComBat:
    """Empirical-Bayes ComBat with `fit` on training rows and `transform` of any rows of seen sites."""

    def __init__(self, empirical_bayes: bool = True, tol: float = 1e-4, max_iter: int = 1000) -> None:
        self.empirical_bayes = empirical_bayes
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, Y: np.ndarray, batch: Sequence[Any], covariates: pd.DataFrame | None = None) -> ComBat:
        Y = np.asarray(Y, dtype=np.float64)
        batch = np.asarray(batch).astype(str)
        if Y.ndim != 2 or len(Y) != len(batch):
            raise EmbedxError(f"ComBat: data {Y.shape} and {len(batch)} site labels do not line up")
        self.batches_, codes, counts = np.unique(batch, return_inverse=True, return_counts=True)
        if self.batches_.size < 2:
            raise EmbedxError("ComBat needs at least two sites in the training rows")
        if np.any(counts < 2):
            small = self.batches_[counts < 2].tolist()
            raise EmbedxError(f"ComBat needs at least 2 training rows per site; too few for {small}")
        covariates = None if covariates is None else covariates.reset_index(drop=True)
        self.design_ = _Design.learn(covariates)
        C = self.design_.matrix(covariates, len(Y))
        B = np.eye(self.batches_.size)[codes]
        D = np.hstack([B, C])
        coef, *_ = np.linalg.lstsq(D, Y, rcond=None)
        n_b = counts.astype(float)
        self.grand_mean_ = (n_b / n_b.sum()) @ coef[: self.batches_.size]
        self.beta_ = coef[self.batches_.size :]
        resid = Y - D @ coef
        self.var_pooled_ = np.maximum(np.mean(resid**2, axis=0), _EPS)
        s = (Y - self.grand_mean_ - C @ self.beta_) / np.sqrt(self.var_pooled_)
        gamma_hat = np.vstack([s[codes == b].mean(axis=0) for b in range(self.batches_.size)])
        delta_hat = np.vstack([s[codes == b].var(axis=0, ddof=1) for b in range(self.batches_.size)])
        delta_hat = np.maximum(delta_hat, _EPS)
        if self.empirical_bayes:
            self.gamma_, self.delta_ = self._shrink(s, codes, n_b, gamma_hat, delta_hat)
        else:
            self.gamma_, self.delta_ = gamma_hat, delta_hat
        self.mean_covariate_term_ = C.mean(axis=0) @ self.beta_ if C.shape[1] else np.zeros(Y.shape[1])
        self.n_fit_ = len(Y)
        return self

    def _shrink(
        self, s: np.ndarray, codes: np.ndarray, n_b: np.ndarray, gamma_hat: np.ndarray, delta_hat: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Parametric EB: normal prior on gamma, inverse-gamma prior on delta, per site across features."""
        gamma_bar = gamma_hat.mean(axis=1)
        t2 = np.maximum(gamma_hat.var(axis=1, ddof=1), _EPS)
        m = delta_hat.mean(axis=1)
        s2 = np.maximum(delta_hat.var(axis=1, ddof=1), _EPS)
        a = (2 * s2 + m**2) / s2
        b = (m * s2 + m**3) / s2
        gamma_star = np.empty_like(gamma_hat)
        delta_star = np.empty_like(delta_hat)
        for k in range(gamma_hat.shape[0]):
            rows = s[codes == k]
            g_old, d_old = gamma_hat[k], delta_hat[k]
            for _ in range(self.max_iter):
                g_new = (n_b[k] * t2[k] * gamma_hat[k] + d_old * gamma_bar[k]) / (n_b[k] * t2[k] + d_old)
                sum2 = np.sum((rows - g_new) ** 2, axis=0)
                d_new = (0.5 * sum2 + b[k]) / (n_b[k] / 2 + a[k] - 1)
                change = max(
                    np.max(np.abs(g_new - g_old) / np.maximum(np.abs(g_old), _EPS)),
                    np.max(np.abs(d_new - d_old) / np.maximum(d_old, _EPS)),
                )
                g_old, d_old = g_new, d_new
                if change < self.tol:
                    break
            gamma_star[k], delta_star[k] = g_old, np.maximum(d_old, _EPS)
        return gamma_star, delta_star

    def transform(
        self, Y: np.ndarray, batch: Sequence[Any], covariates: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Harmonise rows with the fitted parameters only (sites must have been seen in `fit`).

        Without `covariates` the transform is blind: every row gets the training rows' mean covariate term,
        so its output depends on its latents and site alone (see the module doc). With them, each row's own
        covariate term is used, as neuroCombat does.
        """
        if not hasattr(self, "gamma_"):
            raise EmbedxError("ComBat.transform called before fit")
        Y = np.asarray(Y, dtype=np.float64)
        batch = np.asarray(batch).astype(str)
        lookup = {b: i for i, b in enumerate(self.batches_)}
        unseen = sorted(set(batch) - set(lookup))
        if unseen:
            raise EmbedxError(
                f"ComBat: site(s) {unseen} not in the training rows (ComBat cannot harmonise unseen sites)"
            )
        codes = np.array([lookup[b] for b in batch], dtype=int)
        if covariates is None:
            stand_mean = self.grand_mean_ + self.mean_covariate_term_
        else:
            C = self.design_.matrix(covariates.reset_index(drop=True), len(Y))
            stand_mean = self.grand_mean_ + C @ self.beta_
        scale = np.sqrt(self.var_pooled_)
        s = (Y - stand_mean) / scale
        adjusted = (s - self.gamma_[codes]) / np.sqrt(self.delta_[codes])
        return adjusted * scale + stand_mean

    def transform_residual(self, Y: np.ndarray, batch: Sequence[Any], covariates: pd.DataFrame) -> np.ndarray:
        """Harmonised rows with each row's own fitted covariate term taken out (the training mean term kept).

        For probing the batch itself after harmonisation: the biology that the covariates explain (age read
        from the latents, say) would otherwise let a site that differs in age mix be read through age.
        """
        C = self.design_.matrix(covariates.reset_index(drop=True), len(Y))
        own = C @ self.beta_ - self.mean_covariate_term_
        return self.transform(Y, batch, covariates) - own

    def fit_transform(
        self, Y: np.ndarray, batch: Sequence[Any], covariates: pd.DataFrame | None = None
    ) -> np.ndarray:
        return self.fit(Y, batch, covariates).transform(Y, batch, covariates)


@dataclass(frozen=True)
class CombatResult(JsonResult):
    """The probes on the same folds before and after a train-fold-only ComBat by `batch`."""

    model: str
    batch: str
    covariates: tuple[str, ...]
    n: int
    n_excluded: int
    folds: str
    before: tuple[ProbeResult, ...]
    after: tuple[ProbeResult, ...]
    excluded_sites: dict[str, str] = field(default_factory=dict)  # batch value -> why it is left out
    control: str = "combat"


def _sites_too_small(groups: np.ndarray, site: np.ndarray, folds: int) -> dict[str, str]:
    """Batch values that no fold split can leave with 2 subjects in every training fold (ComBat's spread
    needs 2), and why: at best a fold holds ceil(n / folds) of a site's n subjects, so n - ceil(n / folds)
    must reach 2 (3 subjects with 3+ folds). Such a site is left out of the control rather than failing it."""
    subjects = pd.DataFrame({"g": groups, "s": site}).groupby("s")["g"].nunique()
    least = next(n for n in range(2, 10 * folds + 3) if n - -(-n // folds) >= 2)
    return {
        str(s): f"{n} subject(s) with the batch label and every covariate; ComBat needs 2 of them in every "
        f"training fold, which takes {least} with {folds} folds"
        for s, n in subjects.items() if n < least
    }


def _folds_covering_sites(groups: np.ndarray, site: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Label-free subject folds whose every training fold holds 2 or more *subjects* (not images) of every
    site, redrawn (seed, seed + 1, ...) until they do: one patient's images give that patient's spread."""
    pairs, n_sites = pd.DataFrame({"g": groups, "s": site}), len(np.unique(site))
    for attempt in range(50):
        fold = subject_folds(groups, folds, seed + attempt)
        counts = [pairs[fold != f].groupby("s")["g"].nunique() for f in range(folds)]
        if all(len(c) == n_sites and c.min() >= 2 for c in counts):
            return fold
    raise EmbedxError(
        "ComBat control: no fold split leaves 2 subjects of every site in every training fold; "
        "a site has too few subjects (drop it or use fewer folds)"
    )


def fold_harmoniser(
    X: np.ndarray, site: np.ndarray, covariates: pd.DataFrame | None, fold: np.ndarray,
    residual: bool = False,
) -> Callable[[int], np.ndarray]:
    """`harmonised(f)`: every row harmonised by a ComBat fitted on fold f's training rows, applied blind.

    A row's output depends on its latents and site only, never on its own covariates (module doc), so a
    probe of sex or age after harmonisation cannot read a label that ComBat wrote into the features.
    With `residual` (for probing the batch itself) each row's fitted covariate term is also taken out, so a
    site that differs in age or sex mix is not read through the age or sex that the latents carry.
    """
    cache: dict[int, np.ndarray] = {}

    def harmonised(f: int) -> np.ndarray:
        if f not in cache:
            train = fold != f
            combat = ComBat().fit(X[train], site[train], None if covariates is None else covariates[train])
            cache[f] = (combat.transform_residual(X, site, covariates) if residual and covariates is not None
                        else combat.transform(X, site))
        return cache[f]

    return harmonised


def probe_after_combat(
    X: np.ndarray,
    attributes: pd.DataFrame,
    groups: np.ndarray,
    kinds: dict[str, str],
    *,
    batch: str = "site",
    covariates: Sequence[str] = ("sex", "age"),
    probe: Sequence[str] | None = None,
    config: ProbeConfig | None = None,
    model: str = "model",
) -> CombatResult:
    """Re-probe after ComBat by `batch`, fitted on each outer training fold and applied blind to all rows.

    The same label-free subject folds serve the probes before and after harmonisation (a paired comparison)
    and their permutation tests. A covariate is probed after a ComBat that keeps the *other* covariates (so
    the harmonisation never saw the labels it is probed for); the batch attribute's own verdict after
    harmonisation needs a conservative permutation p and its CI (module doc). Rows lacking the batch label, a
    covariate or a finite latent row are excluded and counted. Holm runs within each of the two families.
    """
    cfg = config or ProbeConfig()
    covariates = [c for c in covariates if c != batch]
    probe = list(probe or [batch, *covariates])
    needed = [batch, *covariates, *probe]
    missing_cols = [c for c in dict.fromkeys(needed) if c not in attributes.columns]
    if missing_cols:
        raise EmbedxError(f"ComBat control: attribute(s) {', '.join(missing_cols)} not in the data")
    X = np.asarray(X, dtype=np.float64)
    frame = attributes.reset_index(drop=True)
    ok = np.all(np.isfinite(X), axis=1) & frame[[batch, *covariates]].notna().all(axis=1).to_numpy()
    rows = np.flatnonzero(ok)
    Xk, frame_k = X[rows], frame.iloc[rows].reset_index(drop=True)
    groups_k = np.asarray(groups).astype(str)[rows]
    site = frame_k[batch].astype(str).to_numpy()
    excluded = _sites_too_small(groups_k, site, cfg.folds)
    if excluded:
        kept = ~np.isin(site, list(excluded))
        rows, Xk, groups_k, site = rows[kept], Xk[kept], groups_k[kept], site[kept]
        frame_k = frame_k[kept].reset_index(drop=True)
    if len(np.unique(site)) < 2:
        raise EmbedxError(
            f"ComBat control: fewer than 2 values of {batch!r} have enough subjects to harmonise; "
            + "; ".join(f"{k}: {v}" for k, v in excluded.items())
        )
    fold = _folds_covering_sites(groups_k, site, cfg.folds, cfg.seed)
    harmonisers: dict[tuple[tuple[str, ...], bool], Callable[[int], np.ndarray]] = {}

    def harmoniser(keep: tuple[str, ...], residual: bool = False) -> Callable[[int], np.ndarray]:
        if (keep, residual) not in harmonisers:
            harmonisers[keep, residual] = fold_harmoniser(
                Xk, site, frame_k[list(keep)] if keep else None, fold, residual=residual
            )
        return harmonisers[keep, residual]

    before, after = [], []
    for attribute in probe:
        kind = kinds.get(attribute, "categorical")
        y = frame_k[attribute].to_numpy()
        options = {"model": model, "attribute": attribute, "config": cfg, "fold": fold}
        before.append(cross_validated_probe(Xk, y, groups_k, kind, **options))  # type: ignore[arg-type]
        # A covariate is left out of the harmonisation it is probed after (keeps its permutation test valid).
        # The batch is probed net of the covariates' fitted effects (else read through age: module doc).
        keep = tuple(c for c in covariates if c != attribute)
        residual = attribute == batch and bool(keep)
        kernel_test = attribute == batch and cfg.kernel == "rbf"  # its ridge test reads the kernel's features
        options["config"] = replace(cfg, n_permutations=0) if kernel_test else cfg
        r = cross_validated_probe(Xk, y, groups_k, kind, fold_X=harmoniser(keep, residual), **options)  # type: ignore[arg-type]
        if kernel_test:
            r = batch_permutation(r, Xk, y, groups_k, fold, harmoniser(keep, residual), cfg)
        r = r.replace(notes=(*r.notes, _BATCH_NOTE)) if attribute == batch else r
        after.append(
            r.replace(
                harmonised={
                    "method": "ComBat (empirical Bayes)",
                    "batch": batch,
                    "covariates": list(keep),
                    "fit": "outer training folds only",
                    "transform": "each row's fitted covariate term removed (site read net of covariates)"
                    if residual else "blind to covariates (training mean term)",
                }
            )
        )
    after = judge_family(after, cfg.alpha)
    return CombatResult(
        model=model,
        batch=batch,
        covariates=tuple(covariates),
        n=len(rows),
        n_excluded=int(len(X) - len(rows)),
        folds="label-free subject folds, shared before / after (every training fold: 2+ subjects per site)",
        before=tuple(judge_family(before, cfg.alpha)),
        after=tuple(after),
        excluded_sites=excluded,
    )


def run_confound_controls(
    store_path: Any,
    models: Sequence[str] | None = None,
    *,
    attribute: str = "site",
    within: Sequence[str] = ("sex", "age"),
    covariates: Sequence[str] = ("sex", "age"),
    config: ProbeConfig | None = None,
    write: bool = True,
) -> list[StrataResult | CombatResult]:
    """The two confound controls of the site probe, for each model of a store.

    1. `probe_within_strata`: the `attribute` probe inside each stratum of `within` (sex x age band);
    2. `probe_after_combat`: ComBat by `attribute` (fit on training folds, keeping `covariates`), then the
       probes of the attribute and of the covariates again -- the attribute should fall toward chance, the
       covariates hold.
    Written to `/analysis/controls/within_strata__<model>__<attribute>` and `combat__<model>__<attribute>`.
    """
    from embedx.analysis.probes import resolve_names
    from embedx.store.h5store import Store

    cfg = config or ProbeConfig()
    outputs: list[StrataResult | CombatResult] = []
    with Store.open(store_path) as store:
        schema = store.schema()
        names = resolve_names(models, store.models(), "model", store_path)
        resolve_names([attribute, *within, *covariates], list(schema), "attribute", store_path)
        kinds = {name: spec.kind for name, spec in schema.items()}
        table = store.attributes()
        subjects = np.asarray(store.subject_ids).astype(str)
        if kinds[attribute] == "continuous":
            raise EmbedxError(
                f"confound controls need a categorical attribute to control; {attribute!r} is continuous"
            )
        for model in names:
            X = store.latents(model)
            strata = probe_within_strata(
                X,
                table[attribute].to_numpy(),
                subjects,
                table[list(within)],
                kinds,
                kind=kinds[attribute],
                attribute=attribute,
                model=model,
                config=cfg,  # type: ignore[arg-type]
            )
            combat = probe_after_combat(
                X, table, subjects, kinds, batch=attribute, covariates=covariates, config=cfg, model=model
            )
            outputs.extend([strata, combat])
    if write:
        with Store.open(store_path, mode="a") as store:
            for out in outputs:
                key = f"{out.control}__{out.model}__{attribute}"
                store.write_analysis("controls", key.replace("/", "_"), out.to_dict())
    return outputs
