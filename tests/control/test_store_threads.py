"""The control database's one connection is written from several threads (the tick thread,
the emulated gateways' thread, the event loop): write transactions never overlap."""

from __future__ import annotations

import threading
from pathlib import Path

from control.store import Store


def test_write_transactions_from_many_threads_never_overlap(tmp_path: Path):
    """Eight threads each write 200 meta rows in their own transactions on one Store: no
    "cannot start a transaction within a transaction", every row lands."""
    store = Store(tmp_path / "control.sqlite")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        try:
            for i in range(200):
                with store.write() as db:
                    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"t{n}-{i}", str(i)))
                    db.execute("SELECT count(*) FROM meta").fetchone()
        except BaseException as err:  # noqa: BLE001 - gathered for the assertion
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.db.execute("SELECT count(*) FROM meta WHERE key LIKE 't%'").fetchone()[0] == 8 * 200
    store.close()
