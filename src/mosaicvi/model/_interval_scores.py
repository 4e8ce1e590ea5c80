"""The conformal scores and scales of predictive intervals (see ``_intervals``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

#: Version of the calibration stored in ``interval_calibration_``.
CALIBRATION_FORMAT = 2
#: Situations of a cell lacking the modality (see the module notes).
SITUATIONS = ("cell", "batch")


def _level_key(level: float) -> str:
    return repr(float(level))  # distinct levels, distinct keys (0.9 and 0.9000001)


def _check_level(level, name: str = "level") -> float:
    """``level`` as a float in (0, 1), or an error naming ``name``."""
    if isinstance(level, bool) or not isinstance(level, Real) or not 0.0 < float(level) < 1.0:
        raise ValueError(
            f"`{name}` must be one nominal coverage, a number in (0, 1) such as 0.9, got "
            f"{level!r}."
        )
    return float(level)


def _check_levels(levels) -> list[float]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(
            f"`levels` must be a non-empty sequence of numbers in (0, 1), got {levels!r}."
        )
    return sorted({_check_level(v, "levels") for v in levels})


def _log_interval(lower, mean, upper):
    """Centre (the predictive mean) and the two half-widths of the interval on ``log1p``.

    The half-widths reach the bounds' outer half-count edges, ``lower - 1/2`` and
    ``upper + 1/2`` (so scale 1 is the raw interval, and a count at a bound does not score
    exactly 1 everywhere), and are at least half the ``log1p`` step from the mean to one count
    more, so that a degenerate side can grow.
    """
    m = np.log1p(mean)
    floor = 0.5 * (np.log1p(mean + 1.0) - m)
    below = np.maximum(m - np.log(lower + 0.5), floor)
    above = np.maximum(np.log(upper + 1.5) - m, floor)
    return m, below, above


def _scores(lower, median, upper, mean, truth) -> np.ndarray:
    """The scale at which each count enters its interval; 0 for the median count."""
    m, below, above = _log_interval(lower, mean, upper)
    y = np.log1p(truth)
    scores = np.where(y < m, (m - y) / below, (y - m) / above)
    return np.where(truth == median, 0.0, scores)


def _scaled(lower, median, upper, mean, scale) -> tuple[np.ndarray, np.ndarray]:
    """Count bounds of the interval at ``scale``: the counts whose score is at most it."""
    m, below, above = _log_interval(lower, mean, upper)
    low, high = np.expm1(m - scale * below), np.expm1(m + scale * above)
    # a count whose score equals the scale is inside: the log1p / expm1 round trip (float32
    # draws) moves a bound by a few ulps of the count, more than an absolute 1e-6 when large
    low = np.clip(np.ceil(low - 1e-6 - 1e-6 * np.abs(low)), 0.0, None)
    high = np.floor(high + 1e-6 + 1e-6 * np.abs(high))
    return np.minimum(low, median), np.maximum(high, median)


def _pooled_scale(scores: np.ndarray, n_cells: int, level: float) -> float:
    """Smallest scale covering ``level * (n_cells + 1) / n_cells`` of the pooled scores.

    Conformal risk control with one unit per cell (the fraction of its pairs uncovered as its
    loss); above 1 (too few cells for the level), the largest score.
    """
    if scores.size == 0:
        return float("inf")
    target = level * (n_cells + 1) / n_cells
    flat = np.sort(scores, axis=None)
    if target > 1.0:
        return float(flat[-1])
    k = min(flat.size, max(1, math.ceil(target * flat.size - 1e-9)))
    return float(flat[k - 1])


def _fit_scales(scores, use, level, stratify, bins, n_bins) -> float | list[float]:
    """The calibrated scale(s) of one level from the scores of the pairs in ``use``.

    Pooled: :func:`_pooled_scale` over the cells with a pair in ``use``. Per feature: the
    ``ceil((n + 1) level)``-th smallest score of its ``n`` cells (split conformal over cells);
    a feature with too few cells for the level gets the pooled scale. Per bin of the
    predicted mean: the pooled scale of the bin's pairs (an empty bin: the pooled scale).
    """
    overall = _pooled_scale(scores[use], int(use.any(1).sum()), level)
    if stratify is None:
        return overall
    out = []
    if stratify == "feature":
        for j in range(scores.shape[1]):
            column = scores[use[:, j], j]
            k = math.ceil((column.size + 1) * level)
            out.append(float(np.partition(column, k - 1)[k - 1]) if k <= column.size else overall)
        return out
    for b in range(n_bins):
        inside = use & (bins == b)
        n_b = int(inside.any(1).sum())
        out.append(_pooled_scale(scores[inside], n_b, level) if n_b else overall)
    return out


def _binarised(head) -> bool:
    """Whether ``head`` models binarised counts (its ``binarised``): compare ``x > 0``."""
    return head.binarised


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _bin_of(mean: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), np.log1p(mean), side="right")
