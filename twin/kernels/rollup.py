"""The history's resampling kernel: sums of runs of k intervals, per column, skipping
missing readings, with the count of what was missing (docs/history-format.md, roll-ups).

One pass over a block of [intervals, columns] float32 rows, in the order they lie on disk,
parallel over result rows, float64 accumulation rounded to float32 once. The rule: a sum
is NaN only when every cell in it is NaN; the missing count is the number of NaN cells (of
raw readings), or the sum of the counts passed in (of roll-ups being summed further).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_BLOCK = 1024  # columns a thread sums at a time: its accumulators stay in L1/L2


@njit(cache=True, nogil=True, parallel=True)
def sum_intervals(cells: np.ndarray, k: int, missing: np.ndarray, has_missing: bool,
                  sums: np.ndarray, counts: np.ndarray) -> None:
    """Fill `sums` ([n, c] float32) and `counts` ([n, c] uint16) from `cells` ([n * k, c]
    float32): row i sums rows i * k .. i * k + k - 1. `missing` ([n * k, c] uint16) holds the
    counts of cells that are themselves sums when `has_missing`; otherwise a NaN counts 1.
    Parallel over blocks of columns; each row of a block is a contiguous run in memory."""
    n, c = sums.shape
    for b in prange((c + _BLOCK - 1) // _BLOCK):
        c0 = b * _BLOCK
        w = min(c, c0 + _BLOCK) - c0
        acc = np.empty(w, dtype=np.float64)
        seen = np.empty(w, dtype=np.bool_)
        lost = np.empty(w, dtype=np.int64)
        for i in range(n):
            acc[:] = 0.0
            seen[:] = False
            lost[:] = 0
            for j in range(i * k, i * k + k):
                for q in range(w):
                    v = cells[j, c0 + q]
                    if np.isnan(v):
                        if not has_missing:
                            lost[q] += 1
                    else:
                        acc[q] += v
                        seen[q] = True
                    if has_missing:
                        lost[q] += missing[j, c0 + q]
            for q in range(w):
                sums[i, c0 + q] = acc[q] if seen[q] else np.nan
                counts[i, c0 + q] = lost[q]
