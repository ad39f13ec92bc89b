"""The fairness gap test under its null and under a real gap, over many simulated cohorts.

    .venv/bin/python bench/fairness_null.py               # 60 null cohorts, about 4 minutes on 2 cores
    .venv/bin/python bench/fairness_null.py --effect 0.8  # group B of `grp` loses part of the finding

Each cohort: `--subjects` subjects with 1-4 rows each, `--dim`-d latents, a finding (`--finding`, 40 %)
written into one direction, and three sensitive attributes drawn per subject at random (sex, a 4-level `eth`
at 45/30/17/8 %, a 2-level `grp`), so that every true gap is zero unless `--effect` weakens the finding in
grp = B. The cohorts go through `fairness_arrays` (what `embedx fairness` runs) and `holm_over_gaps`.
Printed: per attribute and gap, the share with raw p < 0.05 (about 5 % under the null), the Holm-significant
count, and the share of cohorts with at least one significant gap.

Measured on 2026-12-04 (session 18), 400 subjects x 32-d, with the bootstrap-t test of
`fairness_gaps.studentized_test`: seeds 500-559 (a reviewer's run of this design), raw p < 0.05 in 48 of 540
gap tests (8.9 %; eth's equalised-odds gap 9 of 60) and 8 of 60 cohorts with a Holm-significant gap; seeds
2000-2039, 19 of 360 (5.3 %) and 4 of 40; seeds 3000-3099, 36 of 900 (4.0 %) and 3 of 100. Over all 200
cohorts, 103 of 1,800 (5.7 %), where a cohort's nine tests share its predictions and so vary more than a
binomial's: no excess that holds up.
A studentized permutation null (subjects dealt to the groups at random, Welch's statistic; exact under
exchangeability) gave 30 of 360 (8.3 %) on seeds 500-539 too: those seeds, not the bootstrap, ran high.
Session 19, 400 more cohorts (seeds 10000-10399): 170 of 3,600 (4.7 %), and 11 of 400 cohorts (2.8 %) with a
Holm-significant gap; over all 600 cohorts, 26 (4.3 %), within Holm's family-wise 5 %. With a rare finding
(`--finding 0.1`, 150 cohorts of 400 subjects, seeds 20000-20149): the gaps were tested only where each group
held enough positive subjects (267 tests), 10 at raw p < 0.05 (3.7 %), 1 cohort with a significant gap.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("EMBEDX_NO_PROGRESS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedx.analysis.fairness import FairnessConfig, fairness_arrays, holm_over_gaps
from embedx.analysis.fairness_metrics import GroupRules
from embedx.analysis.probe_core import ProbeConfig

GAPS = ("demographic_parity_difference", "equal_opportunity_difference", "equalized_odds_difference")
KINDS = {"sex": "binary", "eth": "categorical", "grp": "binary"}


def one_cohort(seed: int, subjects: int, dim: int, effect: float, finding_share: float = 0.4) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(subjects), rng.integers(1, 5, subjects))
    Z = rng.standard_normal((subjects, dim))[rows] + 0.3 * rng.standard_normal((len(rows), dim))
    finding = rng.random(subjects) < finding_share
    sex = rng.random(subjects) < 0.5
    eth = rng.choice(np.array(["w", "x", "y", "z"]), subjects, p=[0.45, 0.30, 0.17, 0.08])
    grp = rng.random(subjects) < 0.5
    Z[:, 0] += np.where(finding, 1.5 - np.where(grp, effect, 0.0), 0.0)[rows]
    sensitive = pd.DataFrame({"sex": np.where(sex, "F", "M")[rows], "eth": eth[rows],
                              "grp": np.where(grp, "B", "A")[rows]})
    results = fairness_arrays(
        Z, np.where(finding, "1", "0")[rows].astype(object), sensitive,
        np.array([f"s{s}" for s in rows]),
        target_kind="binary", sensitive_kinds=KINDS, target_name="finding", model="m", positive="1",
        config=FairnessConfig(probe=ProbeConfig(seed=seed), rules=GroupRules(seed=seed),
                              intersections="none"),
    )
    return [r.to_dict() for r in holm_over_gaps(results)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohorts", type=int, default=60)
    parser.add_argument("--subjects", type=int, default=400)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--effect", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--finding", type=float, default=0.4, help="share of subjects with the finding")
    parser.add_argument("--quick", action="store_true", help="10 cohorts")
    args = parser.parse_args()
    n = 10 if args.quick else args.cohorts
    tested, raw, significant = Counter(), Counter(), Counter()
    flagged: dict[int, bool] = defaultdict(bool)
    for c in range(n):
        for d in one_cohort(args.seed + c, args.subjects, args.dim, args.effect, args.finding):
            for gap in GAPS:
                g = (d.get("gaps") or {}).get(gap) or {}
                if g.get("p_value") is None:
                    continue
                key = (d["sensitive"], gap)
                tested[key] += 1
                raw[key] += g["p_value"] < 0.05
                significant[key] += bool(g.get("significant"))
                flagged[c] |= bool(g.get("significant"))
    print(f"{n} cohorts, {args.subjects} subjects x {args.dim}-d, finding in {args.finding:.0%}, "
          f"effect {args.effect:g} (on grp = B)")
    print(f"{'attribute':10s} {'gap':32s} {'tested':>6s} {'raw p<.05':>10s} {'Holm sig.':>10s}")
    for key in sorted(tested):
        print(f"{key[0]:10s} {key[1]:32s} {tested[key]:6d} {raw[key]:10d} {significant[key]:10d}")
    total = sum(tested.values())
    share = sum(raw.values()) / max(total, 1)
    print(f"all gaps: raw p < 0.05 in {sum(raw.values())} of {total} ({share:.1%}); "
          f"cohorts with a Holm-significant gap: {sum(flagged.values())} of {n}")


if __name__ == "__main__":
    main()
