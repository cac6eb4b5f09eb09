"""The interval history on disk (format version 1): a contract, documented in
docs/history-format.md and kept stable, because people import real meter exports into it.

A history is a directory:

    topology.json          site, time zone, interval, one column per metered twin
    intervals/YYYY-MM.f32  raw little-endian float32, row-major [interval, column], one file
                           per UTC calendar month; row r starts at month start + r * interval_s
    ground_truth.csv       twin,kind,start,end,params of injected faults and thefts (optional)

A value is the energy (kWh) or volume (m3) measured in the interval; NaN means missing,
never 0. One interval of the whole fleet is one contiguous row, so a live writer appends
it in one write and `numpy.memmap` maps a month without parsing. A trailing partial row
(a torn write) is ignored by readers and cut off by the next writer.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from twin.model import METERED_KINDS, UNIT_OF_UTILITY, UTILITY_OF_KIND, TwinSpec

FORMAT = "metertwin-history"
VERSION = 1
#: Intervals a history may use: each divides a day.
INTERVALS_S = (60, 300, 600, 900, 1800, 3600, 86400)
DTYPE = np.dtype("<f4")
_METERED = {k.value for k in METERED_KINDS}


class HistoryError(ValueError):
    """A history directory or a write to it breaks the format; the message says which
    file or field, and what to do."""


def month_start_utc(t: int) -> int:
    """UTC epoch seconds of the start of the calendar month holding `t`."""
    d = datetime.fromtimestamp(t, tz=UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def next_month_start_utc(t: int) -> int:
    """UTC epoch seconds of the start of the calendar month after the one holding `t`."""
    d = datetime.fromtimestamp(t, tz=UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def month_name(t: int) -> str:
    """'YYYY-MM' of the UTC month holding `t`."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m")


def _month_of_name(name: str) -> int:
    return int(datetime.strptime(name, "%Y-%m").replace(tzinfo=UTC).timestamp())


@dataclass(frozen=True, slots=True)
class Column:
    """One metered twin's column. Example: ``Column("B03-12-02.em", "electric_meter",
    "electric", "kWh", "B03", 12, "B03-12-02", "A-B03-12-02", "B03.mm", "sub")``."""

    id: str  #: twin id, unique in the history
    kind: str  #: electric_meter, water_meter, elevator or shared_circuit
    utility: str  #: electric or water
    unit: str  #: kWh or m3: the unit of every value in the column
    building: str | None = None  #: building id
    floor: int | None = None  #: floor number
    room: str | None = None  #: room id
    account: str | None = None  #: account billed for it
    master: str | None = None  #: id of the master meter feeding it
    role: str = "sub"  #: sub or master

    def __post_init__(self) -> None:
        if self.kind not in _METERED:
            raise HistoryError(f"column {self.id!r}: kind {self.kind!r} is not one of {sorted(_METERED)}")
        if self.utility not in UNIT_OF_UTILITY or self.unit != UNIT_OF_UTILITY[self.utility]:
            raise HistoryError(f"column {self.id!r}: utility {self.utility!r} with unit {self.unit!r}; "
                               "use electric with kWh or water with m3")
        if self.role not in ("sub", "master"):
            raise HistoryError(f"column {self.id!r}: role must be 'sub' or 'master', not {self.role!r}")


COLUMN_FIELDS = tuple(f.name for f in fields(Column))


@dataclass(slots=True)
class Topology:
    """What the columns of a history are. Example: ``Topology("XA01", "Asia/Shanghai", 900,
    [Column(...), ...])``."""

    site: str  #: site id
    timezone: str  #: IANA zone of the site (days and billing periods use it)
    interval_s: int  #: seconds per interval; one of INTERVALS_S
    columns: list[Column] = field(default_factory=list)  #: column i of every matrix file
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.interval_s not in INTERVALS_S:
            raise HistoryError(f"interval_s {self.interval_s} must be one of {INTERVALS_S} "
                               "(an interval divides a day)")
        self._index = {}
        for i, column in enumerate(self.columns):
            if column.id in self._index:
                raise HistoryError(f"column id {column.id!r} appears twice (columns {self._index[column.id]} and {i})")
            self._index[column.id] = i

    @classmethod
    def from_twins(cls, site: str, timezone: str, interval_s: int, twins: list[TwinSpec]) -> Topology:
        """The topology of a site's metered twins, in site order (valves are left out)."""
        columns = [
            Column(t.id, t.kind.value, UTILITY_OF_KIND[t.kind], UNIT_OF_UTILITY[UTILITY_OF_KIND[t.kind]],
                   t.building, t.floor, t.room, t.account, t.master, t.role)
            for t in twins if t.kind in METERED_KINDS
        ]
        return cls(site, timezone, interval_s, columns)

    @property
    def ids(self) -> list[str]:
        """Column ids in order."""
        return [c.id for c in self.columns]

    def index_of(self, twin_id: str) -> int:
        """The column of a twin; KeyError names it when absent."""
        try:
            return self._index[twin_id]
        except KeyError:
            raise KeyError(f"no column {twin_id!r} in this history") from None

    def to_json(self) -> str:
        """The topology.json text: the header fields, then one column per line (readable,
        and fast to write for 100,000 columns)."""
        head = json.dumps({"format": FORMAT, "version": VERSION, "site": self.site, "timezone": self.timezone,
                           "interval_s": self.interval_s}, ensure_ascii=False)
        columns = ",\n  ".join(
            json.dumps({name: getattr(c, name) for name in COLUMN_FIELDS}, ensure_ascii=False) for c in self.columns)
        return head[:-1] + ', "columns": [\n  ' + columns + "\n]}\n"

    @classmethod
    def from_json(cls, text: str, source: str = "topology.json") -> Topology:
        """Parse topology.json text; HistoryError names the field that is wrong."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise HistoryError(f"{source}:{err.lineno}: not valid JSON: {err.msg}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise HistoryError(f"{source}: 'format' must be {FORMAT!r}")
        if doc.get("version") != VERSION:
            raise HistoryError(f"{source}: version {doc.get('version')!r} is not supported "
                               f"(this MeterTwin reads version {VERSION})")
        for key in ("site", "timezone", "interval_s", "columns"):
            if key not in doc:
                raise HistoryError(f"{source}: missing field {key!r}")
        columns = []
        for i, raw in enumerate(doc["columns"]):
            try:
                columns.append(Column(**raw))
            except TypeError as err:
                raise HistoryError(f"{source}: columns[{i}]: {err}") from None
            except HistoryError as err:
                raise HistoryError(f"{source}: columns[{i}]: {err}") from None
        try:
            return cls(doc["site"], doc["timezone"], int(doc["interval_s"]), columns)
        except HistoryError as err:
            raise HistoryError(f"{source}: {err}") from None


@dataclass(frozen=True, slots=True)
class TruthEvent:
    """One injected fault or theft. Example: ``TruthEvent("B01-07-03.em", "h1",
    1767225600, 1767830400, {"factor": 0.4, "hidden": 12.5})``."""

    twin: str  #: twin id
    kind: str  #: injection kind
    start: int  #: UTC epoch seconds of the window's start
    end: int | None  #: UTC epoch seconds of its end, None if it outlasts the data
    params: dict[str, Any] = field(default_factory=dict)  #: parameters and figures


def _iso(t: int | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str, where: str) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise HistoryError(f"{where}: {text!r} is not an ISO-8601 UTC time like 2026-01-03T12:00:00Z") from None


def write_ground_truth(directory: str | os.PathLike[str], events: list[TruthEvent]) -> None:
    """Write ground_truth.csv, sorted by start, twin and kind."""
    rows = sorted(events, key=lambda e: (e.start, e.twin, e.kind))
    path = Path(directory) / "ground_truth.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["twin", "kind", "start", "end", "params"])
        for e in rows:
            writer.writerow([e.twin, e.kind, _iso(e.start), _iso(e.end), json.dumps(e.params, sort_keys=True)])


def read_ground_truth(directory: str | os.PathLike[str]) -> list[TruthEvent]:
    """Read ground_truth.csv; an absent file is an empty truth (real data has none)."""
    path = Path(directory) / "ground_truth.csv"
    if not path.exists():
        return []
    events = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        for n, row in enumerate(reader, start=2):
            where = f"{path}:{n}"
            try:
                params = json.loads(row["params"] or "{}")
                start = _epoch(row["start"], where)
            except (KeyError, json.JSONDecodeError) as err:
                raise HistoryError(f"{where}: bad row ({err}); header is twin,kind,start,end,params") from None
            if start is None:
                raise HistoryError(f"{where}: start is empty")
            events.append(TruthEvent(row["twin"], row["kind"], start, _epoch(row["end"], where), params))
    return events


def read_first_row(directory: str | os.PathLike[str], month: str) -> int:
    """The month row a month file starts at: `intervals/YYYY-MM.json` {"first_row": r},
    0 when that file is absent (a file holding the whole month needs none)."""
    path = Path(directory) / "intervals" / f"{month}.json"
    if not path.exists():
        return 0
    try:
        first = json.loads(path.read_text())["first_row"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise HistoryError(f"{path}: expected {{\"first_row\": N}}; delete it if {month}.f32 "
                           "starts at the month's first interval") from None
    if not isinstance(first, int) or first < 0:
        raise HistoryError(f"{path}: first_row must be a whole number >= 0, not {first!r}")
    return first


def _write_first_row(directory: Path, month: str, first: int) -> None:
    path = directory / "intervals" / f"{month}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"first_row": first}) + "\n")
    os.replace(tmp, path)


class HistoryWriter:
    """Writes rows of a history. Example::

        with HistoryWriter("out/run", topology) as writer:
            writer.append(first_start_utc, block)   # block: [intervals, columns] float32

    Rows land at their place: appends at a month file's end are one write; earlier or
    later rows (late readings, gaps) are written in place, gaps filled with NaN.
    """

    def __init__(self, directory: str | os.PathLike[str], topology: Topology) -> None:
        self.directory = Path(directory)
        self.topology = topology
        self.interval_s = topology.interval_s
        self.row_bytes = len(topology.columns) * DTYPE.itemsize
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "intervals").mkdir(exist_ok=True)
        path = self.directory / "topology.json"
        text = topology.to_json()
        if path.exists():
            existing = Topology.from_json(path.read_text(), str(path))
            if existing != topology:
                raise HistoryError(f"{path} holds another topology (site {existing.site}, "
                                   f"{len(existing.columns)} columns, {existing.interval_s}s); "
                                   "write to a new directory")
        else:
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        self._files: dict[str, tuple[int, int]] = {}  # month name -> (fd, first row)

    def _open(self, month: str, first_row: int) -> tuple[int, int]:
        """(fd, first row held) of a month file, creating it to start at `first_row`."""
        if month in self._files:
            return self._files[month]
        path = self.directory / "intervals" / f"{month}.f32"
        if path.exists():
            first = read_first_row(self.directory, month)
        else:  # the start row is recorded before the first byte lands
            first = first_row
            if first:
                _write_first_row(self.directory, month, first)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        if size % self.row_bytes:  # a torn last row: cut it off
            os.ftruncate(fd, size - size % self.row_bytes)
        self._files[month] = (fd, first)
        return fd, first

    def append(self, first_start_utc: int, block: np.ndarray) -> None:
        """Write `block` ([intervals, columns]) with its first row at `first_start_utc`."""
        n_cols = len(self.topology.columns)
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != n_cols:
            raise HistoryError(f"block shape {block.shape} does not fit [intervals, {n_cols} columns]")
        if first_start_utc % self.interval_s:
            raise HistoryError(f"start {first_start_utc} is not on a {self.interval_s}s interval boundary")
        data = np.ascontiguousarray(block, dtype=DTYPE)
        t, i = first_start_utc, 0
        while i < data.shape[0]:
            month0 = month_start_utc(t)
            rows_left_in_month = (next_month_start_utc(t) - t) // self.interval_s
            take = min(rows_left_in_month, data.shape[0] - i)
            self._write_rows(month_name(t), (t - month0) // self.interval_s, data[i:i + take])
            i += take
            t += take * self.interval_s

    def _write_rows(self, month: str, row: int, rows: np.ndarray) -> None:
        fd, first = self._open(month, row)
        if row < first:
            fd, first = self._rebase(month, row)
        size = os.fstat(fd).st_size
        have = first + size // self.row_bytes
        if row > have:  # fill the gap with NaN so missing reads as missing
            gap = np.full((row - have, rows.shape[1]), np.nan, dtype=DTYPE)
            os.pwrite(fd, gap.tobytes(), (have - first) * self.row_bytes)
        payload = rows.tobytes()
        written = os.pwrite(fd, payload, (row - first) * self.row_bytes)
        if written != len(payload):
            raise HistoryError(f"short write to {month}.f32 ({written} of {len(payload)} bytes): disk full?")

    def _rebase(self, month: str, row: int) -> tuple[int, int]:
        """Readings older than a month file's first row: rewrite the file to start at `row`.
        Rare (a backfill of an earlier part of a month); not atomic against a crash."""
        fd, first = self._files.pop(month)
        path = self.directory / "intervals" / f"{month}.f32"
        old = np.fromfile(path, dtype=DTYPE)
        os.close(fd)
        gap = np.full((first - row) * len(self.topology.columns), np.nan, dtype=DTYPE)
        tmp = path.with_suffix(".f32.tmp")
        np.concatenate([gap, old]).tofile(tmp)
        os.replace(tmp, path)
        _write_first_row(self.directory, month, row)
        return self._open(month, row)

    def flush(self) -> None:
        """Make every written row durable (fsync)."""
        for fd, _ in self._files.values():
            os.fsync(fd)

    def close(self) -> None:
        """Close the month files."""
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class History:
    """A history directory opened for reading. Example::

        h = open_history("out/demo")
        matrix = h.read(h.start, h.end)          # [columns, intervals], NaN = missing
        one = h.read(t0, t1, columns=["B01.mm"])
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        path = self.directory / "topology.json"
        if not path.exists():
            raise HistoryError(f"{self.directory} is not a history: no topology.json "
                               "(see docs/history-format.md)")
        self.topology = Topology.from_json(path.read_text(), str(path))
        self.interval_s = self.topology.interval_s
        self.row_bytes = len(self.topology.columns) * DTYPE.itemsize

    def months(self) -> list[str]:
        """Names ('YYYY-MM') of the month files, in order."""
        folder = self.directory / "intervals"
        if not folder.exists():
            return []
        return sorted(p.stem for p in folder.glob("*.f32"))

    def _rows_in(self, month: str) -> int:
        size = (self.directory / "intervals" / f"{month}.f32").stat().st_size
        return size // self.row_bytes if self.row_bytes else 0

    def _map(self, month: str) -> tuple[int, np.ndarray] | None:
        """(first row, [rows, columns] memmap) of a month file, None when it holds none."""
        rows = self._rows_in(month)
        if rows == 0:
            return None
        path = self.directory / "intervals" / f"{month}.f32"
        matrix = np.memmap(path, dtype=DTYPE, mode="r", shape=(rows, len(self.topology.columns)))
        return read_first_row(self.directory, month), matrix

    @property
    def start(self) -> int | None:
        """UTC start of the first interval holding any reading, None when empty."""
        for month in self.months():
            mapped = self._map(month)
            if mapped is None:
                continue
            first, m = mapped
            for r0 in range(0, m.shape[0], 256):  # stop at the first written row
                written = np.flatnonzero(~np.all(np.isnan(m[r0:r0 + 256]), axis=1))
                if written.size:
                    return _month_of_name(month) + (first + r0 + int(written[0])) * self.interval_s
        return None

    @property
    def end(self) -> int | None:
        """UTC end of the last written interval (exclusive), None when empty."""
        for month in reversed(self.months()):
            rows = self._rows_in(month)
            if rows:
                return _month_of_name(month) + (read_first_row(self.directory, month) + rows) * self.interval_s
        return None

    def times(self, start: int, end: int) -> np.ndarray:
        """Start times (UTC epoch seconds) of the intervals in [start, end)."""
        return np.arange(start, end, self.interval_s, dtype=np.int64)

    def read_rows(self, start: int, end: int) -> np.ndarray:
        """[intervals, columns] float32 for [start, end), NaN where nothing was written."""
        if start % self.interval_s or end % self.interval_s:
            raise HistoryError(f"[{start}, {end}) is not on {self.interval_s}s interval boundaries")
        n = max((end - start) // self.interval_s, 0)
        out = np.full((n, len(self.topology.columns)), np.nan, dtype=DTYPE)
        t = start
        while t < end:
            month0, month1 = month_start_utc(t), next_month_start_utc(t)
            stop = min(end, month1)
            path = self.directory / "intervals" / f"{month_name(t)}.f32"
            mapped = self._map(month_name(t)) if path.exists() else None
            if mapped is not None:
                first, m = mapped
                r0, r1 = (t - month0) // self.interval_s, (stop - month0) // self.interval_s
                f0, f1 = max(r0 - first, 0), min(r1 - first, m.shape[0])
                if f1 > f0:
                    o = (first + f0 - r0) + (t - start) // self.interval_s
                    out[o:o + (f1 - f0)] = m[f0:f1]
            t = stop
        return out

    def read(self, start: int, end: int, columns: list[str] | list[int] | None = None) -> np.ndarray:
        """[columns, intervals] float32 for [start, end): the kernels' view. `columns` picks
        twins by id or index, in the order given."""
        rows = self.read_rows(start, end)
        if columns is not None:
            index = [c if isinstance(c, int | np.integer) else self.topology.index_of(c) for c in columns]
            rows = rows[:, index]
        return np.ascontiguousarray(rows.T)

    def ground_truth(self) -> list[TruthEvent]:
        """The ground truth of the history, empty when it has none."""
        return read_ground_truth(self.directory)


def open_history(directory: str | os.PathLike[str]) -> History:
    """Open a history directory for reading; HistoryError says what is wrong with it."""
    return History(directory)


__all__ = [
    "Column", "History", "HistoryError", "HistoryWriter", "Topology", "TruthEvent", "open_history",
    "read_ground_truth", "write_ground_truth", "month_start_utc", "next_month_start_utc",
]
