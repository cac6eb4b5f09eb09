"""Detector metrics over meter-days: ROC AUC, detection rate at a false-positive rate,
precision and recall at a threshold, and time to detect.

Scores are "higher is more suspicious". A NaN score means the detector said nothing about
that meter-day: it ranks below every real score (so a positive the detector cannot see
counts against it) and is never flagged. Labels are booleans (True: the meter-day is inside
a ground-truth window of the kind scored).

Example::

    auc = roc_auc(np.array([0.9, 0.2, 0.7]), np.array([True, False, False]))   # 1.0
    rate = rate_at_fpr(scores, labels, 0.05)   # share of positives above the 95th-percentile negative
"""

from __future__ import annotations

import math

import numpy as np


def _ranked(scores: np.ndarray) -> np.ndarray:
    """float64 scores with NaN replaced by -inf (below every real score)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    return np.where(np.isnan(s), -np.inf, s)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U over average ranks). NaN when either
    class is empty."""
    s = _ranked(scores)
    y = np.asarray(labels, dtype=np.bool_).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores against {y.size} labels")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average rank (1-based) over each run of ties
    edges = np.flatnonzero(sorted_s[1:] != sorted_s[:-1]) + 1  # not diff: -inf - -inf is NaN
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [s.size]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float = 0.05) -> float:
    """The lowest threshold t such that flagging `score > t` flags at most `fpr` of the
    negatives: the (k+1)-th highest negative score with k = floor(fpr * negatives)."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr {fpr} must be in [0, 1]")
    s = _ranked(scores)
    y = np.asarray(labels, dtype=np.bool_).ravel()
    neg = np.sort(s[~y])[::-1]
    k = int(math.floor(fpr * neg.size + 1e-9))
    if k >= neg.size:
        return -math.inf
    return float(neg[k])


def rate_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float = 0.05) -> float:
    """Detection rate (share of positives flagged) at the threshold that flags at most
    `fpr` of the negatives (`threshold_at_fpr`); NaN without positives or negatives."""
    s = _ranked(scores)
    y = np.asarray(labels, dtype=np.bool_).ravel()
    if not y.any() or y.all():
        return math.nan
    t = threshold_at_fpr(s, y, fpr)
    return float(np.mean(s[y] > t))


def precision_recall(flagged: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of boolean flags: precision NaN when nothing is flagged, recall
    NaN without positives."""
    f = np.asarray(flagged, dtype=np.bool_).ravel()
    y = np.asarray(labels, dtype=np.bool_).ravel()
    tp = int(np.sum(f & y))
    precision = tp / int(f.sum()) if f.any() else math.nan
    recall = tp / int(y.sum()) if y.any() else math.nan
    return precision, recall


def days_to_detect(flagged_days: np.ndarray, onset_day: int, last_day: int) -> float:
    """Days from `onset_day` to the first flagged day in [onset_day, last_day] (0: flagged on
    the day it began); NaN when none of those days is flagged."""
    f = np.asarray(flagged_days, dtype=np.bool_)
    hits = np.flatnonzero(f[onset_day:last_day + 1])
    return float(hits[0]) if hits.size else math.nan


def median_or_nan(values: list[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.median(finite)) if finite else math.nan


__all__ = ["days_to_detect", "median_or_nan", "precision_recall", "rate_at_fpr", "roc_auc", "threshold_at_fpr"]
