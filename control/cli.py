"""The `metertwin` console script: one entry point, one subcommand per job.

This is the composition root: the only module that wires twin, devices, scenarios and
control together for a user. Results go to stdout, progress and logs to stderr. Errors a
user can fix print one line naming what was wrong and where, and exit with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime

EXAMPLES = {
    "simulate": """\
examples:
  metertwin simulate scenarios/demo-community.toml --days 7
  metertwin simulate scenarios/loadtest-100k.toml --days 30 --seed 3 --out /tmp/lt
  metertwin simulate scenarios/mall.toml --days 2 --step 5min --start 2026-07-01

Writes DIR/topology.json, DIR/intervals/YYYY-MM.f32 (the history, see
docs/history-format.md), DIR/ground_truth.csv (every fault and theft injected),
DIR/events.csv and DIR/summary.json, then prints the summary: twins, speed, energy
and water per building, master-meter balance, and the load-shape figures.""",
}

_DURATION = re.compile(r"^\s*(\d+)\s*(s|sec|min|m|h)?\s*$")


def parse_step(text: str) -> int:
    """'1min', '60s', '5min', '1h' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a step: use for example 1min, 30s, 5min")
    value, unit = int(match.group(1)), match.group(2) or "s"
    seconds = value * {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[unit]
    if seconds <= 0 or 86400 % seconds:
        raise argparse.ArgumentTypeError(f"step {text!r} must be positive and divide a day")
    return seconds


def parse_start(text: str) -> datetime:
    """'2026-01-01' or '2026-01-01T06:00' (site-local time)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: use 2026-01-01 or 2026-01-01T06:00 (site-local)") from None


def parse_days(text: str) -> float:
    """A positive number of days (fractions allowed)."""
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days > 0:
        raise argparse.ArgumentTypeError(f"--days takes a positive number, not {text!r}")
    return days


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="metertwin",
        description="MeterTwin: digital twins, simulation and control for prepaid "
                    "electricity and water. Each command has its own --help with examples.",
        epilog="example: metertwin simulate scenarios/demo-community.toml --days 7",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    sim = commands.add_parser(
        "simulate", help="run a scenario headless, faster than real time, and write its history",
        description="Run a scenario's simulated world headless and faster than real time; "
                    "write its interval history and ground truth to a directory and print a summary.",
        epilog=EXAMPLES["simulate"], formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("scenario", metavar="SCENARIO", help="scenario TOML file")
    sim.add_argument("--days", type=parse_days, default=None,
                     help="days to simulate (default: the scenario's `days`, else 1)")
    sim.add_argument("--seed", type=int, default=0, help="random seed; same seed, same world (default 0)")
    sim.add_argument("--step", type=parse_step, default=60, metavar="STEP",
                     help="simulation step, dividing the interval: 1min (default), 5min, 30s")
    sim.add_argument("--start", type=parse_start, default=None,
                     help="site-local start (default: the scenario's `start`, else 2026-01-01)")
    sim.add_argument("--out", default=None, metavar="DIR",
                     help="output directory (default out/<scenario name>)")
    sim.add_argument("--force", action="store_true", help="replace DIR if it holds an earlier run")
    sim.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run `metertwin simulate`."""
    from control.simulate import simulate

    result = simulate(args.scenario, days=args.days, seed=args.seed, start=args.start,
                      step_s=args.step, out=args.out, force=args.force, progress=not args.quiet)
    print(result.report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    from scenarios.loader import ScenarioError

    args = build_parser().parse_args(argv)
    try:
        return {"simulate": cmd_simulate}[args.command](args)
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
