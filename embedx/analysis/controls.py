"""The seeds' control experiments, one import away (implementations live in one module each).

* `background_control` — Dhar & Shamir's blank-background patches (`embedx.analysis.background`);
* `cross_site` — train on site i / test on site j, pooled and leave-one-site-out
  (`embedx.analysis.cross_site`);
* `distribution_tests` — KS per PCA mode between groups, Benjamini-Yekutieli (`embedx.analysis.distribution`).

Each returns a typed result (`BackgroundResult`, `CrossSiteResult`, `DistributionResult`; `.to_dict()` is
the JSON) and writes it under `/analysis/controls/<key>` of the store when asked.
"""

from __future__ import annotations

from embedx.analysis.background import BackgroundResult, background_control
from embedx.analysis.cross_site import CrossSiteResult, cross_site, cross_site_arrays
from embedx.analysis.distribution import DistributionResult, distribution_tests, distribution_tests_arrays

__all__ = [
    "BackgroundResult",
    "CrossSiteResult",
    "DistributionResult",
    "background_control",
    "cross_site",
    "cross_site_arrays",
    "distribution_tests",
    "distribution_tests_arrays",
]
