"""Simulated shift experiments shared by the paired-contrast tests: a design of one acquisition and the
scores of models "trained" per group, without training anything.

Each simulated model scores an image by what it `shows` (label times separation plus noise) plus its own
noise; `own_bonus` raises a model's scores on positives of its own training group (the seed's effect) and
`seed_sd` gives each trained model a lasting luck of its own on positives (what a training seed does).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from embedx.analysis.shift_design import ALL, Design


def simulated_design(subject: np.ndarray, group: np.ndarray, label: np.ndarray, is_test: np.ndarray,
                     groups: tuple[str, ...]) -> Design:
    """One tier (ALL), every positive in it; rows are the manifest's rows."""
    return Design(
        table=pd.DataFrame({"subject_id": np.asarray(subject).astype(str)}), rows=np.arange(len(group)),
        label=label, tier_names=[ALL], tier_of=np.where(label, ALL, ""), group=group, groups=list(groups),
        is_test=is_test, positive_value="1", difficulty=None,
    )


def simulated_records(rng: np.random.Generator, design: Design, shows: np.ndarray, centre: float, *,
                      replicates: int, own_bonus: float = 0.0, seed_sd: float = 0.0) -> list[dict[str, Any]]:
    """Each group's and the mixed model's replicate scores on the test rows."""
    g, y = design.group, design.label
    test = np.flatnonzero(design.is_test)
    records = []
    for train in [*design.groups, ALL]:
        for replicate in range(replicates):
            logit = (shows[test] - centre + rng.normal(0, 0.5, len(test))
                     + y[test] * (own_bonus * (g[test] == train) + rng.normal(0, seed_sd)))
            records.append({"tier": ALL, "train": train, "replicate": replicate, "rows": test,
                            "score": 1 / (1 + np.exp(-logit))})
    return records
