"""twin.kernels.order against numpy: the k-th smallest and the order it leaves behind."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.kernels.order import select, sort_in_place

values = st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.0, -0.0, 1.0, 2.0])),
                  min_size=1, max_size=300)


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_select_is_the_kth_of_the_sorted_values_and_splits_around_it(xs: list[float], data: st.DataObject) -> None:
    x = np.array(xs)
    k = data.draw(st.integers(0, x.size - 1))
    part = x.copy()
    got = select(part, k)
    assert got == np.sort(x)[k]
    assert part[k] == got
    assert (part[:k] <= got).all() and (part[k + 1:] >= got).all()
    assert np.array_equal(np.sort(part), np.sort(x))  # reordered, nothing lost or made up


def test_select_on_ties_runs_and_sorted_input() -> None:
    rng = np.random.default_rng(7)
    for x in (np.full(200, 3.0), np.arange(150.0), np.arange(150.0)[::-1], rng.integers(0, 3, 257).astype(float)):
        for k in (0, 1, x.size // 2, x.size - 1):
            part = x.copy()
            assert select(part, k) == np.sort(x)[k]
            assert (part[:k] <= part[k]).all() and (part[k + 1:] >= part[k]).all()


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=100))
def test_sort_in_place_sorts(xs: list[float]) -> None:
    x = np.array(xs, dtype=np.float64)
    sort_in_place(x)
    assert np.array_equal(x, np.sort(np.array(xs, dtype=np.float64)))
