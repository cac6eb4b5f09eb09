"""twin.kernels.simd.transpose4 against numpy's transpose, at any offsets and steps."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from twin.kernels.simd import transpose4


@njit(cache=True)
def _tiles(src: np.ndarray, rows: int, cols: int, dst: np.ndarray) -> None:
    """dst [cols, rows] = src [rows, cols].T, both flat, in 4 x 4 tiles (rows, cols multiples of 4)."""
    for r0 in range(0, rows, 4):
        for c0 in range(0, cols, 4):
            transpose4(src, r0 * cols + c0, cols, dst, c0 * rows + r0, rows)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_transpose4_tiles_make_numpys_transpose(row_tiles: int, col_tiles: int, seed: int) -> None:
    rows, cols = 4 * row_tiles, 4 * col_tiles
    src = np.random.default_rng(seed).normal(size=rows * cols)
    src[::7] = np.nan  # NaN moves like any value
    dst = np.full(rows * cols, 123.0)
    _tiles(src, rows, cols, dst)
    assert np.array_equal(dst.reshape(cols, rows), src.reshape(rows, cols).T, equal_nan=True)


@njit(cache=True)
def _one(src: np.ndarray, s0: int, s_step: int, dst: np.ndarray, d0: int, d_step: int) -> None:
    transpose4(src, s0, s_step, dst, d0, d_step)


def test_transpose4_touches_its_tile_only() -> None:
    src = np.arange(200.0)
    dst = np.full(200, -1.0)
    _one(src, 13, 17, dst, 40, 9)
    for r in range(4):
        for c in range(4):
            assert dst[40 + c * 9 + r] == src[13 + r * 17 + c]
    assert (dst >= 0).sum() == 16
