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


@njit(cache=True, nogil=True)
def select(part: np.ndarray, k: int) -> float:
    """The k-th smallest of `part` (0-based), reordering it in place so that every value
    after index k is at least it (quickselect; a short array is sorted instead)."""
    n = part.shape[0]
    if n <= 16:
        sort_in_place(part)
        return float(part[k])
    lo, hi = 0, n - 1
    while hi > lo:
        pivot = part[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while part[i] < pivot:
                i += 1
            while part[j] > pivot:
                j -= 1
            if i <= j:
                part[i], part[j] = part[j], part[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return float(part[k])
