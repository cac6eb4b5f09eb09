"""Interval rows from polled counters, against a plain-Python walk of the same readings."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from control.intervals import IntervalBuilder


def test_deltas_missing_intervals_and_catch_up():
    """A meter silent for an interval gets NaN, and the interval it returns in carries
    everything it counted meanwhile; the first reading only sets the reference."""
    b = IntervalBuilder(["a", "b"], 900)
    b.reading("a", 100.0, 10)
    b.reading("b", 5.0, 10)
    assert np.isnan(b.close(900)[1]).all()
    b.reading("a", 101.5, 950)
    b.reading("b", 5.2, 960)
    start, row = b.close(1800)
    assert start == 900 and row.tolist() == [1.5, 5.2 - 5.0]
    b.reading("a", 103.0, 1900)  # b silent
    assert np.isnan(b.close(2700)[1][1])
    b.reading("a", 103.5, 2800)
    b.reading("b", 6.0, 2810)
    row = b.close(3600)[1]
    assert row[0] == 0.5 and math.isclose(row[1], 0.8)


def test_a_counter_going_back_is_refused_not_stored():
    b = IntervalBuilder(["a"], 60)
    b.reading("a", 10.0, 1)
    b.close(60)
    b.reading("a", 9.0, 61)
    assert np.isnan(b.close(120)[1][0]) and b.refused == 1
    b.reading("a", 9.5, 121)
    assert b.close(180)[1][0] == 0.5  # counts on from the new register value


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), min_size=2, max_size=60))
def test_the_sum_of_rows_is_the_counter_advance(steps):
    """Whatever intervals are missed, the rows add up to last good reading minus first."""
    b = IntervalBuilder(["m"], 900)
    counter, first, last, total = 0.0, None, None, 0.0
    for i, (seen, add) in enumerate(steps):
        counter += add
        if seen:
            b.reading("m", counter, i * 900 + 5)
            first = counter if first is None else first
            last = counter
        value = b.close((i + 1) * 900)[1][0]
        total += 0.0 if np.isnan(value) else value
    if first is not None:
        assert math.isclose(total, last - first, abs_tol=1e-9)
