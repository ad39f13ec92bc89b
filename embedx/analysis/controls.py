"""The seeds' control experiments, one import away (implementations live in one module each).

* `background_control` — Dhar & Shamir's blank-background patches (`embedx.analysis.background`);
* `cross_site` — train on site i / test on site j, pooled and leave-one-site-out
  (`embedx.analysis.cross_site`);
* `distribution_tests` — KS per PCA mode between groups, Benjamini-Yekutieli (`embedx.analysis.distribution`).

Each returns a JSON-ready dict and writes it under `/analysis/controls/<key>` of the store when asked.
"""

from __future__ import annotations

from embedx.analysis.background import background_control
from embedx.analysis.cross_site import cross_site, cross_site_arrays
from embedx.analysis.distribution import distribution_tests, distribution_tests_arrays

__all__ = [
    "background_control",
    "cross_site",
    "cross_site_arrays",
    "distribution_tests",
    "distribution_tests_arrays",
]
