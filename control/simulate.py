"""`metertwin simulate`: run a scenario's world headless, faster than real time, and
write its history, ground truth and events to a directory.

What lands in the directory depends only on the scenario, the seed, the start, the
number of days and the step, never on timing or threads: two runs with one seed give
identical directories. Timing goes to the printed summary only.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from control.progress import Progress
from control.sim_billing import SimBilling
from control.summary import RunSummary, render
from devices.sim.world import DayResult, World
from scenarios.loader import load_scenario
from twin.history import HistoryWriter, Topology, TruthEvent, write_ground_truth


@dataclass
class SimulateResult:
    """What a run produced: the summary object, the report text and the timing."""

    summary: RunSummary
    report: str
    timing: dict[str, float]
    out: Path


def prepare_out(out: Path, force: bool) -> None:
    """Refuse to mix a run into an existing non-empty directory unless `force`."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} exists and is not empty: pass --force to replace it, or choose --out")
        if not (out / "topology.json").exists():
            raise FileExistsError(f"{out} is not a history directory; not replacing it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def simulate(scenario_path: str, *, days: float | None = None, seed: int = 0,
             start: datetime | None = None, step_s: int = 60, out: str | None = None,
             force: bool = False, progress: bool = True) -> SimulateResult:
    """Run the scenario and write everything to `out`; returns the summary."""
    wall0 = time.perf_counter()
    scenario = load_scenario(scenario_path)
    run_days = days if days is not None else (scenario.days or 1.0)
    world = World(scenario, seed=seed, start=start, days=run_days, step_s=step_s)
    out_dir = Path(out or f"out/{Path(scenario_path).stem}")
    prepare_out(out_dir, force)
    topology = Topology.from_twins(scenario.site.id, scenario.site.timezone, world.interval_s,
                                   scenario.site.twins)
    summary = RunSummary(world)
    residents = scenario.residents
    billed = None
    bar = Progress("simulate", total=world.days, unit="days") if progress else None
    with HistoryWriter(out_dir, topology) as writer:
        if residents is not None and residents.billing == "platform":
            billed = SimBilling(world, out_dir / "ledger.sqlite")

        def on_day(day: DayResult) -> None:
            writer.append(day.first_utc, day.reported)
            summary.add(day)
            if bar is not None:
                rate = world.metered_steps / max(world.kernel_seconds, 1e-9)
                bar.update(round(world.step / world.spd, 3), f"{rate / 1e6:,.0f} M meter-steps/s")

        world.run(on_day)
    if billed is not None:
        billed.close()
        summary.billing = billed.figures
    if bar is not None:
        bar.finish()
    write_ground_truth(out_dir, [TruthEvent(**row) for row in world.ground_truth()])  # type: ignore[arg-type]
    _write_events(out_dir / "events.csv", world)
    shape = summary.shape()
    (out_dir / "summary.json").write_text(json.dumps({
        "scenario": Path(scenario_path).name, "seed": seed, "start": world.start.isoformat(),
        "days": world.days, "step_s": step_s, "twins": summary.twin_counts(), "shape": shape,
        "buildings": summary.buildings_table()}, indent=1, default=_plain) + "\n")
    wall = time.perf_counter() - wall0
    timing = {
        "wall": wall,
        "kernel_seconds": world.kernel_seconds,
        "kernel_rate": world.metered_steps / max(world.kernel_seconds, 1e-9),
        "wall_rate": world.metered_steps / wall,
        "speedup": world.days * 86400.0 / wall,
    }
    return SimulateResult(summary, render(summary, timing, str(out_dir)), timing, out_dir)


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _write_events(path: Path, world: World) -> None:
    """The events log: relay and valve changes and injection edges, in time order."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", "twin", "event", "value", "source"])
        for e in world.events:
            writer.writerow([_utc(e.utc), e.twin, e.event, e.value, e.source])


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
