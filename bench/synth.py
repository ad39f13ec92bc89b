"""Synthetic-cohort generation speed: `python bench/synth.py [--n N] [--size S] [--kinds cxr,mri] [--quick]`.

Each kind runs with 1 and 2 worker processes; `--quick` makes 300 images.

The target (issue 2) is 2,000 cxr images at 128 px in under 30 s on 2 cores. mri rows are volumes of
16 slices, i.e. 16x the pixels of a cxr image. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from embedx.data.synth import generate_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--kinds", default="cxr,mri")
    parser.add_argument("--quick", action="store_true", help="300 images instead of --n")
    args = parser.parse_args()
    n, size, kinds = (300 if args.quick else args.n), args.size, args.kinds.split(",")
    rows = []
    for kind in kinds:
        for workers in (1, 2):
            out = Path(tempfile.mkdtemp(prefix=f"bench_synth_{kind}_"))
            cpu0, start = _cpu(), time.perf_counter()
            generate_cohort(kind, n, out, size=size, seed=0, workers=workers)
            seconds, cpu = time.perf_counter() - start, _cpu() - cpu0
            megabytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
            shutil.rmtree(out)
            rows.append((n, size, kind, workers, seconds, n / seconds, cpu, megabytes))
    # cpu_s (user + system of this process and its workers) is what the run costs on an idle machine;
    # wall seconds on a shared machine also include waiting for the cores.
    header = (
        ("n", 6),
        ("size", 5),
        ("kind", 5),
        ("workers", 7),
        ("seconds", 8),
        ("img/s", 8),
        ("cpu_s", 7),
        ("MB", 7),
    )
    print(" ".join(f"{name:>{width}}" for name, width in header))
    for n_, s, k, w, sec, rate, cpu, mb in rows:
        print(f"{n_:>6} {s:>5} {k:>5} {w:>7} {sec:>8.1f} {rate:>8.1f} {cpu:>7.1f} {mb:>7.1f}")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    main()
