"""The least width a balanced accuracy's interval can honestly have, from each class's recall.

Why. Balanced accuracy is the mean of the classes' recalls, and a recall is a proportion over the subjects
of its class. A subject bootstrap of a proportion collapses at its edge: a probe that predicts no rare
subject as rare has recall 0 of 5 in every resample (the refits too, as they keep the class's size), so the
resamples vary only through the majority class and the interval comes out hair-thin. In null simulations
(150 subjects, 256-d, a label in 3-10 % of subjects) intervals such as 0.497 [0.492, 0.498] missed chance,
the only true value a label with no effect has, in 15 of 56 cohorts. Five subjects say little: recall 0/5 is
compatible with a true recall up to 0.43.

What. For each class, a Wilson score interval for its recall, with the class's distinct subjects as the
sample size (rows of one subject are not independent evidence). The distances from each recall to its
Wilson bounds are combined over the classes (root sum of squares, divided by K, as the recalls are
averaged) into the least distance the interval must reach from the score on each side. Only recalls at
exactly 0 or 1 take part: there every image of the class agrees, so each subject is one observation, while
inside (0, 1) a subject's images can disagree, the resampling interval sees the spread at its true size, and
a Wilson interval over subjects was about 1.5 x too wide (a reviewer's 200 subjects x 8 varied images: 5 of 7
real effects lost).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from embedx.analysis.stats import CI_LEVEL

__all__ = ["proportion_floor", "recall_floor", "wilson_interval"]


def wilson_interval(successes: float, n: float, level: float = CI_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) for n = 0. `successes` may be fractional."""
    if n <= 0:
        return (0.0, 1.0)
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def recall_floor(score: float, interval: tuple[float, float], codes: np.ndarray, pred: np.ndarray,
                 subjects: np.ndarray, level: float = CI_LEVEL) -> tuple[tuple[float, float], bool]:
    """(`interval` widened to at least the recalls' binomial uncertainty about `score`, whether it moved).

    `codes` and `pred` are the rows' class codes and out-of-fold predictions, `subjects` their subject
    codes; the classes are those present in `codes`."""
    low, high = interval
    if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(score)):
        return interval, False
    codes, pred, subjects = np.asarray(codes), np.asarray(pred), np.asarray(subjects)
    down, up = [], []
    classes = np.unique(codes)
    for c in classes:
        rows = codes == c
        recall = float(np.mean(pred[rows] == c))
        if 0.0 < recall < 1.0:  # inside, resampling sees the spread, at the right (image-level) n
            down.append(0.0)
            up.append(0.0)
            continue
        n = len(np.unique(subjects[rows]))  # at 0 or 1 every image agrees: each subject is one observation
        lo, hi = wilson_interval(recall * n, n, level)
        down.append(max(0.0, recall - lo))
        up.append(max(0.0, hi - recall))
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
    lo, hi = wilson_interval(rate * n, n, level)
    return [float(min(low, lo)), float(max(high, hi))]
