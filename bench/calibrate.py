"""Benchmark: `embedx calibrate` (200 null + 200 planted labels) on a store of 512-d latents.

Prints one row per size: rows, the rows the permutation test uses (at most 10k), seconds, the false-positive
rate and mean p over the null labels, and the power at one mid-grid cell. Goal: under 5 minutes at 20k rows
on 2 cores: 280 s measured on 2026-12-04 (with another test beside it). Power re-runs the probe (SVM, CI) on
planted labels that pass p (at least 4 per cell on a store this size; `probe_checks`); before that, 84 s.

    .venv/bin/python bench/calibrate.py            # 20k rows
    .venv/bin/python bench/calibrate.py --quick    # 5k rows
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from analysis import make_store

from embedx.analysis.calibration import run_calibration


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5k rows instead of 20k")
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    n = 5_000 if args.quick else 20_000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = make_store(Path(tmp), n, args.dim)
        start, cpu = time.perf_counter(), time.process_time()
        (result,) = run_calibration(path, ["dae"], write=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        cell = next(r for r in result.power if r["prevalence"] == 0.05 and r["effect"] == 0.5)
        rows.append(
            {
                "n": n,
                "dim": args.dim,
                "rows used": result.rows_used,
                "null labels": result.n_null,
                "planted": sum(r["n_labels"] for r in result.power),
                "permutations": result.permutations,
                "seconds": round(seconds, 1),
                "cpu s": round(cpu, 1),
                "FPR": round(result.false_positive_rate, 3),
                "mean p": round(result.mean_p, 3),
                "power 5% d0.5": round(cell["power"], 2),
            }
        )
    print(pd.DataFrame(rows).to_string(index=False))
    print("\ngoal: < 300 s at 20k rows (200 null + 200 planted labels)")


if __name__ == "__main__":
    main()
