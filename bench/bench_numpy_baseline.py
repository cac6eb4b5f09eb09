"""numpy.sum over an interval matrix against a plain memory copy of it.

The matrix is the fleet's interval data at its usual shape: 10,000 meters x 2,880
one-minute intervals (two days), float32, 115 MB. The figure is np.sum over the whole
matrix; the baseline is np.copyto of the same matrix into a preallocated one, the floor
of any pass that reads every value. Both are in GB/s of the matrix read (a copy also
writes as much again), best of several repeats.

With METERTWIN_BENCH_QUICK=1: 1,000 x 2,880.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bench.harness import Report, quick


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls, after one untimed warm-up call."""
    work()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def run(report: Report) -> None:
    meters, intervals = (1_000 if quick() else 10_000), 2_880
    rng = np.random.default_rng(0)
    matrix = rng.random((meters, intervals), dtype=np.float32)
    target = np.empty_like(matrix)
    gigabytes = matrix.nbytes / 1e9
    repeats = 20 if quick() else 10

    sum_s = best_seconds(lambda: np.sum(matrix), repeats)
    copy_s = best_seconds(lambda: np.copyto(target, matrix), repeats)

    note = f"{meters:,} x {intervals:,} float32, {matrix.nbytes / 1e6:,.0f} MB; best of {repeats}"
    if quick():
        note += "; QUICK size"
    report.add("np.sum, interval matrix", gigabytes / sum_s, "GB/s read", "np.copyto, same matrix",
               gigabytes / copy_s, note=note)
