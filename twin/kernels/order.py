"""Order statistics for the kernels: the k-th smallest of a small array in place
(quickselect; a short array is sorted instead), shared by the anomaly and theft kernels."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def sort_in_place(part: np.ndarray) -> None:
    """Sort a short array in place: insertion sort up to 64 values (no call, no
    allocation: the windows here are days), numpy's sort beyond."""
    n = part.shape[0]
    if n > 64:
        part.sort()
        return
    for i in range(1, n):
        x = part[i]
        j = i - 1
        while j >= 0 and part[j] > x:
            part[j + 1] = part[j]
            j -= 1
        part[j + 1] = x


@njit(cache=True, nogil=True, inline="always")
def _partition_below(part: np.ndarray, lo: int, hi: int, pivot: float, or_equal: bool) -> int:
    """Move the values of part[lo:hi + 1] below `pivot` (or at most it, with `or_equal`) to
    the front, branch-free (Lomuto's swap done every step, the boundary moved by the
    comparison: which side a value goes is a coin toss a branch mispredicts); the boundary."""
    i = lo
    for j in range(lo, hi + 1):
        v = part[j]
        part[j] = part[i]
        part[i] = v
        i += (v <= pivot) if or_equal else (v < pivot)
    return i


@njit(cache=True, nogil=True)
def select(part: np.ndarray, k: int) -> float:
    """The k-th smallest of `part` (0-based, no NaN), reordering it in place so that every
    value before index k is at most it and every value after it at least it (quickselect on
    a median-of-three pivot with branch-free partitions, 4-5 times faster than Hoare's on
    a hundred values; a short array, or what is left, is sorted instead)."""
    n = part.shape[0]
    lo, hi = 0, n - 1
    while hi - lo > 16:
        a = part[lo]
        b = part[(lo + hi) // 2]
        c = part[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        below = _partition_below(part, lo, hi, pivot, False)
        if k < below:
            hi = below - 1
            continue
        upto = _partition_below(part, below, hi, pivot, True)  # the pivot's copies: part[below:upto]
        if k < upto:
            return float(part[k])
        lo = upto
    sort_in_place(part[lo:hi + 1])
    return float(part[k])
