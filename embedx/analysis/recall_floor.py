"""The least width a balanced accuracy's interval can honestly have, from class recalls at 0 or 1.

Why. Balanced accuracy is the mean of the classes' recalls, and a subject bootstrap of a proportion collapses
at its edge: a probe that predicts no rare subject as rare has recall 0 of 5 in every resample (the refits
too, as they keep the class's size), so the resamples vary only through the majority class and the interval
comes out hair-thin. In null simulations (150 subjects x 256-d, a label in 3-10 % of subjects, 1-8
near-duplicate rows each) intervals such as 0.497 [0.492, 0.498] missed chance, the only true value a label
with no effect has, in 19 of 60 cohorts. Five subjects say little: recall 0/5 is compatible with a true
recall up to 0.43.

What. For each class whose recall is exactly 0 or 1, a Wilson score interval over the class's distinct
subjects (every image of the class agrees there, so each subject is one observation). The distances from
those recalls to their Wilson bounds are combined (root sum of squares, divided by K, as the recalls are
averaged) into the least distance the interval must reach from the score on each side. Recalls inside
(0, 1) take no part: a subject's images can disagree there, the resampling interval sees the spread at its
true size, and a Wilson interval over subjects was about 1.5 x too wide (a reviewer's 200 subjects x 8 varied
images: 5 of 7 real effects lost).
"""

from __future__ import annotations

import numpy as np

from embedx.analysis.stats import CI_LEVEL, wilson_interval

__all__ = ["proportion_floor", "recall_floor"]


def recall_floor(score: float, interval: tuple[float, float], codes: np.ndarray, pred: np.ndarray,
                 subjects: np.ndarray, level: float = CI_LEVEL) -> tuple[tuple[float, float], bool]:
    """(`interval` widened to at least the recalls' binomial uncertainty about `score`, whether it moved).

    `codes` and `pred` are the rows' class codes and out-of-fold predictions, `subjects` their subject
    codes; the classes are those present in `codes`."""
    low, high = interval
    if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(score)):
        return interval, False
    codes, pred, subjects = np.asarray(codes), np.asarray(pred), np.asarray(subjects)
    classes = np.unique(codes)
    down, up = [], []
    for c in classes:
        rows = codes == c
        recall = float(np.mean(pred[rows] == c))
        if 0.0 < recall < 1.0:  # inside, resampling sees the spread at the images' own n
            continue
        n = len(np.unique(subjects[rows]))
        lo, hi = wilson_interval(round(recall * n), n, level)
        down.append(recall - lo)
        up.append(hi - recall)
    if not down:
        return interval, False
    k = len(classes)
    least_low = score - float(np.sqrt(np.sum(np.square(down)))) / k
    least_high = score + float(np.sqrt(np.sum(np.square(up)))) / k
    new = (float(max(0.0, min(low, least_low))), float(min(1.0, max(high, least_high))))
    return new, bool(new[0] < low or new[1] > high)


def proportion_floor(rate: float, interval: list[float] | tuple[float, float], n: int,
                     level: float = CI_LEVEL) -> list[float]:
    """A rate's resampled interval widened to at least its Wilson interval over `n` subjects: a group's TPR
    of 10 of 10 resamples to [1, 1], and is compatible with 0.72."""
    low, high = interval
    if n <= 0 or not (np.isfinite(rate) and np.isfinite(low) and np.isfinite(high)) or 0.0 < rate < 1.0:
        return list(interval)
    lo, hi = wilson_interval(round(rate * n), n, level)
    return [float(min(low, lo)), float(max(high, hi))]
