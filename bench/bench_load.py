"""The load analytics kernels over a month of a large fleet.

Figures: 100,000 meters x 2,880 intervals (30 days at 15 minutes, float32, ~1% missing),
Asia/Shanghai, 1,000 buildings of a master meter and 99 sub-meters; each step of
twin/kernels/load.py and all of them together, against single-threaded `numpy.sum` over
the same array in the same run (goal: each step at most 2-3 times it; the issue's goal for
all analytics and detectors together is 20 times it). The steps:

- day summary: totals, missing counts, peaks and peak times per meter and local day (one pass);
- periods: roll-ups to ISO weeks, months and years with load factor and peak demand;
- band split: energy per meter, day and band of a 4-band time-of-use tariff (one pass);
- profile: typical day per meter, weekdays and weekends (one pass), and per building;
- year on year: months against last year per meter and per building (from the day summary);
- energy balance: each master against what it feeds, by day (from the day summary);
- the day summary, the band split and the typical day per meter in one pass
  (`day_band_profile`), and all the analytics with it instead of the three passes.

Numba kernels run on all cores numba sees (the note says how many). With
METERTWIN_BENCH_QUICK=1: 20,000 meters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import numba
import numpy as np

from bench.harness import Report, quick
from twin.history import Column, Topology
from twin.kernels import load
from twin.tariffs import parse_tariff, price_tables

TZ = "Asia/Shanghai"
TOU = {"kind": "time_of_use",
       "bands": [{"name": "sharp", "price_yuan": 1.1283, "hours": ["19:00-21:00"], "months": [7, 8, 12, 1]},
                 {"name": "peak", "price_yuan": 0.9403, "hours": ["08:00-11:30", "18:30-23:00"]},
                 {"name": "flat", "price_yuan": 0.6269, "hours": ["07:00-08:00", "11:30-18:30"]},
                 {"name": "valley", "price_yuan": 0.3134, "hours": ["23:00-07:00"]}]}


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls, after one untimed warm-up call (compiles)."""
    work()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def fleet(meters: int, intervals: int) -> np.ndarray:
    """Household-like readings, ~1% missing, built in chunks (no float64 copy of it all)."""
    rng = np.random.default_rng(7)
    matrix = np.empty((meters, intervals), dtype=np.float32)
    for a in range(0, meters, 5000):
        chunk = matrix[a:a + 5000]
        chunk[:] = rng.gamma(0.6, 0.15, chunk.shape)
        chunk[rng.random(chunk.shape, dtype=np.float32) < 0.01] = np.nan
    return matrix


def topology(meters: int) -> Topology:
    """Buildings of 100 columns: a master meter and the 99 sub-meters it feeds."""
    columns = []
    for i in range(meters):
        building = f"B{i // 100:04d}"
        if i % 100 == 0:
            columns.append(Column(f"{building}.mm", "electric_meter", "electric", "kWh", building, role="master"))
        else:
            columns.append(Column(f"{building}-{i % 100:02d}.em", "electric_meter", "electric", "kWh", building,
                                  master=f"{building}.mm"))
    return Topology("BENCH", TZ, 900, columns)


def run(report: Report) -> None:
    meters, intervals = (20_000 if quick() else 100_000), 30 * 96
    matrix = fleet(meters, intervals)
    site = load.site_index(topology(meters))  # once per topology, as callers do
    start = int(datetime(2026, 7, 1, tzinfo=ZoneInfo(TZ)).timestamp())
    cal = load.local_calendar(start, intervals, 900, TZ)
    band = price_tables([parse_tariff("tou", TOU)], start, intervals, 900, TZ).band[0]
    repeats = 3
    numpy_s = best_seconds(lambda: np.sum(matrix), repeats)
    days = load.day_summary(matrix, cal)

    def periods() -> None:
        for kind in ("week", "month", "year"):
            summary = load.period_summary(days, cal, kind)
            summary.load_factor, summary.peak_kw, summary.peak_utc  # noqa: B018 - computed when read

    def profile() -> None:
        load.building_profiles(load.typical_profile(matrix, cal), site)

    def year_on_year() -> None:
        load.year_on_year(days, cal, site)
        load.year_on_year(days, cal, site, by_building=True)

    def everything() -> None:
        whole = load.day_summary(matrix, cal)
        for kind in ("week", "month", "year"):
            summary = load.period_summary(whole, cal, kind)
            summary.load_factor, summary.peak_kw, summary.peak_utc  # noqa: B018
        load.band_totals(matrix, cal, band)
        load.building_profiles(load.typical_profile(matrix, cal), site)
        load.year_on_year(whole, cal, site)
        load.year_on_year(whole, cal, site, by_building=True)
        load.energy_balance(whole, site)

    def everything_one_pass() -> None:
        whole, _, typical = load.day_band_profile(matrix, cal, band)
        for kind in ("week", "month", "year"):
            summary = load.period_summary(whole, cal, kind)
            summary.load_factor, summary.peak_kw, summary.peak_utc  # noqa: B018
        load.building_profiles(typical, site)
        load.year_on_year(whole, cal, site)
        load.year_on_year(whole, cal, site, by_building=True)
        load.energy_balance(whole, site)

    steps: list[tuple[str, Callable[[], object], str]] = [
        ("day summary (totals, missing, peaks)", lambda: load.day_summary(matrix, cal), "one pass; goal <= 2-3"),
        ("week/month/year roll-ups + load factor", periods, "from the day summary"),
        ("band split, 4-band TOU, by day", lambda: load.band_totals(matrix, cal, band), "one pass; goal <= 2-3"),
        ("typical day per meter + per building", profile, "one pass; goal <= 2-3"),
        ("month vs last year, meters + buildings", year_on_year, "from the day summary"),
        ("energy balance by day, 1,000 masters", lambda: load.energy_balance(days, site), "from the day summary"),
        ("day summary + band split + profile", lambda: load.day_band_profile(matrix, cal, band),
         "one pass for the three"),
        ("all load analytics together", everything, "three passes; issue goal for all analytics "
                                                    "and detectors <= 20"),
        ("all load analytics, one pass", everything_one_pass, "day_band_profile for the three passes"),
    ]
    size = f"{meters:,} x {intervals:,} float32, {matrix.nbytes / 1e9:.2f} GB; {numba.get_num_threads()} threads"
    if quick():
        size += "; QUICK size"
    for name, work, goal in steps:
        seconds = best_seconds(work, repeats)
        report.add(f"load: {name}", seconds, "s", "single-threaded numpy.sum, same array", numpy_s,
                   note=f"{size}; {goal}")
