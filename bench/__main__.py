"""`python -m bench [NAMES...] [--quick]`: run the benchmarks, print the table, write
bench/results.json.

Each module bench/bench_*.py has `run(report)`; they run in name order, with a progress
line per module on stderr. A module that fails has its traceback printed on stderr and is
marked failed; the others still run, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from bench.harness import Report

HERE = Path(__file__).resolve().parent

EPILOG = """\
Each figure is printed beside a baseline measured in the same run that does the same work
the plain way (numpy, a bare Numba loop, raw file I/O); ratio = value / baseline value.

examples:
  python -m bench                  # every benchmark (what `make bench` runs)
  python -m bench numpy billing    # only bench_numpy_baseline.py and bench_billing.py
  python -m bench sim --quick      # the simulator at a small size
  make bench BENCH_ARGS=--quick    # every benchmark at small sizes, through make
"""


def discover() -> list[str]:
    """The benchmark modules, bench/bench_*.py, by name."""
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run MeterTwin's benchmarks (bench/bench_*.py), print each figure "
        "against its baseline, and write bench/results.json.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="run only the modules whose name contains one of these (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for a smoke run (sets METERTWIN_BENCH_QUICK=1)")
    parser.add_argument("--json", default=str(HERE / "results.json"), metavar="PATH",
                        help="where to write the results (default: bench/results.json)")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["METERTWIN_BENCH_QUICK"] = "1"
    modules = discover()
    if args.names:
        modules = [m for m in modules if any(n in m for n in args.names)]
        if not modules:
            print(f"bench: no module matches {' '.join(args.names)}; there are: {', '.join(discover())}",
                  file=sys.stderr)
            return 2
    report = Report()
    for i, name in enumerate(modules, 1):
        started = time.perf_counter()
        print(f"bench [{i}/{len(modules)}]: {name} ...", file=sys.stderr, flush=True)
        try:
            importlib.import_module(f"bench.{name}").run(report)
        except (Exception, SystemExit):  # report and go on: one broken benchmark must not hide the others
            traceback.print_exc()
            report.failed.append(name)
            print(f"bench [{i}/{len(modules)}]: {name} FAILED after {time.perf_counter() - started:.1f}s",
                  file=sys.stderr, flush=True)
            continue
        print(f"bench [{i}/{len(modules)}]: {name} done in {time.perf_counter() - started:.1f}s",
              file=sys.stderr, flush=True)
    print()
    report.print_table()
    report.write_json(args.json)
    print(f"\nwritten: {args.json}", file=sys.stderr)
    if report.failed:
        print(f"bench: FAILED: {', '.join(report.failed)}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
