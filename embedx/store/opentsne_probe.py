"""openTSNE without its import of pynndescent, which costs a fresh environment ~35 s of numba compilation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_PROBE_LOCK = threading.Lock()


@contextmanager
def without_pynndescent_probe() -> Iterator[None]:
    """openTSNE's neighbour search, without its import of pynndescent.

    Before every kNN search openTSNE imports pynndescent only to learn whether it is installed, though it
    would use it only for sparse data or unusual metrics, never for dense Euclidean latents as here. In a
    fresh environment that import JIT-compiles ~40 numba functions (about 35 s on 2 cores; ~2 s per
    process once cached), more than the whole t-SNE of the demo. Inside this block the probe answers
    "not installed" for pynndescent alone, so the method openTSNE picks (exact below 1,000 rows, Annoy
    above) and the map are the same. A lock keeps two threads from restoring each other's patch.
    """
    import openTSNE.affinity as affinity

    with _PROBE_LOCK:
        probe = getattr(affinity, "is_package_installed", None)
        if probe is None:  # a later openTSNE without the probe: nothing to skip
            yield
            return
        affinity.is_package_installed = lambda name: name != "pynndescent" and probe(name)
        try:
            yield
        finally:
            affinity.is_package_installed = probe
