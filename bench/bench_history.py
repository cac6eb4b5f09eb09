"""The embedded history store (twin/history.py) at the scale of a 100,000-meter fleet.

Figures, each against plain numpy doing the same I/O on the same arrays in the same run:

- appends: a simulated day of 100,000 meters read every minute, one `HistoryWriter.append`
  per minute (1,440 rows of 100,000 float32, 576 MB), against `numpy.save` of the same
  1,440 row arrays one after another into one open file (goal: at least 0.5x);
- fleet month read: a 30-day month of 100,000 meters at 15 minutes (2,880 x 100,000
  float32, 1.15 GB) read whole as `read_rows` ([interval, meter]) and as `read(...,
  contiguous=False)` ([meter, interval] view, no copy), against `numpy.load` of the same
  array (goal: at least 0.8x); and the C-ordered [meter, interval] `read`, against
  `numpy.load` plus `numpy.ascontiguousarray` of its transpose;
- one twin's last 24 hours from the minute store (1,440 values strided across 576 MB),
  median latency of `read(..., columns=[twin])`, against a `numpy.load(mmap_mode="r")`
  column slice of the same day.
- roll-up of that month to 15 min, hour and day (what a month leaving the raw window costs).

Files live in a temporary directory (about 2.4 GB at full size, deleted as it goes; the
free space is checked first). Both sides read from the page cache, as a live dashboard
does. With METERTWIN_BENCH_QUICK=1: 10,000 meters.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.harness import Report, quick
from twin.history import Column, HistoryWriter, Topology, open_history

DAY = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp())
MONTH = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())  # November: 30 days
MONTH_END = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())


def topology(meters: int, interval_s: int) -> Topology:
    """A fleet of `meters` electric meters, 100 to a building."""
    return Topology("BENCH", "Asia/Shanghai", interval_s, [
        Column(f"B{i // 100:04d}-{i % 100:02d}.em", "electric_meter", "electric", "kWh", f"B{i // 100:04d}")
        for i in range(meters)])


def best(work, repeats: int) -> float:  # noqa: ANN001 - a zero-argument callable
    """The fastest of `repeats` timed calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_appends(report: Report, root: Path, meters: int, rng: np.random.Generator) -> None:
    """A day of minute rows appended one by one, against numpy.save of each row."""
    day = rng.random((1440, meters), dtype=np.float32)
    day[rng.random(day.shape, dtype=np.float32) < 0.01] = np.nan
    topo = topology(meters, 60)
    ours, theirs, opens = [], [], []
    for attempt in range(2):  # alternate, so page-cache writeback weighs on both alike
        target = root / f"minute-{attempt}"
        started = time.perf_counter()
        with HistoryWriter(target, topo) as writer:  # once per run of a live writer: timed apart
            opened = time.perf_counter()
            for r in range(1440):
                writer.append(DAY + r * 60, day[r:r + 1])
            ours.append(time.perf_counter() - opened)
        opens.append(opened - started)
        plain = root / f"plain-{attempt}.npy"
        started = time.perf_counter()
        with plain.open("wb") as f:
            for r in range(1440):
                np.save(f, day[r])
        theirs.append(time.perf_counter() - started)
        plain.unlink()
        if attempt == 0:
            shutil.rmtree(target)
    rows_s, plain_rows_s = 1440 / min(ours), 1440 / min(theirs)
    report.add(f"history: append a day of minute rows, {meters:,} meters", rows_s, "rows/s",
               "numpy.save of each row into one file", plain_rows_s,
               note=f"goal >= 0.5x; {rows_s * meters * 4 / 1e6:,.0f} MB/s; one append per minute row; "
                    f"the writer open (topology.json of {meters:,} columns) apart: {min(opens):.2f} s")
    history = open_history(root / "minute-1")
    plain = root / "day.npy"
    np.save(plain, day)
    mapped = np.load(plain, mmap_mode="r")
    columns = rng.integers(0, meters, 60)
    end = DAY + 86400

    def one_twin() -> list[float]:
        ours_ms = []
        for c in columns:
            started = time.perf_counter()
            history.read(end - 86400, end, columns=[int(c)])
            ours_ms.append((time.perf_counter() - started) * 1e3)
        return ours_ms

    def plain_twin() -> list[float]:
        plain_ms = []
        for c in columns:
            started = time.perf_counter()
            np.array(mapped[:, int(c)])
            plain_ms.append((time.perf_counter() - started) * 1e3)
        return plain_ms

    one_twin(), plain_twin()  # warm: the first touch maps the pages
    ours_median, plain_median = statistics.median(one_twin()), statistics.median(plain_twin())
    check = history.read(end - 86400, end, columns=[int(columns[0])])[0]
    np.testing.assert_array_equal(check, day[:, int(columns[0])])
    report.add(f"history: one twin's last 24 h (1,440 minutes of {meters:,})", ours_median, "ms",
               "numpy.load(mmap_mode='r') column copy", plain_median,
               note="median of 60 twins; lower is better")
    plain.unlink()
    shutil.rmtree(root / "minute-1")


def bench_month(report: Report, root: Path, meters: int, rng: np.random.Generator) -> None:
    """A month at 15 minutes read whole, against numpy.load; then its roll-up."""
    rows = (MONTH_END - MONTH) // 900
    day = rng.random((96, meters), dtype=np.float32)
    month = np.empty((rows, meters), dtype=np.float32)
    for d in range(rows // 96):
        month[d * 96:(d + 1) * 96] = day
        month[d * 96, d % meters] = np.nan
    target = root / "quarter"
    with HistoryWriter(target, topology(meters, 900)) as writer:
        writer.append(MONTH, month)
    plain = root / "month.npy"
    np.save(plain, month)
    history = open_history(target)
    got = history.read_rows(MONTH, MONTH_END)
    np.testing.assert_array_equal(got, month)
    del got
    size = f"{rows:,} x {meters:,}"
    timed: dict[str, list[float]] = {"load": [], "rows": [], "view": []}
    for _ in range(5):  # interleaved, best of each: the machine is shared and noisy
        for name, work in (("load", lambda: np.load(plain)), ("rows", lambda: history.read_rows(MONTH, MONTH_END)),
                           ("view", lambda: history.read(MONTH, MONTH_END, contiguous=False))):
            timed[name].append(best(work, 1))
    load_s, rows_s, view_s = (min(timed[name]) for name in ("load", "rows", "view"))
    gb = month.nbytes / 1e9
    report.add(f"history: fleet month read_rows [interval, meter] {size}", gb / rows_s, "GB/s",
               "numpy.load of the same array", gb / load_s, note="goal >= 0.8x")
    report.add(f"history: fleet month read(contiguous=False) [meter, interval] view {size}", gb / view_s, "GB/s",
               "numpy.load of the same array", gb / load_s, note="goal >= 0.8x; transposed view, no copy")
    c_load_s = best(lambda: np.ascontiguousarray(np.load(plain).T), 1)
    c_s = best(lambda: history.read(MONTH, MONTH_END), 1)
    report.add(f"history: fleet month read() C-ordered [meter, interval] {size}", gb / c_s, "GB/s",
               "numpy.load + ascontiguousarray(.T)", gb / c_load_s, note="the transpose copy dominates both")

    def plain_rollup() -> None:
        loaded = np.load(plain)
        for k in (1, 4, 96):
            cells = loaded.reshape(-1, k, meters)
            np.nansum(cells, axis=1, dtype=np.float64).astype(np.float32)
            np.isnan(cells).sum(axis=1, dtype=np.uint16)

    plain_rollup_s = best(plain_rollup, 1)
    plain.unlink()
    del month
    with HistoryWriter(target, topology(meters, 900), raw_days=None) as writer:
        started = time.perf_counter()
        writer.raw_days = 1
        writer.roll_up(MONTH_END + 2 * 86400)
        rollup_s = time.perf_counter() - started
    assert open_history(target).rolled_up_months() == ["2026-11"]
    report.add(f"history: roll up a month to 15 min, hour, day {size}", gb / rollup_s, "GB/s",
               "numpy.load, nansum and NaN count per level", gb / plain_rollup_s,
               note=f"{rollup_s:.1f} s; runs once per month leaving the raw window")
    shutil.rmtree(target)


def run(report: Report) -> None:
    """Appends, reads and roll-ups at fleet scale, in a temporary directory."""
    meters = 10_000 if quick() else 100_000
    need = meters * 4 * (1440 * 2 + 2880 * 2 + 1440) * 1.1
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        free = shutil.disk_usage(tmp).free
        if free < need:
            raise RuntimeError(f"bench_history needs {need / 1e9:.1f} GB free in {tmp}; {free / 1e9:.1f} GB is")
        rng = np.random.default_rng(8)
        bench_appends(report, Path(tmp), meters, rng)
        bench_month(report, Path(tmp), meters, rng)
