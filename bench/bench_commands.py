"""Commands through their whole lifecycle against the simulated world.

Figure: 10,000 relay trips on district-10k (one per flat), each created, sent, and
confirmed when the live world reports the relay open and the power gone: commands per
second end to end, against the same durable work done bare (three committed SQLite
transactions per row, WAL and synchronous=FULL, as each command's created, sent and
confirmed are). And the p99 time from creation to confirmation, in wall seconds (the
batch is created first, then the world steps a minute at a time).
With METERTWIN_BENCH_QUICK=1: 2,000 commands.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from bench.harness import Report
from control.commands import CommandBook, CommandState
from control.store import Store
from devices.sim.world import World
from scenarios.loader import load_scenario
from twin.model import Kind

ROOT = Path(__file__).resolve().parent.parent


def bare_sqlite_rows_per_s(path: Path, n: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT)")
    started = time.perf_counter()
    for i in range(n):
        for sql, args in (("INSERT INTO t VALUES (?, 'created')", (i,)), ("UPDATE t SET state='sent' WHERE id=?", (i,)),
                          ("UPDATE t SET state='confirmed' WHERE id=?", (i,))):
            db.execute("BEGIN IMMEDIATE")
            db.execute(sql, args)
            db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return n / elapsed


def run(report: Report) -> None:
    n = 2000 if os.environ.get("METERTWIN_BENCH_QUICK") == "1" else 10_000
    scenario = load_scenario(str(ROOT / "scenarios" / "district-10k.toml"))
    world = World(scenario, seed=1, days=2, live=True, start=datetime(2026, 3, 2, 19, 0))
    world.begin(lambda day: None)
    world.advance_to(120)
    twins = [t.id for t in world.groups["e"]][:n]
    with tempfile.TemporaryDirectory(prefix="mt-bench-cmd-") as tmp:
        store = Store(Path(tmp) / "control.sqlite")
        valves = {t.id: t.valve_of for t in scenario.site.twins if t.kind is Kind.VALVE and t.valve_of}
        book = CommandBook(store, world.state, world, valves, world.interval_s, lambda c: None)
        created: dict[str, float] = {}
        latency: list[float] = []
        started = time.perf_counter()
        for twin in twins:
            now = world.start_utc + world.now_s
            command = book.create(twin, "relay_open", by="bench", source="batch", now=now)
            created[command.id] = time.perf_counter()
        while book.open:
            world.advance_to(world.now_s + world.step_s)
            for command in book.check(world.start_utc + world.now_s):
                if command.state is CommandState.CONFIRMED:
                    latency.append(time.perf_counter() - created[command.id])
        elapsed = time.perf_counter() - started
        store.close()
        bare = bare_sqlite_rows_per_s(Path(tmp) / "bare.sqlite", n)
    confirmed = len(latency)
    report.add(f"commands, {n:,} relay trips, created to confirmed", n / elapsed, "commands/s",
               "bare SQLite, 3 durable commits per row", bare,
               note=f"{confirmed:,} confirmed" + (" QUICK: 2,000 not 10,000" if n < 10_000 else ""))
    p99 = float(np.percentile(latency, 99)) if latency else float("nan")
    batch_s = max(created.values()) - started
    report.add("commands, p99 time to confirmation", p99, "s wall", "time to create the whole batch", batch_s,
               note="batch created first, then the world steps a minute at a time")
