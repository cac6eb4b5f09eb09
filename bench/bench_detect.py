"""All analytics and detectors over a month of a large fleet, against numpy.sum.

Figures: 100,000 meters x 2,880 intervals (30 days at 15 minutes, float32, ~1% missing),
1,000 buildings of a master meter and 99 sub-meters (bench_load's fleet): the theft score
(`twin.theft.theft_scores`), the anomaly scores (`twin.anomaly.anomaly_scores`, when that
module exists), the load analytics of bench_load together (day totals, time-of-use bands and
the typical day from one pass, `twin.kernels.load.day_band_profile`; periods, building
profiles, year on year and the energy balance from its results), and all of them in one go,
each against single-threaded `numpy.sum` over the same array in the same run. Issue 7's
goal: all analytics and detectors at most 20 times numpy.sum. With METERTWIN_BENCH_QUICK=1:
20,000 meters.

Freed memory is kept in the process (`twin.memory.keep_freed_memory`), as `metertwin`
runs: without it each run pays the kernel for fresh pages (about 1.1 s of system time per
run of everything on this fleet).

The machine is shared, so each step runs after a warm-up (compiles, or loads numba's cache)
`REPEATS` times with numpy.sum timed again right before it, and the best of each is kept;
the note gives the load average around the step. Beside each wall time is the process CPU
time (all threads) against numpy.sum's: the work done, which swings less with the load
(numba's threads split a kernel's rows statically, so a thread that loses its core holds up
the wall time; the CPU time does not wait for it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import numba
import numpy as np

from bench.bench_load import TOU, TZ, fleet, topology
from bench.harness import Report, quick
from control.evaluate import optional_anomaly_scores
from twin.detect import DetectView
from twin.kernels import load
from twin.memory import keep_freed_memory
from twin.tariffs import parse_tariff, price_tables
from twin.theft import theft_scores

REPEATS = 3


def load_average() -> str:
    """The 1-minute load average, for the note."""
    return f"{os.getloadavg()[0]:.1f}"


def run(report: Report) -> None:
    kept = keep_freed_memory()  # as every metertwin process runs (control.cli.main): see twin/memory.py
    meters, intervals = (20_000 if quick() else 100_000), 30 * 96
    matrix = fleet(meters, intervals)
    topo = topology(meters)
    site = load.site_index(topo)
    start = int(datetime(2026, 7, 1, tzinfo=ZoneInfo(TZ)).timestamp())
    cal = load.local_calendar(start, intervals, 900, TZ)
    band = price_tables([parse_tariff("tou", TOU)], start, intervals, 900, TZ).band[0]
    view = DetectView(matrix, topo, cal)
    np.sum(matrix)
    numpy_s = numpy_cpu = float("inf")
    anomaly_scores = optional_anomaly_scores()

    def analytics() -> None:  # day totals, bands and the typical day in one pass (load.day_band_profile)
        whole, _, typical = load.day_band_profile(matrix, cal, band)
        for kind in ("week", "month", "year"):
            summary = load.period_summary(whole, cal, kind)
            summary.load_factor, summary.peak_kw, summary.peak_utc  # noqa: B018 - computed when read
        load.building_profiles(typical, site)
        load.year_on_year(whole, cal, site)
        load.year_on_year(whole, cal, site, by_building=True)
        load.energy_balance(whole, site)

    def everything() -> None:
        analytics()
        if anomaly_scores is not None:
            anomaly_scores(view)
        theft_scores(view)

    steps: list[tuple[str, Callable[[], object]]] = [("theft score (balance + pattern features)",
                                                      lambda: theft_scores(view))]
    if anomaly_scores is not None:
        steps.append(("anomaly scores (every kind)", lambda: anomaly_scores(view)))
    steps += [("load analytics (bench_load, together)", analytics),
              ("all analytics and detectors", everything)]
    size = f"{meters:,} x {intervals:,} float32, {matrix.nbytes / 1e9:.2f} GB; {numba.get_num_threads()} threads"
    if not kept:
        size += "; freed memory not kept (no glibc mallopt)"
    if quick():
        size += "; QUICK size"
    if anomaly_scores is None:
        size += "; twin.anomaly absent"
    for name, work in steps:
        before = load_average()
        work()  # warm-up: compiles, or loads numba's cache
        seconds = cpu = float("inf")
        for _ in range(REPEATS):  # numpy.sum and the step alternate: both see the same swings of load
            base_wall, base_cpu = _timed(lambda: np.sum(matrix))
            numpy_s, numpy_cpu = min(numpy_s, base_wall), min(numpy_cpu, base_cpu)
            wall_1, cpu_1 = _timed(work)
            seconds, cpu = min(seconds, wall_1), min(cpu, cpu_1)
        swing = f"load average {before}-{load_average()}"
        report.add(f"detect: {name}", seconds, "s", "single-threaded numpy.sum, same array", numpy_s,
                   note=f"{size}; best of {REPEATS}; {swing}; issue goal for all together <= 20")
        report.add(f"detect: {name}, CPU time", cpu, "CPU s", "numpy.sum CPU time, same array", numpy_cpu,
                   note="all threads' CPU time: the work done, whatever else runs on the machine")


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w, c = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - w, time.process_time() - c
