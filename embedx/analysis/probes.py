"""`embedx probe`: every attribute x every model of a store, judged as one family.

The probe itself (estimator, folds, CI, permutation test) lives in `embedx.analysis.probe_core`; this module
runs it over a store, applies Holm once over the whole attributes x models table (`judge_family`), adds the
normalised encoding where a supervised CNN for the attribute is in the store, and writes the results to
`/analysis/probes/<model>__<attribute>`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from embedx.analysis.probe_core import Kind, ProbeConfig, cross_validated_probe
from embedx.analysis.probe_result import ProbeResult, judge_family, smallest_holm_p
from embedx.errors import EmbedxError

log = logging.getLogger(__name__)

__all__ = [
    "ProbeConfig",
    "add_normalized_encoding",
    "default_permutations",
    "probe_arrays",
    "resolve_names",
    "run_probes",
]


def probe_arrays(X: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: Kind, **options: Any) -> ProbeResult:
    """One attribute from one matrix of latents: `cross_validated_probe` (kept as the array-level name)."""
    return cross_validated_probe(X, y, groups, kind, **options)


def default_permutations(family_size: int, alpha: float = 0.05) -> int:
    """max(1000, 2 m / alpha): the smallest Holm-adjusted p (m / (P + 1)) stays below alpha / 2."""
    return max(1000, int(np.ceil(2 * family_size / alpha)))


def resolve_names(names: Sequence[str] | None, known: Sequence[str], what: str, path: Any) -> list[str]:
    """The names asked for (all when none), or an error that lists what exists."""
    if not names:
        return list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise EmbedxError(
            f"{path}: no {what} named {', '.join(map(repr, unknown))} (known: {', '.join(known) or 'none'})"
        )
    return list(names)


def cnn_labels(store: Any, models: Sequence[str]) -> dict[str, str]:
    """Map model -> the attribute its supervised CNN was trained on (from /embeddings/<name> attrs)."""
    import yaml

    out: dict[str, str] = {}
    for name in models:
        info = store.embedding_info(name)
        if str(info.get("kind", "")) != "cnn":
            continue
        label = info.get("label")
        if not label and info.get("config"):
            try:
                config = yaml.safe_load(str(info["config"])) or {}
            except yaml.YAMLError:
                config = {}
            label = (config.get("data") or {}).get("label") if isinstance(config, dict) else None
        if label:
            out[name] = str(label)
    return out


def add_normalized_encoding(
    results: Sequence[ProbeResult | Mapping[str, Any]], cnn_for: Mapping[str, str]
) -> list[ProbeResult]:
    """(probe - chance) / (CNN - chance), where a supervised CNN for that attribute was probed too.

    The CNN's own features probed for its own label stand in for the supervised upper bound (UEB). Where the
    CNN was trained on these images that bound is optimistic, which makes the ratio conservative.
    """
    typed = [ProbeResult.from_dict(r) for r in results]
    by_key = {(r.model, r.attribute): r for r in typed}
    out = []
    for r in typed:
        for cnn, label in cnn_for.items():
            ref = by_key.get((cnn, label))
            if (
                label != r.attribute
                or ref is None
                or ref.score is None
                or cnn == r.model
                or r.skipped
                or r.score is None
                or r.chance is None
            ):
                continue
            if r.metric == "mae":
                gap = r.chance - ref.score
                value = (r.chance - r.score) / gap if gap > 0 else None
            else:
                gap = ref.score - r.chance
                value = (r.score - r.chance) / gap if gap > 0 else None
            r = r.replace(normalized_encoding=value, normalized_by=cnn)
        out.append(r)
    return out


def run_probes(
    store_path: Any,
    models: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
    *,
    folds: int = 5,
    n_permutations: int | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    write: bool = True,
    kernel: Literal["linear", "rbf"] = "linear",
    config: ProbeConfig | None = None,
) -> list[ProbeResult]:
    """Probe every attribute (or those named) from every model (or those named) in a store.

    Holm's correction runs once, across the whole attributes x models table; each result carries the
    family size. `config` overrides the keyword knobs. `n_permutations=None` picks `default_permutations`.
    """
    from embedx.progress import progress_bar
    from embedx.store.h5store import Store

    with Store.open(store_path) as store:
        model_names = resolve_names(models, store.models(), "model", store_path)
        schema = store.schema()
        attribute_names = resolve_names(attributes, list(schema), "attribute", store_path)
        if not model_names:
            raise EmbedxError(f"{store_path}: the store holds no latents yet (run `embedx encode` first)")
        if not attribute_names:
            raise EmbedxError(f"{store_path}: the store holds no attributes to probe")
        family = len(model_names) * len(attribute_names)
        cfg = config or ProbeConfig(
            folds=folds,
            n_bootstrap=n_bootstrap,
            seed=seed,
            kernel=kernel,
            n_permutations=n_permutations if n_permutations is not None else default_permutations(family),
        )
        if cfg.n_permutations and smallest_holm_p(family, cfg.n_permutations) >= cfg.alpha:
            log.warning(
                "with %d tests and %d permutations no probe can pass Holm at alpha=%.2g; use at least "
                "%d permutations",
                family,
                cfg.n_permutations,
                cfg.alpha,
                int(np.ceil(family / cfg.alpha)),
            )
        table = store.attributes()
        subjects = np.asarray(store.subject_ids).astype(str)
        cnn_for = cnn_labels(store, model_names)
        results: list[ProbeResult] = []
        with progress_bar(family, "probes", unit="probe") as advance:
            for model in model_names:
                latents = store.latents(model)
                for attribute in attribute_names:
                    spec = schema[attribute]
                    results.append(
                        cross_validated_probe(
                            latents,
                            table[attribute].to_numpy(),
                            subjects,
                            spec.kind,  # type: ignore[arg-type]
                            model=model,
                            attribute=attribute,
                            config=cfg,
                            role=spec.role,
                        )
                    )
                    advance(1)
    results = add_normalized_encoding(judge_family(results, cfg.alpha), cnn_for)
    if write:
        from embedx.analysis.results import probe_key

        with Store.open(store_path, mode="a") as store:
            for r in results:
                store.write_analysis("probes", probe_key(r), r.to_dict())
    return results
