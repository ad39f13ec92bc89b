"""Benchmark: probes for every attribute of two models (512-d latents), as `embedx probe` runs them.

Prints one row per size: probes run, total seconds, seconds per probe, and the linear extrapolation to a
CheXpert-sized store (220k images, ~65k patients). The design keeps the per-probe cost nearly flat in N:
SVM fits use at most 20k training rows per fold, C is tuned on 2k, the permutation test (ridge, exact refit
per permutation) runs on a 10k-row subject subsample; only prediction, the fold split and the bootstrap
(sufficient statistics per subject, no refits) grow with N.

    .venv/bin/python bench/analysis.py            # 20k and 50k samples (several minutes on 2 cores)
    .venv/bin/python bench/analysis.py --quick    # 5k and 10k samples
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedx.analysis.fairness import FairnessConfig, run_fairness
from embedx.analysis.probes import run_probes
from embedx.data.schema import AttributeSpec
from embedx.store.h5store import write_store_from_arrays

SCHEMA = {
    "site": AttributeSpec("site", "categorical", "acquisition"),
    "view": AttributeSpec("view", "binary", "acquisition"),
    "sex": AttributeSpec("sex", "binary", "demographic"),
    "age": AttributeSpec("age", "continuous", "demographic"),
    "finding": AttributeSpec("finding", "binary", "clinical"),
    "insurance": AttributeSpec("insurance", "categorical", "demographic"),
}


def make_store(folder: Path, n: int, dim: int, seed: int = 0) -> Path:
    """A store of n images (~3.4 per subject, as in CheXpert) with two 512-d models and six attributes."""
    rng = np.random.default_rng(seed)
    n_subjects = max(10, int(n / 3.4))
    subject = rng.integers(0, n_subjects, n)
    site = np.array(["a", "b", "c", "d", "e"])[rng.integers(0, 5, n_subjects)][subject]
    sex = np.array(["F", "M"])[rng.integers(0, 2, n_subjects)][subject]
    age = rng.uniform(18, 90, n_subjects)[subject] + rng.uniform(0, 3, n)
    view = np.array(["AP", "PA"])[rng.integers(0, 2, n)]
    finding = (rng.random(n) < 0.3).astype(int).astype(str)
    insurance = np.array(["public", "private", "self-pay"])[rng.integers(0, 3, n_subjects)][subject]
    attrs = pd.DataFrame(
        {"site": site, "view": view, "sex": sex, "age": age, "finding": finding, "insurance": insurance}
    )
    latents = {}
    for m, gain in (("vae", 0.3), ("dae", 0.5)):
        z = rng.normal(size=(n, dim)).astype(np.float32)
        z[:, :5] += gain * np.eye(5, dtype=np.float32)[np.searchsorted(["a", "b", "c", "d", "e"], site)]
        z[:, 5] += gain * (sex == "M")
        z[:, 6] += gain * (age - 54) / 20
        z[:, 7] += gain * (view == "AP")
        z[:, 8] += 0.5 * gain * (finding == "1")
        latents[m] = z
    return write_store_from_arrays(
        folder / "bench.h5", [f"i{i}" for i in range(n)], [f"s{s}" for s in subject], attrs, SCHEMA, latents
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5k and 10k samples instead of 20k and 50k")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--fairness", action="store_true", help="also time `fairness --target finding`")
    parser.add_argument(
        "--at",
        type=int,
        default=0,
        help="also time one probe per kind at this many rows (e.g. 220000) and project the whole run",
    )
    args = parser.parse_args()
    sizes = (5_000, 10_000) if args.quick else (20_000, 50_000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = make_store(Path(tmp) / str(n), n, args.dim)
            start, cpu = time.perf_counter(), time.process_time()
            results = run_probes(path, write=False)
            total, cpu = time.perf_counter() - start, time.process_time() - cpu
            perms = results[0]["permutation"]["permutations"]
            row = {
                "n": n,
                "dim": args.dim,
                "models": 2,
                "attributes": len(SCHEMA),
                "probes": len(results),
                "permutations": perms,
                "seconds": round(total, 1),
                "cpu s": round(cpu, 1),
                "s/probe (median)": round(float(np.median([r["seconds"] for r in results])), 2),
                "slowest": max(results, key=lambda r: r["seconds"])["attribute"],
            }
            if args.fairness:
                start = time.perf_counter()
                run_fairness(
                    path, "finding", ["sex", "age"], model="dae", write=False, config=FairnessConfig()
                )
                row["fairness s (1 model)"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            encoded = {(r["model"], r["attribute"]): r["encoded"] for r in results}
            print(f"n={n}: encoded {sorted(k for k, v in encoded.items() if v)}", file=sys.stderr)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if len(rows) == 2 and min(sizes) >= 25_000:
        (n1, t1), (n2, t2) = ((r["n"], r["seconds"]) for r in rows)
        estimate = t2 + (t2 - t1) / (n2 - n1) * (220_000 - n2)
        print(
            f"\nlinear extrapolation to 220k (2 models x {len(SCHEMA)} attrs): ~{estimate:.0f} s (goal 300)"
        )
    else:
        print(
            "\n(sizes below the 20k-row fit cap: per-probe cost is still growing; use --at 220000 to project)"
        )
    if args.at:
        project(args.at, args.dim)


def project(n: int, dim: int) -> None:
    """Time one probe of each kind at n rows (array level) and project 2 models x the 6-attribute mix.

    Above the caps (20k fit rows, 1.5k tuning rows, 10k permutation rows) only prediction, folds and the
    bootstrap grow with n, so three probes measured at full size give the whole run's cost.
    """
    from embedx.analysis.probes import probe_arrays

    rng = np.random.default_rng(1)
    n_subjects = int(n / 3.4)
    subject = rng.integers(0, n_subjects, n)
    z = rng.normal(size=(n, dim)).astype(np.float32)
    site = rng.integers(0, 5, n_subjects)[subject]
    sex = rng.integers(0, 2, n_subjects)[subject]
    age = rng.uniform(18, 90, n_subjects)[subject]
    z[:, :5] += 0.3 * np.eye(5, dtype=np.float32)[site]
    z[:, 5] += 0.3 * sex
    z[:, 6] += 0.3 * (age - 54) / 20
    seconds = {}
    for name, y, kind in (
        ("5-class", site, "categorical"),
        ("binary", sex, "binary"),
        ("continuous", age, "continuous"),
    ):
        start = time.perf_counter()
        probe_arrays(z, y, subject, kind)
        seconds[name] = time.perf_counter() - start
    three_class = seconds["binary"] + 0.6 * (seconds["5-class"] - seconds["binary"])  # OvR cost grows with K
    per_model = seconds["5-class"] + three_class + 3 * seconds["binary"] + seconds["continuous"]
    print(f"\nat n={n:,} x {dim}: " + ", ".join(f"{k} probe {v:.1f} s" for k, v in seconds.items()))
    print(
        f"projected `embedx probe`, 2 models x 6 attributes (5-class, 3-class, 3 binary, continuous): "
        f"~{2 * per_model:.0f} s ({2 * per_model / 60:.1f} min); goal < 300 s"
    )


if __name__ == "__main__":
    main()
