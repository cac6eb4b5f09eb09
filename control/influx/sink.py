"""The live sink: every interval row of every twin and every ledger movement, to an
InfluxDB 2 write API (InfluxDB, or VictoriaMetrics), without ever holding up the platform.

Three stages, each bounded:

1. `add_interval` (the tick thread) copies the row into an in-memory queue and returns;
   past `queue_bytes` the row is dropped and counted (the history store still has it;
   `metertwin export --from --until` sends it later).
2. The appender thread turns rows into line protocol and reads new ledger transfers by id
   (its own read-only connection to ledger.sqlite: every movement, whichever code made
   it). While the server keeps up, batches wait in memory (up to `direct_bytes`) for the
   sender; otherwise they go to the spool on disk (fsync'd once the appender has caught
   up, and every second while busy; see spool.py). Past `spool_bytes` unsent it drops and
   counts too.
3. The sender thread posts the oldest unsent batches in order through influxdb-client.
   The first failure, or a batch that has waited in memory for `spill_after_s` (the server
   is too slow), moves every batch still in memory (the one that failed first) to the
   spool, and the sender works from the spool, retrying with backoff, until it is empty;
   the spool's cursor moves only after a 2xx. While memory is full and nothing has waited
   that long, the appender waits (the tick thread's queue still takes rows).

Replays: the sink remembers the last interval and the last ledger transfer the server
accepted or the spool holds (its marks, in the spool's cursor and records), so the
intervals a restarted platform replays are not sent again, and what was only in memory
when the process died is produced again by the replay (the ledger is read again by id).
Delivery is at least once: a sender killed after the server accepted a batch but before
the cursor moved sends that batch again on restart. The lines are identical (same series,
time and value), which InfluxDB stores as one point and VictoriaMetrics collapses with
``-dedup.minScrapeInterval=1ms``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from control.influx.lines import ReadingLines, ledger_lines
from control.influx.spool import Record, Spool
from control.influx.writer import SendError, Target, Writer, backoff_s
from twin.history import Topology

log = logging.getLogger("metertwin.influx")
#: VictoriaMetrics drops (after answering 204) samples this far ahead of its own clock.
FUTURE_LIMIT_S = 2 * 86400
ENV = ("METERTWIN_INFLUX_URL", "METERTWIN_INFLUX_TOKEN", "METERTWIN_INFLUX_ORG", "METERTWIN_INFLUX_BUCKET")


def target_from(settings: Any | None, environ: Mapping[str, str] = os.environ) -> Target | None:
    """The sink's target from a scenario's ``[influx]`` table (url, token, org, bucket) and
    the environment, whose METERTWIN_INFLUX_URL, _TOKEN, _ORG and _BUCKET win field by
    field; None (no sink) when neither names a url."""
    values = {key: getattr(settings, key, None) for key in ("url", "token", "org", "bucket")}
    for key, name in zip(("url", "token", "org", "bucket"), ENV, strict=True):
        if environ.get(name):
            values[key] = environ[name]
    if not values["url"]:
        return None
    return Target(values["url"], values["token"] or "", values["org"] or "metertwin", values["bucket"] or "metertwin")


class InfluxSink:
    """Example::

        sink = InfluxSink(Target("http://127.0.0.1:8428"), Path("data/influx-spool"), topology,
                          ledger_path=Path("data/ledger.sqlite"))
        sink.add_interval(start_utc, row)     # from the tick thread: returns at once
        sink.status()                         # sent, spooled, dropped, last error
        sink.close()                          # spools what is queued, sends for a few seconds
    """

    def __init__(self, target: Target, spool_dir: Path, topology: Topology, *, ledger_path: Path | None = None,
                 batch_lines: int = 50_000, queue_bytes: int = 64 << 20, spool_bytes: int = 2 << 30,
                 direct_bytes: int = 64 << 20, spill_after_s: float = 5.0,
                 ledger_poll_s: float = 1.0, timeout_s: float = 10.0, max_backoff_s: float = 30.0) -> None:
        self.target = target
        self.topology = topology
        self.lines = ReadingLines(topology)
        self.spool = Spool(spool_dir)
        self.ledger_path = ledger_path
        self.batch_lines, self.queue_bytes, self.spool_bytes = batch_lines, queue_bytes, spool_bytes
        self.direct_bytes, self.spill_after_s = direct_bytes, spill_after_s
        #: batches built and not yet on disk or accepted, in order; `_route` guards it, the
        #: mode, and every append, so a batch is in memory or in the spool, never both
        self._direct: deque[Record] = deque()
        self._direct_since: deque[float] = deque()  # when each batch in memory was built
        self._direct_size = 0
        self._in_flight = 0
        self._route = threading.Condition()
        self._spooling = self.spool.next_after(self.spool.cursor) is not None
        self.marks = dict(self.spool.marks)  #: what has been taken, memory and spool together
        self.ledger_poll_s, self.max_backoff_s = ledger_poll_s, max_backoff_s
        self.writer = Writer(target, timeout_s)
        self._queue: deque[tuple[int, np.ndarray]] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._appended = threading.Event()
        self._poll_now = threading.Event()
        self._stop_appending = threading.Event()
        self._stop_sending = threading.Event()
        self._busy = False
        self.last_enqueued = self.marks.get("readings_through", -1)
        self.sent_lines = self.sent_batches = self.dropped_lines = self.rejected_lines = self.retries = 0
        self.replayed_intervals = 0
        self.state = "idle"
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_sent_at: float | None = None
        self._threads = [threading.Thread(target=self._append_loop, name="influx-append", daemon=True),
                         threading.Thread(target=self._send_loop, name="influx-send", daemon=True)]
        for thread in self._threads:
            thread.start()

    # -- the tick thread's side ---------------------------------------------------------

    def add_interval(self, start_utc: int, row: np.ndarray) -> None:
        """Queue one closed interval (UTC start, [columns] row, NaN missing); never blocks
        on the network or the disk. Intervals at or before the last one taken are replays
        and are skipped."""
        if start_utc <= self.last_enqueued:
            self.replayed_intervals += 1
            return
        self.last_enqueued = start_utc
        with self._cond:
            if self._queued_bytes + row.nbytes > self.queue_bytes:
                self._drop(int(np.isfinite(row).sum()), f"memory queue full ({self.queue_bytes} bytes): "
                           f"interval {start_utc} dropped; `metertwin export --from` can send it later")
                return
            self._queue.append((start_utc, np.array(row, copy=True)))
            self._queued_bytes += row.nbytes
            self._cond.notify()

    def _drop(self, lines: int, why: str) -> None:
        self.dropped_lines += lines
        self._error(why)

    def _error(self, message: str) -> None:
        if self.last_error != message:
            log.error("influx sink: %s", message)  # once per kind of failure, then quietly
        self.last_error, self.last_error_at = message, time.time()

    # -- appender -----------------------------------------------------------------------

    def _append_loop(self) -> None:
        ledger: sqlite3.Connection | None = None
        next_poll = last_sync = 0.0
        while True:
            with self._cond:
                if not self._queue and not self._stop_appending.is_set() and not self._poll_now.is_set():
                    wait = self.ledger_poll_s if self.ledger_path is None else next_poll - time.monotonic()
                    self._cond.wait(timeout=max(0.0, wait))
                items = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                self._busy = True
                stopping = self._stop_appending.is_set()
                poll = self._poll_now.is_set() or stopping or time.monotonic() >= next_poll
                self._poll_now.clear()
            if poll:
                next_poll = time.monotonic() + self.ledger_poll_s
            try:
                if items:
                    self._spool_rows(items)
                if self.ledger_path is not None and poll:
                    if ledger is None and self.ledger_path.exists():
                        ledger = sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True, timeout=10.0)
                    if ledger is not None:
                        self._spool_ledger(ledger)
                # fsync once caught up, and every second while busy (see spool.py: a power cut
                # loses at most that much, and the platform produces it again)
                if self.spool.dirty and (not self._queue or time.monotonic() - last_sync >= 1.0):
                    self.spool.sync()
                    last_sync = time.monotonic()
            except Exception as err:  # a full disk, a locked ledger, a bug: say so and go on
                if not isinstance(err, OSError | sqlite3.Error):
                    log.exception("influx sink: appender")
                self._error(f"spooling: {type(err).__name__}: {err}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if stopping and not self._queue:
                break
        if ledger is not None:
            ledger.close()

    def _room(self, lines: int, nbytes: int) -> bool:
        if self.spool.unsent_bytes + nbytes > self.spool_bytes:
            self._drop(lines, f"spool full ({self.spool_bytes} bytes unsent): {lines} lines dropped")
            return False
        return True

    def _marks(self, **update: int) -> dict[str, int]:
        marks = dict(self.marks)
        marks.update(update)
        return marks

    def _spool_rows(self, items: list[tuple[int, np.ndarray]]) -> None:
        parts: list[bytes] = []
        count = 0
        through = self.marks.get("readings_through", -1)
        for start_utc, row in items:
            text, n = self.lines.build_bytes(start_utc, row)
            through = start_utc
            if n:
                parts.append(text)
                count += n
            if count >= self.batch_lines:
                self._append_text(parts, count, self._marks(readings_through=through))
                parts, count = [], 0
        if parts or through != self.marks.get("readings_through", -1):
            self._append_text(parts, count, self._marks(readings_through=through))

    def _append_text(self, parts: list[bytes], count: int, marks: dict[str, int]) -> None:
        """Hand one batch to the sender, in memory or through the spool, and wake it: it
        may post this batch while the next is being built."""
        body = b"\n".join(parts)
        with self._route:
            while not self._spooling and self._direct and self._direct_size + len(body) > self.direct_bytes:
                self._route.wait(0.1)  # the sender sends or spills: memory stays bounded
            self.marks = marks
            if not self._spooling:
                self._direct.append(Record(-1, -1, -1, count, marks, body))
                self._direct_since.append(time.monotonic())
                self._direct_size += len(body)
            elif self._room(count, len(body)):
                self.spool.append(body, count, marks, sync=False)
            else:
                self.spool.append(b"", 0, marks, sync=False)  # the marks still move: a replay must not resend
        self._appended.set()

    def _spool_ledger(self, db: sqlite3.Connection) -> None:
        site = self.topology.site
        while True:
            after = self.marks.get("ledger_through", 0)
            rows = db.execute("SELECT id, at, kind, debit, credit, amount, ref FROM transfers WHERE id > ?"
                              " ORDER BY id LIMIT ?", (after, max(self.batch_lines // 2, 1))).fetchall()
            if not rows:
                return
            text = "\n".join(ledger_lines(site, *row) for row in rows).encode()
            self._append_text([text], 2 * len(rows), self._marks(ledger_through=int(rows[-1][0])))

    # -- sender -------------------------------------------------------------------------

    def _next_batch(self) -> list[Record]:
        batch: list[Record] = []
        position, lines = self.spool.cursor, 0
        while lines < self.batch_lines:
            record = self.spool.next_after(position)
            if record is None:
                break
            batch.append(record)
            lines += record.lines
            position = (record.segment, record.end)
        return batch

    def _send_loop(self) -> None:
        attempt = 0
        while not self._stop_sending.is_set():
            try:
                attempt = self._send_next(attempt)
            except Exception as err:  # a full disk or a bug must not end the sender: say so, wait, go on
                log.exception("influx sink: sender")
                self._error(f"sender: {type(err).__name__}: {err}")
                self._stop_sending.wait(self.max_backoff_s)

    def _spill(self, first: list[Record]) -> None:
        """Move `first` and every batch in memory, in order, to the spool (under `_route`)."""
        for record in first + list(self._direct):
            self.spool.append(record.body, record.lines, record.marks, sync=False)
        self._direct.clear()
        self._direct_since.clear()
        self._direct_size = 0
        self.spool.sync()
        self._spooling = True
        self._route.notify_all()

    def _take(self) -> tuple[list[Record], bool]:
        """The next batch, and whether it comes from the spool (False: from memory)."""
        with self._route:
            if self._spooling and self.spool.next_after(self.spool.cursor) is None:
                self._spooling = False  # the spool is drained: back to memory
            if not self._spooling and self._direct and time.monotonic() - self._direct_since[0] > self.spill_after_s:
                self._spill([])  # the server is too slow: keep the backlog on disk, not in memory
            if self._spooling:
                return self._next_batch(), True
            batch: list[Record] = []
            lines = 0
            while self._direct and lines < self.batch_lines:
                record = self._direct.popleft()
                self._direct_since.popleft()
                self._direct_size -= len(record.body)
                batch.append(record)
                lines += record.lines
            self._in_flight = lines
            self._route.notify_all()
            return batch, False

    def _send_next(self, attempt: int) -> int:
        """Post the oldest unsent batch once; the retry count to go on with."""
        batch, spooled = self._take()
        if not batch:
            self.state = "idle"
            self._appended.wait(timeout=0.5)
            self._appended.clear()
            return attempt
        lines = sum(r.lines for r in batch)
        nbytes = sum(r.end - r.offset for r in batch) if spooled else 0
        last = batch[-1]
        body = b"\n".join(r.body for r in batch if r.body)
        try:
            if body:
                self.state = "sending" if attempt == 0 else "retrying"
                try:
                    self.writer.post(body)
                except SendError:
                    raise
                except Exception as err:  # never lose a batch held only in memory
                    raise SendError(f"{type(err).__name__}: {err}", None, True) from err
        except SendError as err:
            self._error(str(err))
            if err.retry:
                if not spooled:
                    with self._route:
                        self._spill(batch)
                        self._in_flight = 0
                self.retries += 1
                self.state = "retrying"
                self._stop_sending.wait(backoff_s(attempt + 1, most_s=self.max_backoff_s))
                return attempt + 1
            self._reject(batch, body, err)
            self.rejected_lines += lines
            body = b""  # kept aside, not sent
        if spooled:
            self.spool.ack(last.segment, last.end, lines, nbytes, last.marks)
        else:
            self.spool.ack(*self.spool.cursor, 0, 0, last.marks)  # the marks move; the cursor stays
            self._in_flight = 0
        if body:
            self.sent_lines += lines
            self.sent_batches += 1
            self.last_sent_at = time.time()
        return 0

    def _reject(self, batch: list[Record], body: bytes, err: SendError) -> None:
        """A batch the server refuses for good goes to rejected/ beside the spool, never lost."""
        folder = self.spool.directory / "rejected"
        folder.mkdir(exist_ok=True)
        name = f"{time.time_ns()}-{batch[0].segment}-{batch[0].offset}"
        (folder / f"{name}.lp").write_bytes(body)
        (folder / f"{name}.error").write_text(f"{err}\n")

    # -- control ------------------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until what was queued and what the ledger holds has been sent; False when
        `timeout_s` passed first (the server is away, say)."""
        deadline = time.monotonic() + timeout_s
        self._poll_now.set()
        with self._cond:
            self._cond.notify_all()
        while time.monotonic() < deadline:
            with self._cond:
                idle = not self._queue and not self._busy and not self._poll_now.is_set()
            if idle and self._unsent() == 0:
                return True
            time.sleep(0.02)
        return False

    def _unsent(self) -> int:
        """Batches not yet accepted: in memory, in flight, or in the spool (records with no
        lines, which only move the marks, count as one)."""
        with self._route:
            pending = len(self._direct) + (1 if self._in_flight else 0)
            return pending + self.spool.unsent_lines + (self.spool.next_after(self.spool.cursor) is not None)

    def close(self, drain_s: float = 5.0) -> None:
        """Take everything queued, keep sending for up to `drain_s` seconds, then stop;
        whatever is left goes to the spool for the next start."""
        self._stop_appending.set()
        with self._cond:
            self._cond.notify_all()
        self._threads[0].join()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and self._unsent():
            time.sleep(0.02)
        self._stop_sending.set()
        self._appended.set()
        with self._route:
            self._route.notify_all()
        self._threads[1].join()
        with self._route:
            if self._direct:
                self._spill([])  # a clean stop loses nothing held in memory
        self.state = "stopped"
        self.spool.close()
        self.writer.close()

    def status(self) -> dict[str, object]:
        """What /api/health shows of the sink."""
        through = self.marks.get("readings_through")
        ahead = None if through is None else through + self.topology.interval_s - time.time()
        status: dict[str, object] = {
            "url": self.target.url, "bucket": self.target.bucket, "state": self.state,
            "sent": self.sent_lines, "batches": self.sent_batches, "spooled": self.spool.unsent_lines,
            "spool_bytes": self.spool.unsent_bytes, "in_memory": sum(r.lines for r in list(self._direct)),
            "in_flight": self._in_flight, "queued_intervals": len(self._queue),
            "dropped": self.dropped_lines, "rejected": self.rejected_lines, "retries": self.retries,
            "readings_through": through, "ledger_through": self.marks.get("ledger_through"),
            "last_sent_at": self.last_sent_at, "last_error": self.last_error, "last_error_at": self.last_error_at,
        }
        if ahead is not None and ahead > FUTURE_LIMIT_S:
            status["warning"] = (f"readings are {ahead / 86400:.1f} days ahead of the wall clock: VictoriaMetrics "
                                 "drops samples more than 2 days in the future (start the world in the past, "
                                 "or slow it down)")
        return status


def sink_for(settings: Any | None, data_dir: Path, topology: Topology, ledger_path: Path | None,
             environ: Mapping[str, str] = os.environ) -> InfluxSink | None:
    """The platform's sink when the scenario or the environment names a url, else None."""
    target = target_from(settings, environ)
    if target is None:
        return None
    return InfluxSink(target, Path(data_dir) / "influx-spool", topology, ledger_path=ledger_path)
