"""`python -m bench [NAMES...] [--quick]`: run the benchmarks, print the table, write
bench/results.json.

Each module bench/bench_*.py has `run(report)`. A module that fails is reported on stderr
and the others still run; the exit status is then 1.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run MeterTwin's benchmarks and print figures against baselines "
        "measured in the same run; writes bench/results.json.",
        epilog="examples:\n  python -m bench            # everything (make bench)\n"
               "  python -m bench sim --quick # the simulator at a small size",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="run only modules whose name contains one of these")
    parser.add_argument("--quick", action="store_true", help="small sizes (sets METERTWIN_BENCH_QUICK=1)")
    parser.add_argument("--json", default=str(HERE / "results.json"), help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["METERTWIN_BENCH_QUICK"] = "1"
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if args.names:
        modules = [m for m in modules if any(n in m for n in args.names)]
    report = Report()
    for name in modules:
        started = time.perf_counter()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            importlib.import_module(f"bench.{name}").run(report)
        except Exception:  # report and go on: one broken benchmark must not hide the others
            traceback.print_exc()
            report.failed.append(name)
            print(f"bench: {name} FAILED after {time.perf_counter() - started:.1f}s", file=sys.stderr)
            continue
        print(f"bench: {name} done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    print(report.table())
    report.write_json(args.json)
    print(f"\nwritten: {args.json}" + (f"; failed: {', '.join(report.failed)}" if report.failed else ""))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
