"""The anomaly detectors over a month of a large fleet.

Figures: 100,000 columns x 2,880 intervals (30 days at 15 minutes, float32, water meters
and circuits at zero 60% of the time, gaps on ~1% of meter-days),
Asia/Shanghai, 1,000 buildings of 100 columns (a master meter, 45 flats with an electric
and a water meter each, 4 shops, 2 elevators, 3 shared circuits), 2,000 valve and relay
events; `twin.anomaly.anomaly_scores` (every kind) and its one full pass
(`day_features`) against single-threaded `numpy.sum` over the same array in the same run.
The issue's goal for all analytics and detectors together is 20 times numpy.sum; the load
analytics (bench_load.py) and theft detection take their share of it.

With METERTWIN_BENCH_QUICK=1: 20,000 columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import numba
import numpy as np

from bench.bench_load import best_seconds
from bench.harness import Report, quick
from twin.anomaly import anomaly_scores
from twin.detect import DetectView, Event
from twin.history import Column, Topology
from twin.kernels import anomaly as k
from twin.kernels.load import local_calendar

TZ = "Asia/Shanghai"


def topology(n_columns: int) -> Topology:
    """Buildings of 100 columns, as the module docstring says."""
    columns = []
    for i in range(n_columns):
        b, j = f"B{i // 100:04d}", i % 100
        if j == 0:
            columns.append(Column(f"{b}.mm", "electric_meter", "electric", "kWh", b, role="master"))
        elif j <= 45:
            columns.append(Column(f"{b}-{j:02d}.em", "electric_meter", "electric", "kWh", b, room=f"{b}-{j:02d}",
                                  master=f"{b}.mm"))
        elif j <= 90:
            columns.append(Column(f"{b}-{j - 45:02d}.wm", "water_meter", "water", "m3", b, room=f"{b}-{j - 45:02d}"))
        elif j <= 94:
            columns.append(Column(f"{b}-S{j}.em", "electric_meter", "electric", "kWh", b, master=f"{b}.mm"))
        elif j <= 96:
            columns.append(Column(f"{b}.el{j}", "elevator", "electric", "kWh", b, master=f"{b}.mm"))
        else:
            columns.append(Column(f"{b}.sc{j}", "shared_circuit", "electric", "kWh", b, master=f"{b}.mm"))
    return Topology("BENCH", TZ, 900, columns)


def fleet(topo: Topology, intervals: int) -> np.ndarray:
    """Readings, built in chunks: water meters and shared circuits read 0 in 60% of
    intervals (no draw, switched off), electric meters and elevators never do; ~1% of
    days of any meter have a gap of a few readings."""
    rng = np.random.default_rng(7)
    n_columns = len(topo.columns)
    idle = np.array([c.kind in ("water_meter", "shared_circuit") for c in topo.columns])
    matrix = np.empty((n_columns, intervals), dtype=np.float32)
    for a in range(0, n_columns, 5000):
        chunk = matrix[a:a + 5000]
        chunk[:] = rng.gamma(0.6, 0.15, chunk.shape)
        rows = np.flatnonzero(idle[a:a + 5000])
        chunk[rows] *= rng.random((rows.size, intervals), dtype=np.float32) >= 0.6
        for r, i in zip(rng.integers(0, chunk.shape[0], chunk.shape[0] * 30 // 100),
                        rng.integers(0, intervals - 8, chunk.shape[0] * 30 // 100), strict=True):
            chunk[r, i:i + int(rng.integers(1, 8))] = np.nan
    return matrix


def run(report: Report) -> None:
    n_columns, intervals = (20_000 if quick() else 100_000), 30 * 96
    topo = topology(n_columns)
    matrix = fleet(topo, intervals)
    start = int(datetime(2026, 7, 1, tzinfo=ZoneInfo(TZ)).timestamp())
    cal = local_calendar(start, intervals, 900, TZ)
    rng = np.random.default_rng(8)
    events = []
    for _ in range(1000):  # valve closes and opens, relay trips and closes
        c = int(rng.integers(0, n_columns))
        t = start + int(rng.integers(0, intervals - 200)) * 900
        kind, off, on = ("valve", "closed", "open") if topo.columns[c].kind == "water_meter" else ("relay", "open",
                                                                                                      "closed")
        events += [Event(t, topo.columns[c].id, kind, off, c), Event(t + 86400, topo.columns[c].id, kind, on, c)]
    events.sort(key=lambda e: e.t_utc)
    view = DetectView(matrix, topo, cal, events)
    repeats = 3
    numpy_s = best_seconds(lambda: np.sum(matrix), repeats)
    n_days = len(cal.days)
    shape = (n_columns, n_days)
    outs: list[np.ndarray] = [np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32),
            np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float64),
            np.zeros(shape, np.float32), np.zeros(shape, np.int32)]
    ptr = np.zeros(n_columns + 1, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    night_slot = np.zeros(cal.n_slots, dtype=np.bool_)
    night_slot[4:20] = True
    night = night_slot[cal.slot]
    night_idx = np.flatnonzero(night).astype(np.int64)
    night_ptr = np.searchsorted(night_idx, cal.day_bounds).astype(np.int64)
    water = np.array([c.kind == "water_meter" for c in topo.columns])

    def one_pass() -> None:
        k.day_features(matrix, cal.day_bounds, night, night_ptr, night_idx, water, ptr, empty, empty, *outs)

    size = f"{n_columns:,} x {intervals:,} float32, {matrix.nbytes / 1e9:.2f} GB; {numba.get_num_threads()} threads"
    if quick():
        size += "; QUICK size"
    numpy_cpu = best_cpu_seconds(lambda: np.sum(matrix), repeats)
    for name, work, goal in (("day features (the one full pass)", one_pass, "goal <= 2-3"),
                             ("all anomaly kinds (anomaly_scores)", lambda: anomaly_scores(view),
                              "issue goal for all analytics and detectors <= 20")):
        seconds = best_seconds(work, repeats)
        report.add(f"anomaly: {name}", seconds, "s", "single-threaded numpy.sum, same array", numpy_s,
                   note=f"{size}; {goal}")
        report.add(f"anomaly: {name}, CPU time", best_cpu_seconds(work, repeats), "CPU s",
                   "numpy.sum CPU time, same array", numpy_cpu,
                   note="all threads' CPU time: the work done, whatever else runs on the machine")


def best_cpu_seconds(work: Callable[[], object], repeats: int) -> float:
    """The least process CPU time (all threads) of `repeats` calls, after a warm-up call."""
    work()
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best
