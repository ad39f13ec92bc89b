"""Synthetic-cohort generation speed: `python bench/synth.py [N] [SIZE]` prints n, size, kind, seconds, img/s.

The target (issue 2) is 2,000 cxr images at 128 px in under 30 s on 2 cores. mri rows are volumes of
16 slices, i.e. 16x the pixels of a cxr image. Run on an otherwise idle machine.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from embedx.data.synth import generate_cohort


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    rows = []
    for kind in ("cxr", "mri"):
        for workers in (1, 2):
            out = Path(tempfile.mkdtemp(prefix=f"bench_synth_{kind}_"))
            start = time.perf_counter()
            generate_cohort(kind, n, out, size=size, seed=0, workers=workers)
            seconds = time.perf_counter() - start
            megabytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
            shutil.rmtree(out)
            rows.append((n, size, kind, workers, seconds, n / seconds, megabytes))
    print(f"{'n':>6} {'size':>5} {'kind':>5} {'workers':>7} {'seconds':>8} {'img/s':>8} {'MB':>7}")
    for n_, s, k, w, sec, rate, mb in rows:
        print(f"{n_:>6} {s:>5} {k:>5} {w:>7} {sec:>8.1f} {rate:>8.1f} {mb:>7.1f}")


if __name__ == "__main__":
    main()
