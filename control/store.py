"""The control core's own database: commands, alarms, users, keys and tasks, in one
SQLite file of the data directory (WAL, synchronous=FULL: a row acknowledged is a row on
disk). The ledger has its own file. Writes take `BEGIN IMMEDIATE` so two writers never
interleave; every statement has a busy timeout instead of waiting forever.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from twin.alarms import Alarm, AlarmState, Severity
from twin.transactions import immediate

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, twin TEXT NOT NULL, action TEXT NOT NULL, field TEXT NOT NULL,
    value INTEGER NOT NULL, requested_by TEXT NOT NULL, source TEXT NOT NULL,
    created REAL NOT NULL, deadline REAL NOT NULL, state TEXT NOT NULL, reason TEXT,
    sent REAL, done REAL, batch TEXT
);
CREATE INDEX IF NOT EXISTS commands_open ON commands(state);
CREATE TABLE IF NOT EXISTS command_events (
    command TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL, at REAL NOT NULL,
    by TEXT NOT NULL, reason TEXT, PRIMARY KEY (command, seq)
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, twin TEXT, account TEXT, severity INTEGER NOT NULL,
    start REAL NOT NULL, evidence TEXT NOT NULL, state TEXT NOT NULL, count INTEGER NOT NULL,
    last_seen REAL NOT NULL, history TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    """One connection to the control database. Example: ``Store(Path("data/control.sqlite"))``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        #: one write transaction at a time on this connection, whichever thread asks (the tick
        #: thread, the gateways' thread, the loop): a second BEGIN on a connection inside a
        #: transaction fails ("cannot start a transaction within a transaction")
        self._writing = threading.RLock()
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error), one at a time
        across threads; its body should be SQL only."""
        return immediate(self.db, self._writing)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    # -- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """A stored setting, or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        with self.write() as db:
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                       (key, value, value))

    # -- alarms -------------------------------------------------------------------------

    def save_alarm(self, alarm: Alarm) -> None:
        """Insert or update one alarm."""
        with self.write() as db:
            db.execute(
                "INSERT INTO alarms(id, kind, twin, account, severity, start, evidence, state, count, last_seen,"
                " history) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " severity=excluded.severity, evidence=excluded.evidence, state=excluded.state,"
                " count=excluded.count, last_seen=excluded.last_seen, history=excluded.history",
                (alarm.id, alarm.kind, alarm.twin, alarm.account, int(alarm.severity), alarm.start,
                 json.dumps(alarm.evidence, default=str), alarm.state.value, alarm.count, alarm.last_seen,
                 json.dumps(alarm.history)))

    def load_alarms(self) -> list[Alarm]:
        """Every stored alarm."""
        out = []
        for row in self.db.execute("SELECT * FROM alarms ORDER BY id"):
            out.append(Alarm(row["id"], row["kind"], row["twin"], row["account"], Severity(row["severity"]),
                             row["start"], json.loads(row["evidence"]), AlarmState(row["state"]), row["count"],
                             row["last_seen"], [tuple(h) for h in json.loads(row["history"])]))
        return out


def as_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A row as a plain dict."""
    return {key: row[key] for key in row.keys()}  # noqa: SIM118 - sqlite3.Row has no items()
