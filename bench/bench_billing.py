"""The billing kernel over a month of a large fleet.

Figure: 100,000 meters x 2,976 intervals (a 31-day month at 15 minutes, float32 energy,
float64 accumulation) billed under a 4-band time-of-use tariff with monthly tiers
(tiered_time_of_use), against single-threaded `numpy.sum` over the same array in the same
run (goal: no slower than it). The note gives the largest relative error of the charges
against a float64 numpy reference computed independently (energy x price per interval,
plus the tier surcharges of each meter's monthly total); goal at most 1e-12.
With METERTWIN_BENCH_QUICK=1: 20,000 meters.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from bench.harness import Report
from twin.kernels.billing import bill_fleet
from twin.tariffs import parse_tariff, price_tables

TOU_TIERED = {"kind": "tiered_time_of_use", "thresholds_kwh": [180, 350], "surcharges_yuan": [0, 0.05, 0.3],
              "bands": [{"name": "sharp", "price_yuan": 1.1283, "hours": ["19:00-21:00"], "months": [7, 8, 12, 1]},
                        {"name": "peak", "price_yuan": 0.9403, "hours": ["08:00-11:30", "18:30-23:00"]},
                        {"name": "flat", "price_yuan": 0.6269, "hours": ["07:00-08:00", "11:30-18:30"]},
                        {"name": "valley", "price_yuan": 0.3134, "hours": ["23:00-07:00"]}]}


def best_of(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run(report: Report) -> None:
    n = 20_000 if os.environ.get("METERTWIN_BENCH_QUICK") == "1" else 100_000
    intervals = 31 * 96
    rng = np.random.default_rng(1)
    energy = rng.gamma(0.6, 0.15, (n, intervals)).astype(np.float32)
    start = int(datetime(2026, 7, 1, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp())
    tables = price_tables([parse_tariff("t", TOU_TIERED)], start, intervals, 900, "Asia/Shanghai")
    tariff = np.zeros(n, dtype=np.int64)
    used0 = np.zeros(n)
    bill_fleet(energy[:10], tariff[:10], used0[:10], tables)  # compile
    kernel_s = best_of(lambda: bill_fleet(energy, tariff, used0, tables))
    numpy_s = best_of(lambda: np.sum(energy, axis=1, dtype=np.float64))
    out = bill_fleet(energy, tariff, used0, tables)
    reference = np.empty(n)
    thresholds = np.concatenate(([0.0], tables.thresholds[0, 0][np.isfinite(tables.thresholds[0, 0])], [np.inf]))
    surcharges = tables.surcharges_fen[0, 0]
    for a in range(0, n, 5000):  # float64, in chunks: energy x price, then tiers of the month's total
        chunk = energy[a:a + 5000].astype(np.float64)
        total = chunk.sum(axis=1)
        tiers = sum(np.clip(total - thresholds[t], 0, thresholds[t + 1] - thresholds[t]) * surcharges[t]
                    for t in range(len(thresholds) - 1))
        reference[a:a + 5000] = chunk @ tables.price_fen[0] + tiers
    rel = float(np.max(np.abs(out["charge_fen"] - reference) / reference))
    note = f"{n:,} x {intervals:,}; max rel. error vs float64 reference {rel:.1e} (goal <= 1e-12); goal ratio <= 1"
    if n < 100_000:
        note += " QUICK: 20,000 meters"
    try:
        import pandas as pd  # noqa: F401 - printed for reference only
    except ImportError:
        note += "; pandas not installed, not measured"
    report.add("billing kernel, 4-band TOU + monthly tiers, one month", kernel_s, "s",
               "single-threaded numpy.sum, same array", numpy_s, note=note)
