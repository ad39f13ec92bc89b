"""What the report shows, gathered: stored analyses, the missing ones run with defaults, the target rules.

The report reads the analyses already in the store (`/analysis/<kind>/<key>`) and runs the missing ones with
their defaults (see docs/report.md for when). Probes are judged once more as one family: Holm over exactly
the table the report shows, whatever families they were stored with, so the verdicts and the printed family
size describe the page the reader sees.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedx._version import __version__
from embedx.analysis.probe_result import judge_family
from embedx.analysis.probes import default_permutations
from embedx.analysis.reference import REFERENCE_KIND, compare_to_reference
from embedx.errors import EmbedxError

if TYPE_CHECKING:
    from embedx.analysis.calibration import CalibrationSettings
    from embedx.report.sections import Collector

log = logging.getLogger(__name__)

SITE_WORDS = ("site", "hospital", "institution", "centre", "center")


def pick_target(schema: Mapping[str, Any], requested: str | None = None) -> str | None:
    """The report's fairness / cross-site target (documented rule; see the module doc)."""
    if requested is not None:
        if requested not in schema:
            raise EmbedxError(
                f"--target {requested!r} is not an attribute of the store ({', '.join(schema)})"
            )
        return requested
    candidates = [n for n, s in schema.items() if s.role == "clinical" and s.kind == "binary"]
    if "finding" in candidates:
        return "finding"
    return candidates[0] if candidates else None


def pick_site(schema: Mapping[str, Any], exclude: str | None = None) -> str | None:
    """The site-like attribute for the cross-site matrix, or None."""
    for name, spec in schema.items():
        if name == exclude or spec.kind == "continuous":
            continue
        words = re.split(r"[^a-z]+", name.lower())
        if any(w in SITE_WORDS for w in words):
            return name
    return None


def store_snapshot(store_path: Any) -> dict[str, Any]:
    from embedx.store.h5store import Store

    with Store.open(store_path, "r") as store:
        models = store.models()
        snap: dict[str, Any] = {
            "n": store.n,
            "models": models,
            "attributes": store.attributes(),
            "schema": store.schema(),
            "subject_ids": np.asarray(store.subject_ids).astype(str),
            "projections": store.projections(),
            "embedding_info": {m: store.embedding_info(m) for m in models},
            "encoded": {m: int(store.encoded_mask(m).sum()) for m in models},
            "probes": store.read_analysis("probes"),
            "calibration": store.read_analysis("calibration"),
            "fairness": store.read_analysis("fairness"),
            "clusters": store.read_analysis("clusters"),
            "controls": store.read_analysis("controls"),
            "file_attrs": {
                k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in store.h5.attrs.items()
                if k not in ("subject_salt", "sample_salt")
            },
        }
    return snap


def provenance(store_path: Any, snap: Mapping[str, Any]) -> dict[str, Any]:
    models = []
    for name, info in snap["embedding_info"].items():
        models.append(
            {
                "name": name,
                "kind": info.get("kind"),
                "dim": info.get("dim"),
                "n_encoded": info.get("n_encoded"),
                "n_failed": info.get("n_failed"),
                "checkpoint_hash": info.get("checkpoint_hash"),
                "config": info.get("config"),
                "embedx_version": info.get("embedx_version"),
                "date": info.get("date"),
                # the run folder's name only, as for the store: the folders above it may name people
                "run_dir": Path(info["run_dir"]).name if info.get("run_dir") else "",
            }
        )
    return {
        "store": store_path.name,  # the file only: folders may name people
        "store_created": snap["file_attrs"].get("created"),
        "store_embedx_version": snap["file_attrs"].get("embedx_version"),
        "n_samples": int(snap["n"]),
        "n_subjects": len(np.unique(snap["subject_ids"])),
        "models": models,
        "embedx_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "attributes": {n: {"kind": s.kind, "role": s.role} for n, s in snap["schema"].items()},
    }


def _run_probes(
    store_path: Path, models: Sequence[str], options: Mapping[str, Any], notes: list[str]
) -> list[dict]:
    try:
        from embedx.analysis.probes import run_probes
    except ImportError as err:  # the probe module is part of the package; this only guards a broken install
        notes.append(f"probes could not be run ({err}); run `embedx probe` first")
        return []
    return list(run_probes(store_path, models=list(models), **options))


def _too_few_permutations(probe: Mapping[str, Any], needed: int) -> bool:
    """A tested probe whose permutations are fewer than the report's family needs (`default_permutations`)."""
    if probe.get("skipped") or probe.get("p_value") is None:
        return False
    permutations = (probe.get("permutation") or {}).get("permutations")
    return isinstance(permutations, int) and 0 < permutations < needed


def latest_by(results: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict]:
    """De-duplicate stored results by identity fields, the later one winning."""
    out: dict[tuple, dict] = {}
    for r in results:
        out[tuple(str(r.get(k)) for k in keys)] = dict(r)
    return list(out.values())


def gather(
    store_path: Path,
    snap: dict[str, Any],
    col: Collector,
    *,
    target: str | None,
    run_missing: bool,
    seed: int,
    probe_options: Mapping[str, Any],
    n_bootstrap: int,
    calibration_settings: CalibrationSettings | None = None,
) -> dict[str, Any]:
    models: list[str] = snap["models"]
    if not models:
        raise EmbedxError(
            f"{store_path}: the store holds no embeddings; run `embedx encode` before the report"
        )
    notes = col.notes
    for model in models:  # images an encode could not read are in no analysis below: say so
        failed = int(snap["embedding_info"][model].get("n_failed") or 0)
        if failed:
            notes.append(f"{model}: {failed} image(s) could not be read by its last encode and are in none "
                         f"of its analyses (listed with their reasons under /embeddings/{model}/failed_ids)")
        without = snap["n"] - snap["encoded"][model] - failed
        if without > 0:
            notes.append(f"{model}: {without} of {snap['n']} images have no vector (not encoded yet, or not "
                         "in the imported file) and are in none of its analyses")
    # Probes: every model x attribute of the store, computed on the rows encoded now.
    attributes = set(snap["schema"])
    probes = latest_by(snap["probes"], ("model", "attribute"))
    # Holm runs over the table this report shows: permutations sized for the stored run's own (smaller)
    # family may be too few for it (a third model made a site at AUC 0.97 "not distinguishable").
    probe_options = {"n_permutations": default_permutations(len(models) * len(attributes)), **probe_options}
    needed = int(probe_options["n_permutations"] or 0)
    stale = {p["model"] for p in probes if not current(p, snap)}
    partial = {m for m in models if attributes - {p["attribute"] for p in probes if p["model"] == m}} - stale
    coarse = {m for m in models if any(_too_few_permutations(p, needed) for p in probes if p["model"] == m)}
    coarse -= stale | partial
    rerun = [m for m in models if m in stale or m in partial or m in coarse]
    if rerun and run_missing:
        log.info("report: running probes for %s", ", ".join(rerun))
        probes = latest_by(
            [p for p in probes if p["model"] not in rerun]
            + _run_probes(store_path, rerun, probe_options, notes),
            ("model", "attribute"),
        )
        for what, chosen in (
            ("on rows encoded since", stale),
            ("for attributes not probed", partial),
            (f"too few permutations for Holm over this report's tests; now {probe_options['n_permutations']}",
             coarse),
        ):
            named = [m for m in rerun if m in chosen]
            if named:
                notes.append(f"probes recomputed for the report ({what}): {', '.join(named)}")
    elif rerun:
        outdated = [m for m in rerun if m in stale or m in partial]
        if outdated:
            notes.append(
                f"stored probes of {', '.join(outdated)} are partial or predate the latest encode; "
                "rerun `embedx probe`"
            )
        if coarse:
            notes.append(
                f"stored probes of {', '.join(m for m in rerun if m in coarse)} ran with too few "
                f"permutations for Holm over this report's tests; rerun `embedx probe` with at least {needed}"
            )
    probes = [p for p in probes if p["model"] in models and (p["attribute"] in attributes)]
    left_out = {(p["attribute"], tuple(p.get("merged_classes") or ()),
                 int(p.get("n_dropped_small_classes") or 0)) for p in probes if p.get("merged_classes")}
    for attribute, classes, dropped in sorted(left_out):  # a minority missing from a verdict must be seen
        how = f"left out of its probes ({dropped} rows)" if dropped else "merged into '(other)' in its probes"
        notes.append(f"{attribute}: class(es) seen in too few subjects to probe, {how}: {', '.join(classes)}")
    stored_families = sorted({int(p.get("family_size") or 0) for p in probes if not p.get("skipped")})
    probes = judge_family(probes)
    family = probes[0].family_size if probes else 0
    if stored_families and stored_families != [family]:
        notes.append(
            f"probe verdicts re-judged with Holm over the {family} tests this report shows (they were stored "
            f"with families of {', '.join(map(str, stored_families))})"
        )
    # The pixel reference is a yardstick for the models' probes, not an audited model of its own.
    kinds = {m: str(snap["embedding_info"][m].get("kind", "")) for m in models}
    audited = [m for m in models if kinds[m] != REFERENCE_KIND] or models
    # Target, fairness, cross-site.
    target = pick_target(snap["schema"], target)
    fairness: list[dict] = []
    cross: list[dict] = [c for c in snap["controls"] if c.get("control") == "cross_site" and current(c, snap)]
    if target is None:
        notes.append(
            "no fairness / cross-site analysis: no --target given and no clinical binary attribute "
            "(e.g. 'finding') in the store"
        )
    else:
        fairness = [f for f in snap["fairness"] if f.get("target") == target and current(f, snap)]
        if not fairness and run_missing:
            from embedx.analysis.fairness import run_fairness

            fairness = (
                _attempt(
                    lambda: [
                        f for m in audited for f in run_fairness(store_path, target, model=m, seed=seed)
                    ],
                    notes,
                    f"fairness for target {target!r}",
                )
                or []
            )
            if fairness:
                notes.append(f"fairness computed for the report (defaults), target {target!r}")
        site = pick_site(snap["schema"], exclude=target)
        if site is None:
            notes.append(
                "no cross-site matrix: no site-like attribute (site / hospital / institution / centre)"
            )
        elif run_missing:
            # Every model gets its matrix: a DAE and a VAE of one cohort can carry the site differently.
            from embedx.analysis.cross_site import cross_site

            for model in audited:
                key = (model, target, site)
                if any((c.get("model"), c.get("target"), c.get("site")) == key for c in cross):
                    continue
                try:
                    cross.append(
                        cross_site(store_path, target, site, model, n_bootstrap=n_bootstrap, seed=seed)
                    )
                    notes.append(
                        f"cross-site matrix computed for the report: {target!r} across {site!r} ({model})"
                    )
                except EmbedxError as err:
                    notes.append(f"cross-site matrix not possible for {model}: {err}")
    cross = latest_by(cross, ("model", "target", "site"))
    # Clusters and distribution tests per model.
    clusters = {c["model"]: c for c in snap["clusters"] if current(c, snap)}
    distributions = {
        c["model"]: c for c in snap["controls"] if c.get("control") == "distribution" and current(c, snap)
    }
    for m in audited:
        if m not in clusters and run_missing:
            from embedx.analysis.clusters import run_clusters

            found = _attempt(lambda m=m: run_clusters(store_path, m, seed=seed), notes, f"clusters of {m}")
            if found is not None:
                clusters[m] = found
                notes.append(f"clusters computed for the report (k-means, k by silhouette) for {m}")
        if m not in distributions and run_missing:
            from embedx.analysis.distribution import distribution_tests

            found = _attempt(
                lambda m=m: distribution_tests(store_path, m, seed=seed), notes, f"distribution tests of {m}"
            )
            if found is not None:
                distributions[m] = found
    # The calibration qualifies this report's table: its Holm threshold must be alpha / (this table's m).
    calibration = {c["model"]: c for c in snap["calibration"] if current(c, snap)}
    other_family = sorted(m for m, c in calibration.items() if family and c.get("family_size") != family)
    if other_family and run_missing:
        notes.append(f"calibration of {', '.join(other_family)} recomputed for Holm over the {family} tests "
                     "this report shows (it was stored for another probe table)")
        calibration = {m: c for m, c in calibration.items() if m not in other_family}
    elif other_family:
        notes.append(f"stored calibration of {', '.join(other_family)} used Holm over another family than "
                     f"the {family} tests shown; rerun `embedx calibrate` after `embedx probe`")
    missing_calibration = [m for m in audited if m not in calibration]
    if missing_calibration and run_missing:
        from dataclasses import replace

        from embedx.analysis.calibration import CalibrationSettings, run_calibration

        settings = calibration_settings or CalibrationSettings()
        if family:
            settings = replace(settings, family_size=family)
        for m in missing_calibration:
            found = _attempt(
                lambda m=m: run_calibration(store_path, [m], settings)[0],
                notes,
                f"calibration of {m}",
            )
            if found is not None:
                calibration[m] = found
                notes.append(f"calibration (false-positive rate and power) computed for the report for {m}")
    underpowered_note = underpowered(probes)
    if underpowered_note and not any("too few permutations" in n for n in notes):  # said once is enough
        notes.append(underpowered_note)
    background = [c for c in snap["controls"] if c.get("control") == "background"]
    if not background:
        notes.append(
            "background-patch control not in the store: run `embedx control background --manifest "
            "m.csv --attribute site --store STORE` to add it"
        )
    return {
        "probes": probes,
        "calibration": calibration,
        "fairness": fairness,
        "cross_site": cross,
        "clusters": clusters,
        "distribution": distributions,
        "background": background,
        "shift": [c for c in snap["controls"] if c.get("control") == "shift"],
        "target": target,
        "reference": [c.to_dict() for c in compare_to_reference(
            probes, kinds, {m: str(snap["embedding_info"][m].get("preprocess", "")) for m in models})],
    }


def current(result: Mapping[str, Any], snap: Mapping[str, Any]) -> bool:
    """The result was computed on the rows its model has encoded now (an encode since makes it stale).

    Results record `rows_encoded`; clusters, distribution tests and calibration record the encoded rows
    they used as `n`. A result without either (an older embedx) counts as stale and is recomputed."""
    encoded = snap["encoded"].get(result.get("model"))
    count = result.get("rows_encoded")
    if count is None and (
        result.get("control") == "distribution" or "clusters" in result or "false_positive_rate" in result
    ):
        count = result.get("n")
    return encoded is not None and count == encoded


def _attempt(work: Any, notes: list[str], what: str) -> Any:
    """Run one optional analysis of the report; a cohort too small for it gets a note, not a failed report."""
    try:
        return work()
    except EmbedxError as err:
        notes.append(f"{what} skipped: {err}")
        return None


def underpowered(probes: Sequence[Mapping[str, Any]], alpha: float = 0.05) -> str | None:
    """A note when too few permutations were run for any probe to pass Holm (the verdicts then all read
    'not distinguishable from chance' whatever the scores)."""
    worst = None
    for p in probes:
        perms = (p.get("permutation") or {}).get("permutations")
        family = p.get("family_size")
        if isinstance(perms, int) and isinstance(family, int) and family / (perms + 1) >= alpha:
            worst = (perms, family)
    if worst is None:
        return None
    perms, family = worst
    return (
        f"probes ran with {perms} permutations for {family} tests: the smallest Holm-adjusted p is "
        f"{family / (perms + 1):.2f} >= {alpha}, so no probe can be called encoded; rerun `embedx probe` "
        f"with at least {int(np.ceil(family / alpha))} permutations"
    )
