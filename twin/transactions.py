"""One write transaction at a time on a SQLite connection shared by threads: the ledger's
and the control database's connections are used from the tick thread, the loop and the
gateways' thread, and a second BEGIN inside a transaction fails."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def immediate(db: sqlite3.Connection, lock: threading.RLock) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT under `lock` (ROLLBACK on error); the body should be SQL only.
    Example: ``with immediate(db, lock) as tx: tx.execute("INSERT ...")``."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
