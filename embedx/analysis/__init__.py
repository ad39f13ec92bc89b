"""What the latents encode: probes, fairness, harmonisation, clusters and controls.

Entry points (see docs/architecture.md): `run_probes`, `run_fairness`, `run_confound_controls`,
`run_calibration`; the one probe core `LinearProbe` / `cross_validated_probe` -> `ProbeResult`; array-level
`fairness_arrays`, `ComBat`; shared statistics in `embedx.analysis.stats` and the JSON shapes
in `embedx.analysis.results`. Imports are lazy so that `import embedx.analysis` stays cheap.
"""

from __future__ import annotations

from embedx._lazy import lazy_getattr

_EXPORTS = {
    "run_probes": "embedx.analysis.probes",
    "probe_arrays": "embedx.analysis.probes",
    "probe_within_strata": "embedx.analysis.strata",
    "ProbeConfig": "embedx.analysis.probe_core",
    "LinearProbe": "embedx.analysis.probe_core",
    "cross_validated_probe": "embedx.analysis.probe_core",
    "ProbeResult": "embedx.analysis.probe_result",
    "judge_family": "embedx.analysis.probe_result",
    "run_fairness": "embedx.analysis.fairness",
    "fairness_arrays": "embedx.analysis.fairness",
    "FairnessConfig": "embedx.analysis.fairness",
    "ComBat": "embedx.analysis.combat",
    "probe_after_combat": "embedx.analysis.combat",
    "run_confound_controls": "embedx.analysis.combat",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
