"""The sink's spool: an append-only queue of line-protocol batches on disk, sent in order
and trimmed only once the server accepted them.

A spool is a directory:

    seg-000000000001.spool   records, appended; a new segment past `segment_bytes`
    cursor.json              {"segment": n, "offset": o, "marks": {...}}: where the first unsent
                             record starts, and the marks of the last record sent

A record is a 16-byte header (magic ``MTS1``, payload length, CRC-32 of the payload, line
count; little-endian) and its payload: one JSON line of marks (``{"readings_through": t,
"ledger_through": id}``, what the batch brings the sink up to), then the line protocol.
A record counts once it is written (a killed process loses nothing the kernel has); the
appender fsyncs whenever it has caught up, and at least every second while busy, so a
power cut loses at most the last second of appends. On open the spool keeps its longest
valid prefix: a torn or damaged record, and everything after it, is cut off, and the
marks are those of what is left, so whatever was lost is produced again (the platform
replays its world; ledger transfers are read again by id). The cursor moves only after a
2xx, by writing cursor.json.tmp and renaming it over cursor.json (fsync'd at most once a
second, and at close), so a sender killed at any point resends at most the batches it had
in flight (after a power cut, at most a second more), never skips one. Segments
wholly before the cursor are deleted. Records appended by this process are kept in memory
too (up to `cache_bytes`), so the sender rarely reads them back from disk.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"MTS1"
HEADER = struct.Struct("<4sIII")
#: A new segment starts once the current one holds this many bytes.
SEGMENT_BYTES = 64 * 1024 * 1024


class SpoolError(OSError):
    """A spool that cannot be used: the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class Record:
    """One spooled batch: where it starts and ends, its marks, its lines."""

    segment: int  #: segment number
    offset: int  #: byte offset of its header
    end: int  #: byte offset just after it
    lines: int  #: line count
    marks: dict[str, int]  #: what the batch brings the sink up to
    body: bytes  #: line protocol, lines joined by newlines


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Example::

        spool = Spool(Path("data/influx-spool"))
        spool.append(b"electric,twin=a kwh=0.25 1767225600000", 1, {"readings_through": 1767225600})
        record = spool.next_after(spool.cursor)      # the oldest unsent record, or None
        spool.ack(record.segment, record.end)        # after the server answered 2xx

    One appender thread and one sender thread may use it at once.
    """

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES, cache_bytes: int = 128 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int], Record] = OrderedDict()
        self._cached_bytes = 0
        self.dirty = False  #: appended since the last fsync
        self._durable_at = 0.0  # monotonic time the cursor was last fsync'd
        self._lock = threading.Lock()
        self.marks: dict[str, int] = {}
        self.cursor = self._read_cursor()  # also loads the marks of what was sent
        segments = self._segments()
        self.unsent_lines = 0
        self.unsent_bytes = 0
        for number in segments:
            if number < self.cursor[0]:
                (self._path(number)).unlink()  # sent before a crash cut the trim short
        segments = [n for n in segments if n >= self.cursor[0]]
        if not segments:
            segments = [max(self.cursor[0], 1)]
            self._path(segments[0]).touch()
            _fsync_dir(self.directory)
        if self.cursor[0] < segments[0]:
            self.cursor = (segments[0], 0)
        for i, number in enumerate(segments):
            if not self._scan(number):  # damaged here: the valid prefix ends in this segment
                for later in segments[i + 1:]:
                    self._path(later).unlink()
                segments = segments[:i + 1]
                break
        self.segment = segments[-1]
        end = self._path(self.segment).stat().st_size
        if self.cursor > (self.segment, end):
            self.cursor = (self.segment, end)  # sent, then lost in a power cut: nothing left to send
        self._fd = os.open(self._path(self.segment), os.O_WRONLY | os.O_APPEND)
        self.end = os.fstat(self._fd).st_size  #: committed end of the last segment

    # -- files --------------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.directory / f"seg-{number:012d}.spool"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.directory.glob("seg-*.spool"))

    def _read_cursor(self) -> tuple[int, int]:
        path = self.directory / "cursor.json"
        if not path.exists():
            return (0, 0)
        try:
            doc = json.loads(path.read_text())
            self._merge(doc.get("marks", {}))
            return (int(doc["segment"]), int(doc["offset"]))
        except (ValueError, KeyError, TypeError) as err:
            raise SpoolError(f"{path}: not a spool cursor ({err}); it should read "
                             '{"segment": N, "offset": BYTES}') from None

    def _scan(self, number: int) -> bool:
        """Count unsent lines and learn the marks; cut a torn or damaged record and what
        follows it off (False then: later segments go too)."""
        path = self._path(number)
        size = path.stat().st_size
        start = self.cursor[1] if number == self.cursor[0] else 0
        with path.open("rb") as f:
            pos = 0
            while pos < size:
                f.seek(pos)
                head = f.read(HEADER.size)
                if len(head) < HEADER.size:
                    break
                magic, length, crc, lines = HEADER.unpack(head)
                if magic != MAGIC or pos + HEADER.size + length > size:
                    break
                payload = f.read(length)  # every record is checked: a damaged one ends the valid prefix
                if zlib.crc32(payload) != crc:
                    break
                self._merge(json.loads(payload.split(b"\n", 1)[0]))
                if pos >= start:
                    self.unsent_lines += lines
                    self.unsent_bytes += HEADER.size + length
                pos += HEADER.size + length
        if pos < size:
            os.truncate(path, pos)  # a torn append, or pages a power cut lost: produced again
            return False
        return True

    # -- appending ----------------------------------------------------------------------

    def append(self, body: bytes, lines: int, marks: dict[str, int], sync: bool = True) -> None:
        """Append one batch and (by default) fsync it; it counts once this returns."""
        meta = json.dumps(marks, separators=(",", ":")).encode() + b"\n"
        size = HEADER.size + len(meta) + len(body)
        header = HEADER.pack(MAGIC, len(meta) + len(body), zlib.crc32(body, zlib.crc32(meta)), lines)
        if self.end and self.end + size > self.segment_bytes:
            self._roll()
        written = os.writev(self._fd, [header, meta, body])  # no copy of the body into one record
        if written != size:
            raise SpoolError(f"{self._path(self.segment)}: short write ({written} of {size} bytes): disk full?")
        self.dirty = True
        if sync:
            self.sync()
        with self._lock:
            self._cache[(self.segment, self.end)] = Record(self.segment, self.end, self.end + size, lines,
                                                           dict(marks), body)
            self._cached_bytes += len(body)
            while self._cached_bytes > self.cache_bytes and self._cache:
                self._cached_bytes -= len(self._cache.popitem(last=False)[1].body)
            self.end += size
            self.unsent_lines += lines
            self.unsent_bytes += size
            self._merge(marks)

    def _merge(self, marks: dict[str, int]) -> None:
        for key, value in marks.items():  # marks only grow
            self.marks[key] = max(self.marks.get(key, value), value)

    def sync(self) -> None:
        """fsync what was appended with sync=False."""
        self.dirty = False
        os.fsync(self._fd)

    def _roll(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        number = self.segment + 1
        self._fd = os.open(self._path(number), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fsync_dir(self.directory)
        with self._lock:
            self.segment, self.end = number, 0

    # -- sending ------------------------------------------------------------------------

    def next_after(self, position: tuple[int, int]) -> Record | None:
        """The record starting at `position` (or at the next segment's start when that
        segment is used up), None when nothing committed follows it."""
        segment, offset = position
        while True:
            with self._lock:
                last, end = self.segment, self.end
            if segment > last:
                return None
            limit = end if segment == last else self._path(segment).stat().st_size
            if offset < limit:
                return self._read(segment, offset)
            if segment == last:
                return None
            segment, offset = segment + 1, 0

    def _read(self, segment: int, offset: int) -> Record:
        with self._lock:
            cached = self._cache.get((segment, offset))
        if cached is not None:
            return cached
        path = self._path(segment)
        with path.open("rb") as f:
            f.seek(offset)
            magic, length, crc, lines = HEADER.unpack(f.read(HEADER.size))
            payload = f.read(length)
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            raise SpoolError(f"{path}: damaged record at byte {offset}; move the file aside to go on")
        head, _, body = payload.partition(b"\n")
        return Record(segment, offset, offset + HEADER.size + length, lines, json.loads(head), body)

    def ack(self, segment: int, end: int, lines: int, nbytes: int, marks: dict[str, int]) -> None:
        """The server accepted everything before (`segment`, `end`), which brought the sink
        up to `marks`: move the cursor there, then delete the segments before it. The new
        cursor replaces the old one atomically; it is fsync'd at most once a second (and at
        close), so a power cut may take it back up to a second: those batches go again."""
        path = self.directory / "cursor.json"
        tmp = path.with_suffix(".json.tmp")
        durable = time.monotonic() - self._durable_at >= 1.0
        with tmp.open("w") as f:
            f.write(json.dumps({"segment": segment, "offset": end, "marks": marks}) + "\n")
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(self.directory)
            self._durable_at = time.monotonic()
        old = self.cursor[0]
        with self._lock:
            self._merge(marks)
            self.cursor = (segment, end)
            self.unsent_lines -= lines
            self.unsent_bytes -= nbytes
            while self._cache and next(iter(self._cache)) < (segment, end):
                self._cached_bytes -= len(self._cache.popitem(last=False)[1].body)
        for number in range(old, segment):
            self._path(number).unlink(missing_ok=True)

    def close(self) -> None:
        """fsync the cursor, and fsync and close the segment being appended to."""
        cursor = self.directory / "cursor.json"
        if cursor.exists():
            fd = os.open(cursor, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.directory)
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
