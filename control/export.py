"""`metertwin export`: backfill a stored history (and its ledger, when it has one) into
InfluxDB or VictoriaMetrics through the same line protocol and writer as the live sink.

Rows are read a chunk at a time and turned into batches on the main thread while a second
thread posts the previous batch, so reading, formatting and sending overlap; at most two
batches are in memory. A batch the server does not take is retried with backoff for
`--retry-for` seconds; then the command stops and says from where to run it again (every
line is sent in time order, so `--from` that time resends only what may be missing).
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import sqlite3
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

EXAMPLES = """\
examples:
  metertwin simulate scenarios/demo-community.toml --days 7 --out out/demo
  metertwin export out/demo --influx-url http://127.0.0.1:8428             # VictoriaMetrics
  metertwin export out/demo --influx-url https://influx.example:8086 --token $TOKEN --org site --bucket meters
  metertwin export out/demo --influx-url http://127.0.0.1:8428 --from 2026-01-03 --until 2026-01-05T12:00

--from and --until are site-local times (the history's time zone) unless they carry an
offset (2026-01-03T00:00+00:00); --until is exclusive. The url, token, org and bucket
default to METERTWIN_INFLUX_URL, _TOKEN, _ORG and _BUCKET. Readings go out as
electric_kwh / water_m3 (tags site, building, floor, room, twin, kind, role); the
history's ledger.sqlite, when present, as ledger (account, counterpart, kind, ref).
VictoriaMetrics drops samples more than 2 days ahead of its clock and outside its
-retentionPeriod (1 month by default), though it answers 204: set the retention to cover
the history."""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register `export` on the CLI's subcommands."""
    export = commands.add_parser(
        "export", help="backfill a stored history into InfluxDB or VictoriaMetrics (line protocol)",
        description="Send every reading of a stored history, and its ledger's movements, to an InfluxDB 2 "
                    "write API (InfluxDB or VictoriaMetrics), with progress on stderr and a summary on stdout.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ
    export.add_argument("history", metavar="HISTORY_DIR", help="history directory (topology.json, intervals/)")
    export.add_argument("--influx-url", default=env.get("METERTWIN_INFLUX_URL"), metavar="URL",
                        help="http(s)://HOST:PORT of the server (default $METERTWIN_INFLUX_URL)")
    export.add_argument("--token", default=env.get("METERTWIN_INFLUX_TOKEN", ""),
                        help="API token (default $METERTWIN_INFLUX_TOKEN; none for VictoriaMetrics)")
    export.add_argument("--org", default=env.get("METERTWIN_INFLUX_ORG", "metertwin"),
                        help="organisation (default $METERTWIN_INFLUX_ORG, else metertwin)")
    export.add_argument("--bucket", default=env.get("METERTWIN_INFLUX_BUCKET", "metertwin"),
                        help="bucket (default $METERTWIN_INFLUX_BUCKET, else metertwin)")
    export.add_argument("--from", dest="since", default=None, metavar="TIME",
                        help="first interval to send (default: the history's first)")
    export.add_argument("--until", default=None, metavar="TIME", help="end, exclusive (default: the history's end)")
    export.add_argument("--batch-lines", type=int, default=50_000, metavar="N",
                        help="lines per request (default 50000)")
    export.add_argument("--retry-for", type=float, default=60.0, metavar="S",
                        help="give up when one batch has failed for this many seconds (default 60)")
    export.add_argument("--no-ledger", action="store_true", help="leave the history's ledger.sqlite out")
    export.add_argument("--quiet", action="store_true", help="no progress lines")
    export.set_defaults(handler=run)
    return export


def parse_time(text: str, timezone: str, option: str) -> int:
    """UTC epoch seconds of an ISO date or time, site-local unless it has an offset."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option} {text!r}: use 2026-01-03, 2026-01-03T06:00 (site-local) "
                         "or 2026-01-03T06:00+00:00") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(timezone))
    return int(value.timestamp())


def check_reachable(url: str, timeout_s: float = 5.0) -> None:
    """Raise a one-line ValueError when nothing listens at the URL's host and port (a wrong
    --influx-url, a server not started), before reading the history or retrying for minutes."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--influx-url {url!r}: use http(s)://HOST:PORT, for example http://127.0.0.1:8428")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        raise ValueError(f"cannot reach {parts.hostname}:{port} ({err.strerror or err}): check --influx-url and "
                         "that the server is running") from None


def _iso(t: int, timezone: str) -> str:
    return datetime.fromtimestamp(t, tz=ZoneInfo(timezone)).isoformat()


class Poster:
    """Posts batches from a queue of two on its own thread; the first failure that
    outlasts `retry_for_s` stops it and is kept in `error`."""

    def __init__(self, writer: Any, retry_for_s: float) -> None:
        self.writer = writer
        self.retry_for_s = retry_for_s
        self.queue: queue.Queue[tuple[bytes, int, int] | None] = queue.Queue(maxsize=2)
        self.sent_lines = 0
        self.sent_through: int | None = None  #: end of the last interval whose batch was accepted
        self.error: str | None = None
        self.thread = threading.Thread(target=self._loop, name="export-post", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        from control.influx.writer import SendError, backoff_s

        while True:
            item = self.queue.get()
            if item is None:
                return
            body, lines, through = item
            if self.error is not None:
                continue  # drain what the reader still queues; it stops at the next put
            first_failure, attempt = None, 0
            while True:
                try:
                    self.writer.post(body)
                    break
                except SendError as err:
                    now = time.monotonic()
                    first_failure = first_failure or now
                    if not err.retry or now - first_failure > self.retry_for_s:
                        self.error = str(err)
                        break
                    attempt += 1
                    time.sleep(backoff_s(attempt, most_s=10.0))
            if self.error is None:
                self.sent_lines += lines
                self.sent_through = through

    def put(self, body: bytes, lines: int, through: int) -> bool:
        """Queue a batch (waits while two are queued); False once posting has failed."""
        if self.error is not None:
            return False
        self.queue.put((body, lines, through))
        return True

    def close(self) -> None:
        """Wait for the queued batches."""
        self.queue.put(None)
        self.thread.join()


def run(args: argparse.Namespace) -> int:
    """`metertwin export`: exit 0 when everything was accepted, 1 when the server stopped
    taking it (the message says from where to resume), 2 for bad input."""
    from control.influx.lines import ReadingLines, ledger_lines
    from control.influx.writer import Target, Writer
    from control.progress import Progress
    from twin.history import open_history

    if not args.influx_url:
        raise ValueError("--influx-url is required (or set METERTWIN_INFLUX_URL), for example "
                         "--influx-url http://127.0.0.1:8428")
    if args.batch_lines < 1:
        raise ValueError(f"--batch-lines must be >= 1, not {args.batch_lines}")
    history = open_history(args.history)
    topo = history.topology
    tz, step = topo.timezone, topo.interval_s
    first, end = history.start, history.end
    if first is None or end is None:
        print(f"export: {args.history} holds no readings; nothing sent", file=sys.stderr)
        return 0
    if args.since:
        first = max(first, parse_time(args.since, tz, "--from"))
    if args.until:
        end = min(end, parse_time(args.until, tz, "--until"))
    first += -first % step  # whole intervals only
    end -= end % step
    target = Target(args.influx_url, args.token, args.org, args.bucket)
    check_reachable(args.influx_url)
    writer = Writer(target)
    lines = ReadingLines(topo)
    total = max((end - first) // step, 0)
    bar = None if args.quiet else Progress("export", total=total, unit="intervals")
    if end > time.time() + 2 * 86400:
        print(f"export: readings after {_iso(int(time.time()) + 2 * 86400, tz)} are more than 2 days ahead of now; "
              "VictoriaMetrics drops those (after answering 204)", file=sys.stderr)
    started = time.perf_counter()
    poster = Poster(writer, args.retry_for)
    rows_per_read = max(1, min(2880, args.batch_lines // max(len(topo.columns), 1)))
    parts: list[bytes] = []
    pending, done, t = 0, 0, first
    ok = True
    try:
        while t < end and ok:
            stop = min(end, t + rows_per_read * step)
            block = history.read_rows(t, stop)
            for r in range(block.shape[0]):
                text, n = lines.build_bytes(t + r * step, block[r])
                if n:
                    parts.append(text)
                    pending += n
                if pending >= args.batch_lines:
                    ok = poster.put(b"\n".join(parts), pending, t + (r + 1) * step)
                    parts, pending = [], 0
                    if not ok:
                        break
            done += block.shape[0]
            t = stop
            if bar is not None:
                elapsed = time.perf_counter() - started
                bar.update(done, f"{poster.sent_lines / max(elapsed, 1e-9):,.0f} samples/s")
        if ok and parts:
            ok = poster.put(b"\n".join(parts), pending, end)
        ledger_sent = 0
        ledger_path = Path(args.history) / "ledger.sqlite"
        if ok and not args.no_ledger and ledger_path.exists():
            db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
            try:
                after = 0
                # the whole ledger, unless --from or --until cut it (then [from, until), like the readings)
                low = first if args.since else -math.inf
                high = end if args.until else math.inf
                while ok:
                    rows = db.execute("SELECT id, at, kind, debit, credit, amount, ref FROM transfers"
                                      " WHERE id > ? AND at >= ? AND at < ? ORDER BY id LIMIT ?",
                                      (after, low, high, max(args.batch_lines // 2, 1))).fetchall()
                    if not rows:
                        break
                    ok = poster.put("\n".join(ledger_lines(topo.site, *row) for row in rows).encode(),
                                    2 * len(rows), end)
                    ledger_sent += 2 * len(rows)
                    after = int(rows[-1][0])
            finally:
                db.close()
    finally:
        poster.close()
        writer.close()
    seconds = bar.finish() if bar is not None else time.perf_counter() - started
    if poster.error is not None:
        resume = poster.sent_through or first
        print(f"export: stopped: {poster.error}\nexport: sent {poster.sent_lines:,} lines, readings up to "
              f"{_iso(resume, tz)}; run again with --from {_iso(resume, tz)} to send the rest", file=sys.stderr)
        return 1
    samples = poster.sent_lines + ledger_sent  # a ledger line carries two samples: amount_fen and transfer
    rate = samples / max(seconds, 1e-9)
    print(f"exported {samples:,} samples ({poster.sent_lines - ledger_sent:,} readings of "
          f"{len(topo.columns):,} twins over {total:,} intervals, {ledger_sent:,} ledger entry lines) "
          f"from {_iso(first, tz)} to {_iso(end, tz)} in {seconds:.1f} s: {rate:,.0f} samples/s "
          f"-> {target.url}", flush=True)
    return 0
