"""Simulation speed: the fleet kernels against a bare loop, and `metertwin simulate` of
the 100,000-meter load test end to end.

Figures:
- sim kernel: meter-steps per second advancing loadtest-100k (100,000 electric and
  100,000 water meters, elevators, shared circuits) through one day at 1-minute steps,
  against a bare Numba loop over the same electric arrays (no randomness, no state): the
  ceiling. Goal: at least 200 million per second.
- simulate end to end: wall seconds of `metertwin simulate loadtest-100k --days 30`
  (history written to a temporary directory), against the seconds its kernels took in
  the same run. Goal: under 60 s. Peak memory of that process against a bare
  interpreter that imports numpy and numba. Goal: under 4 GiB.
With METERTWIN_BENCH_QUICK=1 the end-to-end run simulates 3 days instead of 30.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Report
from devices.sim import kernels
from devices.sim.world import World
from scenarios.loader import load_scenario

ROOT = Path(__file__).resolve().parent.parent
LOADTEST = ROOT / "scenarios" / "loadtest-100k.toml"


def kernel_figures(report: Report) -> None:
    world = World(load_scenario(str(LOADTEST)), seed=1, days=1)
    world._begin_day(0)
    spi = world.spi

    def one_day_world() -> float:
        t = time.perf_counter()
        for s in range(0, world.spd, spi):
            world._advance(s, s + spi)
        return time.perf_counter() - t

    def one_day_ceiling() -> float:
        t = time.perf_counter()
        for s in range(0, world.spd, spi):
            kernels.ceiling_loop(world.mean_kw_e, world.shape_e, world.cls_e, s, s + spi,
                                 world.dt_h, world.acc_e)
        return time.perf_counter() - t

    one_day_world(), one_day_ceiling()  # compile and warm
    sim = min(one_day_world() for _ in range(3))
    ceiling = min(one_day_ceiling() for _ in range(3))
    n_all = len(world.keys_e) + len(world.keys_w) + len(world.keys_l) + len(world.keys_s)
    rate = n_all * world.spd / sim
    ceiling_rate = len(world.keys_e) * world.spd / ceiling
    report.add("sim kernel, loadtest-100k, 1-min steps", rate / 1e6, "M meter-steps/s",
               "bare numba loop, same arrays", ceiling_rate / 1e6,
               note=f"{n_all:,} twins; goal >= 200")


def end_to_end(report: Report) -> None:
    quick = os.environ.get("METERTWIN_BENCH_QUICK") == "1"
    days = 3 if quick else 30
    with tempfile.TemporaryDirectory(prefix="mt-bench-") as tmp:
        out = Path(tmp) / "run"
        # VmHWM, not ru_maxrss: ru_maxrss survives fork+exec and would report the bench's own peak
        code = ("import re, sys; from control.cli import main; rc = main(sys.argv[1:]); "
                "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
                "print('MAXRSS', hwm, file=sys.stderr); sys.exit(rc)")
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code, "simulate", str(LOADTEST), "--days", str(days),
             "--seed", "1", "--out", str(out), "--quiet"],
            capture_output=True, text=True, check=False, cwd=ROOT)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"simulate failed: {proc.stderr[-2000:]}")
        kernel = float(re.search(r"([0-9.]+)s in kernels", proc.stdout).group(1))
        maxrss_kib = int(re.search(r"MAXRSS (\d+)", proc.stderr).group(1))
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    bare = subprocess.run(
        [sys.executable, "-c", "import re, numpy, numba; "
         "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"],
        capture_output=True, text=True, check=True)
    bare_kib = int(bare.stdout.strip())
    note = "" if not quick else "QUICK: 3 days, not 30"
    kernel_s = kernel
    report.add(f"simulate loadtest-100k --days {days}, wall", wall, "s",
               "its kernels' seconds, same run", kernel_s,
               note=f"goal < 60 s for 30 days; {size / 2**30:.2f} GiB written {note}".strip())
    report.add(f"simulate loadtest-100k --days {days}, peak memory", maxrss_kib / 2**20, "GiB",
               "bare python + numpy + numba", bare_kib / 2**20, note="goal < 4 GiB")


def run(report: Report) -> None:
    kernel_figures(report)
    end_to_end(report)
