"""Detector metrics against hand-computed cases and a brute-force pairwise AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twin.metrics import days_to_detect, precision_recall, rate_at_fpr, roc_auc, threshold_at_fpr


def test_auc_hand_computed_with_ties_and_nan() -> None:
    """Positives 0.9, 0.5, NaN against negatives 0.5, 0.1: 0.9 wins both pairs (2), 0.5 ties
    one and wins one (1.5), NaN ranks lowest and loses both (0): AUC 3.5 / 6."""
    scores = np.array([0.9, 0.5, np.nan, 0.5, 0.1])
    labels = np.array([True, True, True, False, False])
    assert roc_auc(scores, labels) == pytest.approx(3.5 / 6)
    assert math.isnan(roc_auc(scores, np.ones(5, dtype=bool)))


def test_auc_matches_brute_force_pairs() -> None:
    """On random scores with many ties the rank formula equals counting every pair."""
    rng = np.random.default_rng(7)
    s = rng.integers(0, 6, size=300).astype(float)
    s[rng.random(300) < 0.05] = np.nan
    y = rng.random(300) < 0.3
    ranked = np.where(np.isnan(s), -np.inf, s)
    pos, neg = ranked[y], ranked[~y]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert roc_auc(s, y) == pytest.approx(brute)


def test_rate_at_fpr_hand_computed() -> None:
    """20 negatives 1..20, at 5% one negative (20) may be flagged: the threshold is 19 and
    positives above it count; at 0% the threshold is the top negative."""
    neg = np.arange(1.0, 21.0)
    pos = np.array([25.0, 19.5, 19.0, 3.0])
    s = np.concatenate([pos, neg])
    y = np.array([True] * 4 + [False] * 20)
    assert threshold_at_fpr(s, y, 0.05) == 19.0
    assert rate_at_fpr(s, y, 0.05) == pytest.approx(0.5)
    assert rate_at_fpr(s, y, 0.0) == pytest.approx(0.25)
    assert rate_at_fpr(s, y, 1.0) == pytest.approx(1.0)


def test_precision_recall_and_days_to_detect() -> None:
    """Two of three flags are positives, two of four positives flagged; first flag two days
    after onset; none flagged gives NaN."""
    flagged = np.array([True, True, True, False, False, False])
    labels = np.array([True, True, False, True, True, False])
    assert precision_recall(flagged, labels) == pytest.approx((2 / 3, 2 / 4))
    assert days_to_detect(np.array([0, 0, 0, 0, 1, 1], dtype=bool), 2, 5) == 2.0
    assert math.isnan(days_to_detect(np.zeros(6, dtype=bool), 0, 5))
