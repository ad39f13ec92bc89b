"""Subject-share enrichment under image-count confounding: the share of null tests at p < 0.05 and p < 0.005,
and the power under a real enrichment, where a value goes with how many images its subjects have.

    .venv/bin/python bench/share_strata.py [--reps 200] [--subjects 150] [--quick]

Cases (a value on 10 % of subjects; each subject's images selected with its own propensity, Beta(0.5, 4.5),
so its images tend to fall together):
  many-images  the value's subjects have 25-30 images, the others 2-3
  few-images   the value's subjects have 2-3 images, the others 25-30
  unrelated    1-30 images for everyone, whatever the value
  one-or-two   the value's subjects have 1-2 images, the others 1-8
Under the effect, the value's subjects' propensity is raised by `--effect` (0.15 by default).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from embedx.analysis.enrichment import enrichment

CASES = {
    "many-images": lambda rng, g: np.where(g, rng.integers(25, 31, g.size), rng.integers(2, 4, g.size)),
    "few-images": lambda rng, g: np.where(g, rng.integers(2, 4, g.size), rng.integers(25, 31, g.size)),
    "unrelated": lambda rng, g: rng.integers(1, 31, g.size),
    "one-or-two": lambda rng, g: np.where(g, rng.integers(1, 3, g.size), rng.integers(1, 9, g.size)),
}


def one_p(rng: np.random.Generator, case: str, subjects: int, effect: float) -> float:
    flagged = rng.random(subjects) < 0.1
    flagged[:2] = True
    images = CASES[case](rng, flagged)
    propensity = np.clip(rng.beta(0.5, 4.5, subjects) + effect * flagged, 0, 1)
    subject = np.repeat(np.arange(subjects), images)
    mask = rng.random(subject.size) < propensity[subject]
    frame = pd.DataFrame({"t": np.where(flagged, "yes", "no")[subject]})
    return float(enrichment(frame, mask, groups=subject).set_index("value").loc["yes", "p_value"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--subjects", type=int, default=150)
    parser.add_argument("--effect", type=float, default=0.15)
    parser.add_argument("--quick", action="store_true", help="40 null cohorts per case (bench/run --quick)")
    args = parser.parse_args()
    if args.quick:
        args.reps = 40
    print(f"{'case':<12} {'null p<0.05':>11} {'null p<0.005':>12} {'effect p<0.05':>13} {'s':>5}")
    for case in CASES:
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        null = np.array([one_p(rng, case, args.subjects, 0.0) for _ in range(args.reps)])
        hit = np.array([one_p(rng, case, args.subjects, args.effect) for _ in range(args.reps // 2)])
        print(f"{case:<12} {np.mean(null < 0.05):>11.3f} {np.mean(null < 0.005):>12.3f} "
              f"{np.mean(hit < 0.05):>13.3f} {time.perf_counter() - start:>5.0f}", flush=True)


if __name__ == "__main__":
    main()
