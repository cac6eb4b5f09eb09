"""The ledger's posting tick: 100,000 accounts' accrued charges posted in one transaction
(one transfer each, rounded half-up with the carried remainder, balances updated), against
a bare SQLite transaction inserting the same number of rows into a plain table with the
same durability (WAL, synchronous=FULL). Goal: under 0.5 s. Quick mode: 20,000 accounts.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import Report
from twin.ledger import Ledger


def run(report: Report) -> None:
    n = 20_000 if os.environ.get("METERTWIN_BENCH_QUICK") == "1" else 100_000
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="mt-bench-ledger-") as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        accounts = [f"A-{i:06d}" for i in range(n)]
        ledger.post_charges(dict(zip(accounts, rng.uniform(0, 800, n).tolist(), strict=True)), "electric", at=0.0)
        ticks = []
        for tick in range(1, 4):
            charges = dict(zip(accounts, rng.uniform(0, 800, n).tolist(), strict=True))
            started = time.perf_counter()
            ledger.post_charges(charges, "electric", at=float(tick))
            ticks.append(time.perf_counter() - started)
        ledger.check()
        ledger.close()
        db = sqlite3.connect(Path(tmp) / "bare.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, account TEXT, amount INTEGER)")
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO t(account, amount) VALUES (?, ?)", ((a, 5) for a in accounts))
        db.execute("COMMIT")
        bare = time.perf_counter() - started
        db.close()
    note = "goal < 0.5 s; best of 3 ticks" + (" QUICK: 20,000 accounts" if n < 100_000 else "")
    report.add(f"ledger posting tick, {n:,} accounts, one transaction", min(ticks), "s",
               "bare SQLite: insert as many rows, one commit", bare, note=note)
