"""Which class carries an encoded categorical attribute: each class's one-vs-rest AUC, highest first.

"Site encoded" sends a user to harmonise every site when one hospital's scanner is the signature. A cohort
where only site C has a latent signature must rank C first, well above the others, which sit near 0.5.
"""

from __future__ import annotations

import numpy as np

from embedx.analysis.probe_core import ProbeConfig, cross_validated_probe
from embedx.analysis.tables import CLASS_SEPARATION_TITLE, class_separation_lines, probe_rich_table


def _sites(rng: np.random.Generator, shift: float, subjects: int = 200) -> tuple[np.ndarray, ...]:
    site = np.array(list("ABCD"))[np.arange(subjects) % 4]
    z = rng.normal(size=(subjects, 12))
    z[site == "C", 0] += shift
    rows = np.repeat(np.arange(subjects), 2)
    return z[rows] + 0.5 * rng.normal(size=(len(rows), 12)), site[rows], rows.astype(str)


def test_the_one_site_with_a_signature_is_ranked_first() -> None:
    X, site, subject = _sites(np.random.default_rng(3), shift=2.5)
    r = cross_validated_probe(X, site, subject, "categorical", model="vae", attribute="site",
                              config=ProbeConfig(n_permutations=199, n_bootstrap=300))
    assert r.encoded
    ranked = list(r.class_auc)
    assert ranked[0] == "C" and r.class_auc["C"] > 0.9, r.class_auc
    assert all(r.class_auc[s] < 0.75 for s in "ABD"), r.class_auc  # the rest are told apart only from C
    [line] = class_separation_lines([r.to_dict()])
    assert line.startswith("vae/site: C 0.9")
    table = probe_rich_table([r.to_dict()])
    assert CLASS_SEPARATION_TITLE in str(table.caption) and "vae/site: C" in str(table.caption)
    # counts are subjects first, images beside them (the unit of every fold, interval and permutation)
    (counts,) = [c for c in table.columns if c.header == "subjects (images)"]
    assert list(counts.cells) == [f"{r.n_subjects} ({r.n})"] and r.n_subjects < r.n


def test_no_line_for_an_attribute_that_is_not_encoded_or_binary() -> None:
    X, site, subject = _sites(np.random.default_rng(4), shift=0.0)
    null = cross_validated_probe(X, site, subject, "categorical", model="vae", attribute="site",
                                 config=ProbeConfig(n_permutations=199, n_bootstrap=300))
    assert set(null.class_auc) == set("ABCD") and not null.encoded
    assert class_separation_lines([null.to_dict()]) == []
    binary = cross_validated_probe(X, np.isin(site, ["C"]), subject, "binary",
                                   config=ProbeConfig(n_permutations=0, n_bootstrap=0))
    assert binary.class_auc is None and "class_auc" not in binary.to_dict()
