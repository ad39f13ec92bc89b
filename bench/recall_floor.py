"""The balanced accuracy's interval with and without its recall floor, under the null and under an effect.

    .venv/bin/python bench/recall_floor.py                # 60 null cohorts + 3 effect scenarios, ~15 min
    .venv/bin/python bench/recall_floor.py --reps 20      # a quick look

Null: `--subjects` subjects with 1-8 near-duplicate rows, `--dim`-d latents, a label in 3-10 % of subjects
that the latents do not carry (truth: 0.5 exactly). Printed: the share of intervals that exclude 0.5, with
the floor (`embedx.analysis.recall_floor`) and without it, from the same probe run. Effect: the scenarios of
`bench/probe_ci.py` (32-d, 1-4 images per subject), coverage of the fold models' true balanced accuracy on
20,000 new subjects and the share of intervals clear of chance, with and without the floor.

Session 19, `--reps 40`, the floor on recalls at exactly 0 or 1: null 150 x 256-d, 8 of 40 intervals excluded
0.5 without the floor, 3 with it; 60 x 64-d, 4 -> 2 of 40; under the three effects (26 cohorts each) the floor
never moved an interval (coverage 92 %, 100 %, 88.5 %; clear of chance 11.5 %, 0 %, 7.7 %, both ways). The
first version, which floored every recall, gave 19 -> 1 of 60 and 7 -> 3 of 60, but was ~1.5 x too wide
where a subject's images disagree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import probe_ci

import embedx.analysis.probe_core as probe_core
from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe

_floor = probe_core.recall_floor
_seen: dict[str, tuple[float, float]] = {}


def _recording(score, interval, *args, **kwargs):
    """The probe's own call, recording the interval before and after the floor."""
    new, moved = _floor(score, interval, *args, **kwargs)
    _seen["before"], _seen["after"] = tuple(interval), tuple(new)
    return new, moved


probe_core.recall_floor = _recording
CONFIG = ProbeConfig(n_permutations=0, n_bootstrap=1000)


def null_cohort(rng: np.random.Generator, subjects: int, dim: int):
    sizes = rng.integers(1, 9, subjects)
    label = (rng.random(subjects) < rng.uniform(0.03, 0.10)).astype(int)
    rows = np.repeat(np.arange(subjects), sizes)
    X = rng.normal(size=(subjects, dim))[rows] + 0.1 * rng.normal(size=(len(rows), dim))
    return X, label[rows], rows


def null_row(reps: int, subjects: int, dim: int, seed: int) -> str:
    rng, out, started = np.random.default_rng(seed), [], time.perf_counter()
    while len(out) < reps:
        X, y, g = null_cohort(rng, subjects, dim)
        if len(np.unique(g[y == 1])) < 3:
            continue
        if cross_validated_probe(X, y.astype(str), g.astype(str), "binary", config=CONFIG).skipped:
            continue
        out.append((*_seen["before"], *_seen["after"]))
    o = np.array(out)
    excluded = [int(np.sum((o[:, i] > 0.5) | (o[:, i + 1] < 0.5))) for i in (0, 2)]
    return (f"null {subjects} x {dim}-d, label in 3-10 %: {len(o)} cohorts, intervals excluding 0.5 "
            f"{excluded[0]} without the floor, {excluded[1]} with it [{time.perf_counter() - started:.0f} s]")


def effect_row(reps: int, subjects: int, prevalence: float, delta: float) -> str:
    rng = np.random.default_rng(subjects * 1000 + int(100 * prevalence) + int(10 * delta) + 77)
    fresh_X, fresh_y, _ = probe_ci.cohort(rng, 20_000, prevalence, delta)
    out, started = [], time.perf_counter()
    while len(out) < reps:
        X, y, g = probe_ci.cohort(rng, subjects, prevalence, delta)
        if y.sum() == 0 or y.sum() == len(y):
            continue
        labels = y.astype(int).astype(str)
        if cross_validated_probe(X, labels, g.astype(str), "binary", config=CONFIG).skipped:
            continue
        truth = probe_ci.truth(CONFIG, X, labels, g, False, (fresh_X, fresh_y.astype(int).astype(str)))
        out.append((truth, *_seen["before"], *_seen["after"]))
    o = np.array(out)
    cover = [np.mean((o[:, i] <= o[:, 0]) & (o[:, 0] <= o[:, i + 1])) for i in (1, 3)]
    clear = [np.mean(o[:, i] > 0.5) for i in (1, 3)]
    return (f"effect {subjects} subjects, {prevalence:.0%} class, delta {delta}: {len(o)} cohorts, coverage "
            f"{cover[0]:.3f} -> {cover[1]:.3f}, clear of chance {clear[0]:.3f} -> {clear[1]:.3f} "
            f"[{time.perf_counter() - started:.0f} s]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="6 cohorts per row")
    args = parser.parse_args()
    if args.quick:
        args.reps = 6
    print(null_row(args.reps, 150, 256, args.seed), flush=True)
    print(null_row(args.reps, 60, 64, args.seed + 1), flush=True)
    effect_reps = args.reps if args.quick else max(20, args.reps * 2 // 3)
    for subjects, prevalence, delta in ((150, 0.05, 1.5), (40, 0.3, 1.0), (300, 0.1, 0.0)):
        print(effect_row(effect_reps, subjects, prevalence, delta), flush=True)


if __name__ == "__main__":
    main()
