"""Read each model beside what plain pixels already show: does it discard, keep or amplify an attribute?

A model's probe alone under-reads a shortcut: latents at chance for "site" may mean the images carry no site
signature, or that this model threw it away while a classifier trained on the same pixels would find it.
The `pixels` reference (see `embedx.store.pixels`) is probed with the same probe, on the same rows and
subjects, so the two scores are comparable.

A difference is called only where the two 95 % intervals do not overlap. Two intervals that miss each other
imply a difference at p < 0.01 or so (conservative; the scores are correlated because they share rows, which
would make a paired test more powerful). Where they overlap, the reading is "keeps what the pixels carry"
when both verdicts agree, and "unclear" when one probe is called encoded and the other not: a verdict that
flips inside overlapping intervals is no evidence of a difference. Probes run on different rows (a model
that encoded only part of the cohort) are not compared at all.

The reference scales each image by its own percentiles, which removes any global brightness or contrast
difference. A model trained with a fixed window (`data.preprocess.window`) still sees one, so a site that
differs only in exposure reads as "amplifies ... where the pixels do not find it" although the raw pixels
carry it plainly (review: /tmp/review1, a minority site at grey level 92 against 57). Where the store says a
model's intensity scaling differs from the reference's, the sentence says so and `like_for_like` is false.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedx.analysis.typed import JsonResult

REFERENCE_KIND = "pixels"

DISCARDS = "discards"
WEAKER = "keeps less"
KEEPS = "keeps"
AMPLIFIES = "amplifies"
NEITHER = "neither"
UNCLEAR = "unclear"
NO_READING = "no reading"


@dataclass(frozen=True)
class ReferenceComparison(JsonResult):
    """One model x attribute, against the pixel reference."""

    model: str
    attribute: str
    metric: str
    reference: str
    pixel_score: float | None
    pixel_ci: tuple[float, float] | None
    pixel_encoded: bool
    model_score: float | None
    model_ci: tuple[float, float] | None
    model_encoded: bool
    chance: float | None
    kept: float | None  # (model - chance) / (pixels - chance), oriented so that 1 = as readable as pixels
    reading: str
    sentence: str
    like_for_like: bool = True  # the model and the reference saw identically scaled intensities (or unknown)


def intensity_scaling(preprocess_json: str) -> str | None:
    """A model's intensity scaling from the store's `preprocess` attribute, in words; None when unknown
    (imported embeddings carry none)."""
    try:
        pre = json.loads(preprocess_json) if preprocess_json else None
    except (TypeError, ValueError):
        return None
    if not isinstance(pre, dict) or "intensity" not in pre:
        return None
    mode = str(pre["intensity"])
    if mode == "percentile":
        return "per-image percentile scaling"
    if mode == "window" and pre.get("window"):
        centre, width = pre["window"]
        return f"a fixed window (centre {centre:g}, width {width:g})"
    return "per-image min-max scaling" if mode == "minmax" else mode


def _ci(p: Mapping[str, Any]) -> tuple[float, float] | None:
    ci = p.get("ci")
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return float(ci[0]), float(ci[1])


def _advantage(value: float, chance: float, lower_is_better: bool) -> float:
    return chance - value if lower_is_better else value - chance


def _fmt(score: float | None, ci: tuple[float, float] | None) -> str:
    if score is None:
        return "-"
    return f"{score:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _compared(probe: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a probe is compared by. A continuous probe's verdict rests on its out-of-fold correlation and
    that correlation's interval (`probe_result.clear_of_chance`); comparing MAE intervals instead read age
    as "unclear" where the probes themselves disagreed plainly (review: /tmp/review-claims, rare seed 1).
    Results stored before the correlation existed keep the MAE."""
    r, ci = probe.get("correlation"), probe.get("correlation_ci")
    if probe.get("metric") == "mae" and r is not None and ci and None not in ci:
        return {**probe, "metric": "correlation", "score": r, "ci": ci, "chance": 0.0}
    return probe


def compare_one(model_probe: Mapping[str, Any], pixel_probe: Mapping[str, Any],
                scaling: tuple[str | None, str | None] = (None, None)) -> ReferenceComparison:
    """`scaling`: the model's and the reference's intensity scaling in words (`intensity_scaling`)."""
    if model_probe.get("metric") == pixel_probe.get("metric") == "mae":
        m_c, p_c = _compared(model_probe), _compared(pixel_probe)
        if m_c["metric"] == p_c["metric"]:
            model_probe, pixel_probe = m_c, p_c
    metric = str(model_probe.get("metric"))
    lower = metric == "mae"
    chance = model_probe.get("chance")
    ms, ps = model_probe.get("score"), pixel_probe.get("score")
    mci, pci = _ci(model_probe), _ci(pixel_probe)
    m_enc, p_enc = bool(model_probe.get("encoded")), bool(pixel_probe.get("encoded"))
    model, attribute = str(model_probe["model"]), str(model_probe["attribute"])
    kept = None
    if ms is not None and ps is not None and chance is not None:
        gap = _advantage(float(ps), float(chance), lower)
        if p_enc and gap > 0:
            kept = _advantage(float(ms), float(chance), lower) / gap
    unit = "MAE" if lower else "r" if metric == "correlation" else metric.replace("_", " ")
    numbers = (f"pixels {_fmt(ps, pci)}, {model} {_fmt(ms, mci)}"
               + (f", chance {float(chance):.2f}" if chance is not None else "") + f" ({unit})")
    rows_m, rows_p = model_probe.get("rows_encoded"), pixel_probe.get("rows_encoded")
    n_m, n_p = model_probe.get("n"), pixel_probe.get("n")
    if ms is None or ps is None or mci is None or pci is None:
        reading, text = NO_READING, f"{attribute}: no comparison (a probe was skipped or has no interval)"
    elif (rows_m is not None and rows_p is not None and rows_m != rows_p) or (
            n_m is not None and n_p is not None and n_m != n_p):
        reading = NO_READING
        text = (f"{attribute}: {model} and the pixels were probed on different rows (n = {n_m} vs {n_p}); "
                "encode the same rows with both to compare them")
    else:
        better = (mci[1] < pci[0]) if lower else (mci[0] > pci[1])
        worse = (mci[0] > pci[1]) if lower else (mci[1] < pci[0])
        if not p_enc and not m_enc:
            reading = NEITHER
            text = f"{attribute}: neither the pixels nor {model} show it ({numbers})"
        elif better and m_enc:
            reading = AMPLIFIES
            text = (f"{model} amplifies {attribute}: easier to read than in the pixels"
                    + ("" if p_enc else ", where a linear view of the pixels does not find it")
                    + f" ({numbers})")
        elif worse and p_enc and not m_enc:
            reading = DISCARDS
            text = (f"{model} discards {attribute}: the pixels carry it, its latents do not show it "
                    f"({numbers})")
        elif worse and p_enc:
            reading = WEAKER
            share = f"{100 * kept:.0f} % of the pixels' margin over chance" if kept is not None else "less"
            text = f"{model} keeps {share} for {attribute} ({numbers})"
        elif p_enc != m_enc:
            reading = UNCLEAR
            text = (f"{attribute}: {'the pixels' if p_enc else model} clear the bar and "
                    f"{model if p_enc else 'the pixels'} do not, but the intervals overlap: no clear "
                    f"difference ({numbers})")
        else:
            reading = KEEPS
            text = f"{model} keeps {attribute} about as the pixels carry it ({numbers})"
    like_for_like = None in scaling or scaling[0] == scaling[1]
    if not like_for_like and reading != NO_READING:
        text += (f"; not like for like: {model} saw {scaling[0]}, the pixel reference {scaling[1]}, so a "
                 "global brightness or contrast difference shows in one and not the other")
    return ReferenceComparison(
        model=model, attribute=attribute, metric=metric, reference=str(pixel_probe["model"]),
        pixel_score=None if ps is None else float(ps), pixel_ci=pci, pixel_encoded=p_enc,
        model_score=None if ms is None else float(ms), model_ci=mci, model_encoded=m_enc,
        chance=None if chance is None else float(chance), kept=kept, reading=reading, sentence=text,
        like_for_like=like_for_like,
    )


def compare_to_reference(
    probes: Sequence[Mapping[str, Any]], kinds: Mapping[str, str], preprocess: Mapping[str, str] | None = None
) -> list[ReferenceComparison]:
    """Every (model, attribute) probe beside the same attribute's pixel-reference probe.

    `kinds` maps model name -> kind (store provenance); the first model of kind `pixels` is the reference.
    `preprocess` maps model name -> its stored `preprocess` JSON, to say where the intensities were scaled
    differently.
    """
    references = [m for m, k in kinds.items() if k == REFERENCE_KIND]
    if not references:
        return []
    ref = references[0]
    by_attribute = {str(p["attribute"]): p for p in probes if p.get("model") == ref and not p.get("skipped")}
    out = []
    preprocess = preprocess or {}
    reference_scaling = intensity_scaling(preprocess.get(ref, ""))
    for p in probes:
        if p.get("model") == ref or p.get("skipped") or str(p["attribute"]) not in by_attribute:
            continue
        scaling = (intensity_scaling(preprocess.get(str(p.get("model")), "")), reference_scaling)
        out.append(compare_one(p, by_attribute[str(p["attribute"])], scaling))
    return sorted(out, key=lambda c: (c.attribute, c.model))
