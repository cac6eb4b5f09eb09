"""The interval history on disk (format version 1): a contract, documented in
docs/history-format.md and kept stable, because people import real meter exports into it.

A history is a directory:

    topology.json          site, time zone, interval, one column per metered twin
    intervals/YYYY-MM.f32  raw little-endian float32, row-major [interval, column], one file
                           per UTC calendar month; row r starts at month start + r * interval_s
    intervals/YYYY-MM.json {"first_row": N} when the month file starts after row 0
    rollups/LEVEL/YYYY-MM.f32, .missing.u16
                           sums per 15 min, hour and UTC day (and missing counts) of a month
                           whose raw readings left the retention window (optional)
    ground_truth.csv       twin,kind,start,end,params of injected faults and thefts (optional)

A value is the energy (kWh) or volume (m3) measured in the interval; NaN means missing,
never 0. One interval of the whole fleet is one contiguous row, so a live writer appends
it in one write and `numpy.memmap` maps a month without parsing. A trailing partial row
(a torn write) is ignored by readers and cut off by the next writer. Late readings land
cell by cell (`HistoryWriter.write_cells`); reads say their interval (`History.read`'s
`interval_s`, `read_finest`) and sum to coarser ones, NaN only where all are missing.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import operator
import os
import threading
from collections.abc import Sequence
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


@functools.lru_cache(maxsize=4096)
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
        encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps makes one per call
        fields_of = operator.attrgetter(*COLUMN_FIELDS)
        columns = ",\n  ".join(encode(dict(zip(COLUMN_FIELDS, fields_of(c), strict=True))) for c in self.columns)
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


# -- month files: intervals/YYYY-MM.f32 and its first_row sidecar ------------------------------

def _sidecar_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise TypeError
        first = doc["first_row"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise HistoryError(f"{path}: expected {{\"first_row\": N}}; delete it if {path.stem}.f32 "
                           "starts at the month's first interval") from None
    if not isinstance(first, int) or first < 0:
        raise HistoryError(f"{path}: first_row must be a whole number >= 0, not {first!r}")
    rebase = doc.get("rebase")
    if rebase is not None and not (isinstance(rebase, dict) and isinstance(rebase.get("first_row"), int)
                                   and isinstance(rebase.get("rows"), int)):
        raise HistoryError(f"{path}: rebase must be {{\"first_row\": N, \"rows\": N}}, not {rebase!r}")
    return doc


def read_first_row(directory: str | os.PathLike[str], month: str, row_bytes: int | None = None) -> int:
    """The month row a month file starts at: `intervals/YYYY-MM.json` {"first_row": r},
    0 when that file is absent (a file holding the whole month needs none).

    A sidecar that also holds ``"rebase": {"first_row": b, "rows": n}`` records a rebase that a
    writer was killed in: the month file starts at b once it holds n rows (the rebased file is
    in place), at r before. `row_bytes` (4 x columns) comes from topology.json when not given."""
    path = Path(directory) / "intervals" / f"{month}.json"
    if not path.exists():
        return 0
    doc = _sidecar_doc(path)
    rebase = doc.get("rebase")
    if rebase is None:
        return int(doc["first_row"])
    if row_bytes is None:
        topology_path = Path(directory) / "topology.json"
        row_bytes = len(Topology.from_json(topology_path.read_text(), str(topology_path)).columns) * DTYPE.itemsize
    f32 = path.with_suffix(".f32")
    size = f32.stat().st_size if f32.exists() else 0
    return int(rebase["first_row"]) if row_bytes and size >= rebase["rows"] * row_bytes else int(doc["first_row"])


def _replace_text(path: Path, text: str) -> None:
    """Write a small file whole or not at all (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_sidecar(directory: Path, month: str, doc: dict[str, Any]) -> None:
    _replace_text(directory / "intervals" / f"{month}.json", json.dumps(doc) + "\n")


def _write_first_row(directory: Path, month: str, first: int) -> None:
    _write_sidecar(directory, month, {"first_row": first})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- roll-ups: rollups/<level>/YYYY-MM.f32 and .missing.u16 ----------------------------------

#: Levels a month is kept at once its raw readings leave the retention window (15 min, hour,
#: UTC day); a history keeps those that are multiples of its own interval.
ROLLUP_LEVELS_S = (900, 3600, 86400)
#: Days of raw readings a writer keeps by default (reckoned back from the newest reading).
DEFAULT_RAW_DAYS = 400
MISSING_DTYPE = np.dtype("<u2")
_CHUNK_BYTES = 64 << 20  # bound on the temporaries of one resampling step


def rollup_levels(interval_s: int) -> tuple[int, ...]:
    """The roll-up levels of a history of `interval_s`: those of ROLLUP_LEVELS_S it divides."""
    return tuple(level for level in ROLLUP_LEVELS_S if level >= interval_s and level % interval_s == 0)


def _rollup_path(directory: Path, level: int, month: str, missing: bool = False) -> Path:
    return directory / "rollups" / str(level) / (f"{month}.missing.u16" if missing else f"{month}.f32")


def _sum_intervals(x: np.ndarray, k: int, missing: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum each run of `k` rows of `x` ([n * k, c] float32): (sums [n, c] float32, missing
    counts [n, c] uint16). A sum skips NaN and is NaN only when all its k cells are NaN; it
    is taken in float64 and rounded to float32 once. `missing` ([n * k, c]) holds the counts
    of rows that are themselves sums (roll-ups); without it a NaN cell counts as 1 missing."""
    if k == 1:  # a level equal to the interval: the cells themselves
        return np.array(x, dtype=DTYPE), (np.isnan(x) if missing is None else missing).astype(MISSING_DTYPE)
    from twin.kernels.rollup import sum_intervals  # numba: compiled (or loaded) on first use only

    n, c = x.shape[0] // k, x.shape[1]
    sums = np.empty((n, c), dtype=DTYPE)
    counts = np.empty((n, c), dtype=MISSING_DTYPE)
    cells = np.ascontiguousarray(x, dtype=DTYPE)
    given = np.ascontiguousarray(missing, dtype=MISSING_DTYPE) if missing is not None else \
        np.zeros((0, c), dtype=MISSING_DTYPE)
    sum_intervals(cells, k, given, missing is not None, sums, counts)
    return sums, counts


@dataclass(frozen=True, slots=True)
class CellWrites:
    """What `HistoryWriter.write_cells` did. Example: ``CellWrites(filled=3, same=1, changed=0,
    skipped=2)``."""

    filled: int  #: cells that were missing (NaN) and now hold the reading
    same: int  #: cells that already held that exact value (a duplicate: nothing written)
    changed: int  #: cells that held another value, now replaced (last write wins)
    skipped: int  #: NaN readings passed in: a missing reading never erases one


class HistoryWriter:
    """Writes rows and cells of a history, and rolls months that leave the raw window up.
    One writer per history at a time. Example::

        with HistoryWriter("out/run", topology) as writer:
            writer.append(first_start_utc, block)   # block: [intervals, columns] float32
            writer.write_cells(["B01-01-01.em"], [late_start_utc], [0.42])

    Rows land at their place: appends at a month file's end are one write; earlier or
    later rows (gaps, replays) are written in place, gaps filled with NaN. A writer killed at
    any moment leaves every complete row readable; a torn last row is cut off by the next.

    Raw readings are kept for `raw_days` days back from the newest reading (None: forever);
    a month wholly older than that is rolled up (see `roll_up`) when the writer opens and
    whenever it starts a new month file. With `background=True` (the live platform) a month
    that leaves the window while writing is rolled up in a thread of its own, so appends
    never wait for it; writes into a month being rolled up are refused as for a rolled one,
    and `close` waits for the roll-up to finish (and rolls up what fell due meanwhile).
    """

    def __init__(self, directory: str | os.PathLike[str], topology: Topology, *,
                 raw_days: int | None = DEFAULT_RAW_DAYS, background: bool = False) -> None:
        if raw_days is not None and raw_days < 1:
            raise HistoryError(f"raw_days must be at least 1 (or None to keep raw readings forever), not {raw_days}")
        self.directory = Path(directory)
        self.topology = topology
        self.interval_s = topology.interval_s
        self.raw_days = raw_days
        self.row_bytes = len(topology.columns) * DTYPE.itemsize
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "intervals").mkdir(exist_ok=True)
        path = self.directory / "topology.json"
        if path.exists():
            existing = Topology.from_json(path.read_text(), str(path))
            if existing != topology:
                raise HistoryError(f"{path} holds another topology (site {existing.site}, "
                                   f"{len(existing.columns)} columns, {existing.interval_s}s); "
                                   "write to a new directory")
        else:
            _replace_text(path, topology.to_json())
        self._files: dict[str, tuple[int, int]] = {}  # month name -> (fd, first row)
        self.background = background
        self._rolling: frozenset[str] = frozenset()  # months a background roll-up is working on
        self._roller: threading.Thread | None = None
        #: the error of the last background roll-up, if it failed (the month stays raw and is
        #: rolled up again by the next writer to open the history)
        self.roll_up_error: BaseException | None = None
        self._month = (0, 0, "")  # (start, end, name) of the month last appended to
        for sidecar in sorted((self.directory / "intervals").glob("*.json")):
            if "rebase" in _sidecar_doc(sidecar):  # a writer was killed rebasing this month: settle it
                _write_first_row(self.directory, sidecar.stem, read_first_row(self.directory, sidecar.stem,
                                                                              self.row_bytes))
                sidecar.with_suffix(".f32.tmp").unlink(missing_ok=True)
        self._history = History(self.directory, topology)
        self._end = self._history.end or 0  # end of the newest interval written: "now" for retention
        self._roll_due = 0  # the _end at which the oldest raw month leaves the window
        self.roll_up()

    def _open(self, month: str, first_row: int) -> tuple[int, int]:
        """(fd, first row held) of a month file, creating it to start at `first_row`."""
        if month in self._files:
            return self._files[month]
        if month in self._rolling:
            raise HistoryError(f"{month}: its raw readings left the {self.raw_days}-day window and are being "
                               f"rolled up (rollups/); a reading for it cannot land any more")
        path = self.directory / "intervals" / f"{month}.f32"
        sidecar = path.with_suffix(".json")
        if path.exists():
            first = read_first_row(self.directory, month, self.row_bytes)
        else:
            if self._history.month_interval(month) is not None:
                raise HistoryError(f"{month}: its raw readings left the {self.raw_days}-day window and were rolled "
                                   f"up (rollups/); a reading for it cannot land any more")
            first = first_row
            if first:  # the start row is recorded before the first byte lands
                _write_first_row(self.directory, month, first)
            else:  # a sidecar left by a writer killed before its file's first byte
                sidecar.unlink(missing_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if self.raw_days is not None:  # a new month may be the oldest raw one
            self._roll_due = min(self._roll_due, next_month_start_utc(_month_of_name(month)) + self.raw_days * 86400)
        size = os.fstat(fd).st_size
        if size % self.row_bytes:  # a torn last row: cut it off
            os.ftruncate(fd, size - size % self.row_bytes)
        self._files[month] = (fd, first)
        return fd, first

    def append(self, first_start_utc: int, block: np.ndarray) -> None:
        """Write `block` ([intervals, columns]) with its first row at `first_start_utc`. Whole
        rows: the block's values replace what those rows held, NaN included (so writing the
        same block again changes nothing)."""
        n_cols = len(self.topology.columns)
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != n_cols:
            raise HistoryError(f"block shape {block.shape} does not fit [intervals, {n_cols} columns]")
        if first_start_utc % self.interval_s:
            raise HistoryError(f"start {first_start_utc} is not on a {self.interval_s}s interval boundary")
        data = np.ascontiguousarray(block, dtype=DTYPE)
        t, i = first_start_utc, 0
        while i < data.shape[0]:
            if not self._month[0] <= t < self._month[1]:  # a live writer stays in one month for weeks
                self._month = (month_start_utc(t), next_month_start_utc(t), month_name(t))
            month0, month1, name = self._month
            take = min((month1 - t) // self.interval_s, data.shape[0] - i)
            self._write_rows(name, (t - month0) // self.interval_s, data[i:i + take])
            i += take
            t += take * self.interval_s

    def _cover(self, month: str, low: int, high: int) -> tuple[int, int]:
        """(fd, first row) of a month file holding rows `low` .. `high` - 1 at least: rebased
        to start at `low` if it starts later, NaN rows added at its end up to `high`."""
        fd, first = self._open(month, low)
        if low < first:
            fd, first = self._rebase(month, low)
        have = first + os.fstat(fd).st_size // self.row_bytes
        if high > have:
            self._write_nan_rows(fd, (have - first) * self.row_bytes, high - have)
        return fd, first

    def _write_nan_rows(self, fd: int, offset: int, rows: int) -> None:
        per = max(1, _CHUNK_BYTES // max(self.row_bytes, 1))
        chunk = np.full((min(per, rows), len(self.topology.columns)), np.nan, dtype=DTYPE).tobytes()
        while rows > 0:
            n = min(per, rows)
            self._pwrite(fd, chunk[:n * self.row_bytes], offset)
            offset += n * self.row_bytes
            rows -= n

    def _pwrite(self, fd: int, payload: bytes | memoryview, offset: int) -> None:
        written = os.pwrite(fd, payload, offset)
        if written != len(payload):
            raise HistoryError(f"short write to {self.directory / 'intervals'} ({written} of {len(payload)} bytes): "
                               "disk full?")

    def _write_rows(self, month: str, row: int, rows: np.ndarray) -> None:
        fd, first = self._open(month, row)
        if row < first:
            fd, first = self._rebase(month, row)
        have = first + os.fstat(fd).st_size // self.row_bytes
        if row > have:  # fill the gap with NaN so missing reads as missing
            self._write_nan_rows(fd, (have - first) * self.row_bytes, row - have)
        self._pwrite(fd, rows.data.cast("B"), (row - first) * self.row_bytes)
        self._advance(_month_of_name(month) + (row + rows.shape[0]) * self.interval_s)

    def _advance(self, end: int) -> None:
        """Note that readings reach `end`; roll up the months that leaves behind the window."""
        self._end = max(self._end, end)
        if self.raw_days is not None and self._end >= self._roll_due:
            if self.background:
                self._roll_up_in_background()
            else:
                self.roll_up()

    def _roll_up_in_background(self) -> None:
        """Start a thread rolling up the months that left the window (one thread at a time:
        months that leave it meanwhile wait for the next new month file or the next open)."""
        if self._roller is not None and self._roller.is_alive():
            return
        months = self._due_months(None)
        if not months:
            return
        for month in months:  # the writer lets go of them here; the thread owns them now
            if month in self._files:
                os.close(self._files.pop(month)[0])
        self._rolling = frozenset(months)
        levels = rollup_levels(self.interval_s)

        def run() -> None:
            try:
                for month in months:
                    self._roll_up_month(month, levels)
            except BaseException as exc:  # noqa: BLE001 - kept for the owner; the raw month stays
                self.roll_up_error = exc
                logging.getLogger(__name__).exception("history %s: rolling up %s failed; the raw months stay "
                                                      "and are rolled up when the history is next opened",
                                                      self.directory, ", ".join(months))
            finally:
                self._rolling = frozenset()

        self._roller = threading.Thread(target=run, name="history-roll-up", daemon=True)
        self._roller.start()

    def _due_months(self, now_utc: int | None) -> list[str]:
        """The raw months wholly `raw_days` or more before `now_utc` (default: the newest
        reading's end); sets when the next one falls due."""
        window = (self.raw_days or 0) * 86400
        horizon = (self._end if now_utc is None else now_utc) - window
        due = []
        self._roll_due = 2**62
        for month in self._history.months():
            if month in self._rolling:
                continue
            month_end = next_month_start_utc(_month_of_name(month))
            if month_end <= horizon:
                due.append(month)
            else:
                self._roll_due = min(self._roll_due, month_end + window)
        return due

    def _rebase(self, month: str, row: int) -> tuple[int, int]:
        """Readings older than a month file's first row: rewrite the file to start at `row`.
        Rare (a backfill of an earlier part of a month). Crash-safe: the sidecar first records
        the rebase and the row count of the rebased file, which then replaces the old one by a
        rename; readers take the new first row once the file has that many rows."""
        fd, first = self._files.pop(month)
        path = self.directory / "intervals" / f"{month}.f32"
        old_bytes = os.fstat(fd).st_size  # whole rows: _open cut any torn one
        new_rows = old_bytes // self.row_bytes + first - row
        _write_sidecar(self.directory, month, {"first_row": first, "rebase": {"first_row": row, "rows": new_rows}})
        tmp = path.with_suffix(".f32.tmp")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._write_nan_rows(out, 0, first - row)
            copied = 0
            while copied < old_bytes:
                chunk = os.pread(fd, min(_CHUNK_BYTES, old_bytes - copied), copied)
                if not chunk:
                    raise HistoryError(f"{path} shrank while being rebased")
                self._pwrite(out, chunk, (first - row) * self.row_bytes + copied)
                copied += len(chunk)
            os.fsync(out)
        finally:
            os.close(out)
            os.close(fd)
        os.replace(tmp, path)
        _write_first_row(self.directory, month, row)
        return self._open(month, row)

    def _column_indices(self, columns: Sequence[str | int] | np.ndarray) -> np.ndarray:
        n_cols = len(self.topology.columns)
        if isinstance(columns, np.ndarray) and columns.dtype.kind in "iu":
            index = columns.astype(np.int64).reshape(-1)
        else:
            index = np.empty(len(columns), dtype=np.int64)
            for i, c in enumerate(columns):
                try:
                    index[i] = c if isinstance(c, int | np.integer) else self.topology._index[c]
                except KeyError:
                    raise HistoryError(f"columns[{i}]: no twin {c!r} in this history") from None
        bad = np.flatnonzero((index < 0) | (index >= n_cols))
        if bad.size:
            raise HistoryError(f"columns[{bad[0]}] = {index[bad[0]]} is not a column (there are {n_cols})")
        return index

    def write_cells(self, columns: Sequence[str | int] | np.ndarray, starts: Sequence[int] | np.ndarray,
                    values: Sequence[float] | np.ndarray) -> CellWrites:
        """Land single readings, in any order: `values[i]` for twin `columns[i]` (id or column
        index) in the interval starting at `starts[i]` (UTC epoch seconds). A reading fills a
        missing cell; the same value again changes nothing; another value replaces it (last
        write wins, counted as `changed`); a NaN reading is skipped, never erasing one. Within
        one call the last of several readings for a cell wins. Rows past a month file's end
        are added as NaN first. A month already rolled up refuses the whole call (nothing is
        written). A writer killed midway leaves each cell either as it was or as written."""
        index = self._column_indices(columns)
        times = np.asarray(starts, dtype=np.int64).reshape(-1)
        readings = np.asarray(values, dtype=DTYPE).reshape(-1)
        if not len(index) == len(times) == len(readings):
            raise HistoryError(f"write_cells: {len(index)} columns, {len(times)} starts and {len(readings)} values; "
                               "give one of each per reading")
        bad = np.flatnonzero(times % self.interval_s)
        if bad.size:
            raise HistoryError(f"starts[{bad[0]}] = {times[bad[0]]} is not on a {self.interval_s}s interval boundary")
        given = ~np.isnan(readings)
        skipped = int(len(readings) - given.sum())
        index, times, readings = index[given], times[given], readings[given]
        key = (times // self.interval_s) * len(self.topology.columns) + index
        _, last = np.unique(key[::-1], return_index=True)  # the last reading of a cell wins
        keep = np.sort(len(key) - 1 - last)
        index, times, readings = index[keep], times[keep], readings[keep]
        months = times.astype("datetime64[s]").astype("datetime64[M]")
        names = [str(m) for m in np.unique(months)]
        for name in names:
            if name in self._rolling or not (self.directory / "intervals" / f"{name}.f32").exists() and \
                    self._history.month_interval(name) is not None:
                raise HistoryError(f"{name}: its raw readings left the {self.raw_days}-day window and were rolled up "
                                   "(rollups/); late readings for it cannot land any more; nothing was written")
        filled = same = changed = 0
        for name in names:
            pick = months == np.datetime64(name, "M")
            rows = (times[pick] - _month_of_name(name)) // self.interval_s
            fd, first = self._cover(name, int(rows.min()), int(rows.max()) + 1)
            held = os.fstat(fd).st_size // self.row_bytes
            path = self.directory / "intervals" / f"{name}.f32"
            matrix = np.memmap(path, dtype=DTYPE, mode="r+", shape=(held, len(self.topology.columns)))
            r, c, v = rows - first, index[pick], readings[pick]
            old = matrix[r, c]
            was_nan = np.isnan(old)
            equal = old == v
            write = ~equal
            matrix[r[write], c[write]] = v[write]
            del matrix  # unmapped: the page cache holds the cells, as it holds pwrite's rows
            self._advance(_month_of_name(name) + (int(rows.max()) + 1) * self.interval_s)
            filled += int(was_nan.sum())
            same += int(equal.sum())
            changed += int((write & ~was_nan).sum())
        return CellWrites(filled, same, changed, skipped)

    def roll_up(self, now_utc: int | None = None) -> list[str]:
        """Roll up every raw month that ends `raw_days` days or more before `now_utc` (default:
        the end of the newest interval written): write its roll-up levels, then delete its raw
        file. Returns the months rolled up. Crash-safe: each level is written whole under a
        temporary name and renamed; the raw file goes last, so a writer killed midway leaves
        the raw month, which the next writer rolls up again."""
        levels = rollup_levels(self.interval_s)
        if self.raw_days is None or not levels:
            self._roll_due = 2**62
            return []
        self.wait_roll_up()
        done = self._due_months(now_utc)
        for month in done:
            self._roll_up_month(month, levels)
        return done

    def wait_roll_up(self) -> None:
        """Wait for a background roll-up to finish (at once when none runs)."""
        if self._roller is not None:
            self._roller.join()
            self._roller = None

    def _roll_up_month(self, month: str, levels: tuple[int, ...]) -> None:
        if month in self._files:
            os.close(self._files.pop(month)[0])
        month0 = _month_of_name(month)
        month1 = next_month_start_utc(month0)
        paths = []  # (folder, sums, missing, sums tmp, missing tmp) per level
        for level in levels:
            folder = self.directory / "rollups" / str(level)
            folder.mkdir(parents=True, exist_ok=True)
            sums_path = _rollup_path(self.directory, level, month)
            missing_path = _rollup_path(self.directory, level, month, missing=True)
            paths.append((folder, sums_path, missing_path, sums_path.with_name(sums_path.name + ".tmp"),
                          missing_path.with_name(missing_path.name + ".tmp")))
        with contextlib.ExitStack() as stack:
            files = [(stack.enter_context(p[3].open("wb")), stack.enter_context(p[4].open("wb"))) for p in paths]
            for day in range(month0, month1, 86400):  # each raw day read once, summed to every level
                raw = self._history._read(day, day + 86400, None, self.interval_s)[0]
                for level, (sums_file, missing_file) in zip(levels, files, strict=True):
                    sums, missing = _sum_intervals(raw, level // self.interval_s)
                    sums_file.write(sums.data.cast("B"))
                    missing_file.write(missing.data.cast("B"))
            for pair in files:
                for f in pair:
                    f.flush()
                    os.fsync(f.fileno())
        for folder, sums_path, missing_path, sums_tmp, missing_tmp in paths:
            os.replace(missing_tmp, missing_path)  # the counts first: a level exists once its sums do
            os.replace(sums_tmp, sums_path)
            _fsync_dir(folder)
        self._history._maps.pop(month, None)
        (self.directory / "intervals" / f"{month}.f32").unlink()
        (self.directory / "intervals" / f"{month}.json").unlink(missing_ok=True)
        _fsync_dir(self.directory / "intervals")

    def flush(self) -> None:
        """Make every written row and cell durable (fsync)."""
        for fd, _ in self._files.values():
            os.fsync(fd)

    def close(self) -> None:
        """Wait for a background roll-up, roll up what fell due while it ran, then close the
        month files."""
        self.wait_roll_up()
        if self.raw_days is not None and self._end >= self._roll_due:
            self.roll_up()
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
        hourly = h.read(t0, t1, interval_s=3600)  # sums per hour, NaN only where all are missing
        matrix, step = h.read_finest(t0, t1)      # rolled-up months too, at the step stated

    Files are mapped at each read, so a reader sees what a live writer has written.
    """

    def __init__(self, directory: str | os.PathLike[str], topology: Topology | None = None) -> None:
        """Open `directory`; `topology`, when given, is its topology.json already read (a
        writer's), which spares parsing it again."""
        self.directory = Path(directory)
        path = self.directory / "topology.json"
        if not path.exists():
            raise HistoryError(f"{self.directory} is not a history: no topology.json "
                               "(see docs/history-format.md)")
        self.topology = topology if topology is not None else Topology.from_json(path.read_text(), str(path))
        self.interval_s = self.topology.interval_s
        self.row_bytes = len(self.topology.columns) * DTYPE.itemsize
        #: roll-up levels this history can hold, finest first
        self.levels_s = rollup_levels(self.interval_s)
        self._maps: dict[str, tuple[int, int, int, np.ndarray]] = {}  # month -> (inode, rows, first row, map)

    def months(self) -> list[str]:
        """Names ('YYYY-MM') of the raw month files, in order."""
        folder = self.directory / "intervals"
        if not folder.exists():
            return []
        return sorted(p.stem for p in folder.glob("*.f32"))

    def rolled_up_months(self) -> list[str]:
        """Names of the months kept only as roll-ups (their raw file is gone), in order."""
        found: set[str] = set()
        for level in self.levels_s:
            folder = self.directory / "rollups" / str(level)
            if folder.exists():
                found |= {p.stem for p in folder.glob("*.f32")}
        return sorted(found - set(self.months()))

    def month_interval(self, month: str) -> int | None:
        """The finest interval a month is kept at: the history's own while its raw file
        exists, then its finest roll-up level; None when nothing of it is stored."""
        if (self.directory / "intervals" / f"{month}.f32").exists():
            return self.interval_s
        levels = self._rollups_of(month)
        return levels[0] if levels else None

    def _rollups_of(self, month: str) -> list[int]:
        return [level for level in self.levels_s if _rollup_path(self.directory, level, month).exists()]

    def resolution(self, start: int, end: int) -> int:
        """The finest interval at which all of [start, end) can be read: the history's own
        unless part of the range is kept only as roll-ups."""
        step = self.interval_s
        t = start
        while t < end:
            step = max(step, self.month_interval(month_name(t)) or self.interval_s)
            t = next_month_start_utc(t)
        return step

    def _rows_in(self, month: str) -> int:
        size = (self.directory / "intervals" / f"{month}.f32").stat().st_size
        return size // self.row_bytes if self.row_bytes else 0

    def _map(self, month: str) -> tuple[int, np.ndarray] | None:
        """(first row, [rows, columns] memmap) of a month file, None when it holds none. The
        map is kept while the file keeps its inode and size, so repeated reads of a live
        month touch mapped pages only; a file that grew, or was replaced, is mapped anew."""
        path = self.directory / "intervals" / f"{month}.f32"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._maps.pop(month, None)  # rolled up: let the deleted file's space go
            return None
        rows = st.st_size // self.row_bytes if self.row_bytes else 0
        cached = self._maps.get(month)
        if cached is not None and cached[0] == st.st_ino and cached[1] == rows:
            return cached[2], cached[3]
        if rows == 0:
            return None
        first = read_first_row(self.directory, month, self.row_bytes)
        matrix = np.memmap(path, dtype=DTYPE, mode="r", shape=(rows, len(self.topology.columns)))
        if len(self._maps) >= 64:
            self._maps.pop(next(iter(self._maps)))
        self._maps[month] = (st.st_ino, rows, first, matrix)
        return first, matrix

    def _map_rollup(self, month: str, level: int) -> tuple[np.ndarray, np.ndarray]:
        """([rows, columns] sums, [rows, columns] missing counts) of a month's roll-up level."""
        rows = (next_month_start_utc(_month_of_name(month)) - _month_of_name(month)) // level
        shape = (rows, len(self.topology.columns))
        mapped = []
        for path, dtype in ((_rollup_path(self.directory, level, month), DTYPE),
                            (_rollup_path(self.directory, level, month, missing=True), MISSING_DTYPE)):
            size = path.stat().st_size if path.exists() else -1
            if size != rows * shape[1] * dtype.itemsize:
                raise HistoryError(f"{path}: {'absent' if size < 0 else f'{size} bytes'}; a {level}s roll-up of "
                                   f"{month} holds {rows} rows x {shape[1]} columns x {dtype.itemsize} bytes")
            mapped.append(np.memmap(path, dtype=dtype, mode="r", shape=shape) if rows * shape[1] else
                          np.zeros(shape, dtype=dtype))
        return mapped[0], mapped[1]

    def _rollup_span(self, month: str) -> tuple[int, int] | None:
        """UTC [start, end) of a rolled-up month's rows that hold any reading, at its finest level."""
        level = self._rollups_of(month)[0]
        sums, _ = self._map_rollup(month, level)
        written = np.flatnonzero(~np.all(np.isnan(sums), axis=1))
        if not written.size:
            return None
        month0 = _month_of_name(month)
        return month0 + int(written[0]) * level, month0 + (int(written[-1]) + 1) * level

    @property
    def start(self) -> int | None:
        """UTC start of the first interval holding any reading, None when empty (for a
        rolled-up month, at its finest level kept)."""
        raw = set(self.months())
        for month in sorted(raw | set(self.rolled_up_months())):
            if month not in raw:
                span = self._rollup_span(month)
                if span is not None:
                    return span[0]
                continue
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
        raw = set(self.months())
        for month in reversed(sorted(raw | set(self.rolled_up_months()))):
            if month not in raw:
                span = self._rollup_span(month)
                if span is not None:
                    return span[1]
                continue
            rows = self._rows_in(month)
            if rows:
                first = read_first_row(self.directory, month, self.row_bytes)
                return _month_of_name(month) + (first + rows) * self.interval_s
        return None

    def times(self, start: int, end: int, interval_s: int | None = None) -> np.ndarray:
        """Start times (UTC epoch seconds) of the intervals in [start, end)."""
        return np.arange(start, end, interval_s or self.interval_s, dtype=np.int64)

    def _check_step(self, start: int, end: int, step: int) -> None:
        if step % self.interval_s or 86400 % step:
            raise HistoryError(f"interval_s {step} must be a multiple of the history's {self.interval_s}s "
                               "that divides a day")
        if start % step or end % step:
            raise HistoryError(f"[{start}, {end}) is not on {step}s interval boundaries")

    def _source(self, month: str, step: int) -> tuple[int, str | None]:
        """(level, 'raw' | 'rollup' | None) that serves a month at `step`: the raw file while
        it exists, else the coarsest roll-up level dividing `step`."""
        if (self.directory / "intervals" / f"{month}.f32").exists():
            return self.interval_s, "raw"
        levels = self._rollups_of(month)
        if not levels:
            return self.interval_s, None
        fit = [level for level in levels if step % level == 0]
        if not fit:
            raise HistoryError(f"{month} is kept at {levels[0]}s and coarser: its raw readings left the retention "
                               f"window and were rolled up; read it with interval_s a multiple of {levels[0]}, "
                               "or with read_finest()")
        return fit[-1], "rollup"

    def _raw_into(self, month: str, r0: int, r1: int, index: np.ndarray | None, dest: np.ndarray) -> None:
        """Month rows r0 .. r1 - 1 of a raw month into `dest` ([r1 - r0, columns], C order);
        NaN where the file holds none."""
        path = self.directory / "intervals" / f"{month}.f32"
        mapped = self._map(month)
        if mapped is None:
            dest[:] = np.nan
            return
        first, matrix = mapped
        f0, f1 = max(r0, first), min(r1, first + matrix.shape[0])
        if f1 <= f0:
            dest[:] = np.nan
            return
        dest[:f0 - r0] = np.nan
        dest[f1 - r0:] = np.nan
        if index is None:  # the whole fleet: straight from the file into the result, as numpy.load does
            view = dest[f0 - r0:f1 - r0].data.cast("B")
            got = 0
            with path.open("rb", buffering=0) as f:
                f.seek((f0 - first) * self.row_bytes)
                while got < len(view):
                    n = f.readinto(view[got:])
                    if not n:
                        raise HistoryError(f"{path} shrank while being read")
                    got += n
        else:  # some twins: a strided read of their columns through the page cache
            dest[f0 - r0:f1 - r0] = matrix[f0 - first:f1 - first][:, index]

    def _read(self, start: int, end: int, index: np.ndarray | None, step: int,
              want_missing: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """([intervals, columns] float32 at `step`, missing counts or None) for [start, end)."""
        self._check_step(start, end, step)
        n = max((end - start) // step, 0)
        width = len(self.topology.columns) if index is None else len(index)
        out = np.empty((n, width), dtype=DTYPE)
        missing = np.empty((n, width), dtype=MISSING_DTYPE) if want_missing else None
        t = start
        while t < end:
            month0, stop = month_start_utc(t), min(end, next_month_start_utc(t))
            month = month_name(t)
            o0, o1 = (t - start) // step, (stop - start) // step
            level, kind = self._source(month, step)
            if kind is None:
                out[o0:o1] = np.nan
                if missing is not None:
                    missing[o0:o1] = step // self.interval_s
            elif kind == "raw" and level == step:
                self._raw_into(month, (t - month0) // step, (stop - month0) // step, index, out[o0:o1])
                if missing is not None:
                    missing[o0:o1] = np.isnan(out[o0:o1])
            else:
                k = step // level
                per = max(1, _CHUNK_BYTES // max(width * DTYPE.itemsize * k, 1))  # result rows per chunk
                for a in range(o0, o1, per):
                    b = min(a + per, o1)
                    s0 = (t - month0) // level + (a - o0) * k
                    s1 = s0 + (b - a) * k
                    if kind == "raw":
                        cells = np.empty((s1 - s0, width), dtype=DTYPE)
                        self._raw_into(month, s0, s1, index, cells)
                        counts = None
                    else:
                        sums, counts_map = self._map_rollup(month, level)
                        cols = slice(None) if index is None else index
                        cells, counts = sums[s0:s1][:, cols], counts_map[s0:s1][:, cols]
                    summed, summed_missing = _sum_intervals(np.asarray(cells), k, counts)
                    out[a:b] = summed
                    if missing is not None:
                        missing[a:b] = summed_missing
            t = stop
        return out, missing

    def _index(self, columns: Sequence[str | int] | None) -> np.ndarray | None:
        if columns is None:
            return None
        return np.array([c if isinstance(c, int | np.integer) else self.topology.index_of(c) for c in columns],
                        dtype=np.int64)

    def read_rows(self, start: int, end: int, *, interval_s: int | None = None) -> np.ndarray:
        """[intervals, columns] float32 for [start, end), NaN where nothing was written: the
        files' own row order, read without a transpose (the fastest whole-fleet read)."""
        return self._read(start, end, None, interval_s or self.interval_s)[0]

    def read(self, start: int, end: int, columns: Sequence[str | int] | None = None, *,
             interval_s: int | None = None, contiguous: bool = True) -> np.ndarray:
        """[columns, intervals] float32 for [start, end): the kernels' view. `columns` picks
        twins by id or index, in the order given.

        `interval_s` (default: the history's own) is the result's interval, a multiple of the
        history's that divides a day; a coarser one sums: a cell is the sum of the readings in
        it, NaN only when all of them are missing (`read_missing` counts them). Part of the
        range kept only as roll-ups is refused unless `interval_s` is a multiple of its level
        (HistoryError says which; `resolution` and `read_finest` find it).

        `contiguous=False` returns the transpose of the row-major read as a view (Fortran
        order), without the copy a C-ordered [columns, intervals] costs the whole fleet."""
        rows = self._read(start, end, self._index(columns), interval_s or self.interval_s)[0]
        return np.ascontiguousarray(rows.T) if contiguous else rows.T

    def read_missing(self, start: int, end: int, columns: Sequence[str | int] | None = None, *,
                     interval_s: int | None = None) -> np.ndarray:
        """[columns, intervals] uint16: how many of the history's own intervals in each cell
        of `read(start, end, columns, interval_s=...)` had no reading."""
        missing = self._read(start, end, self._index(columns), interval_s or self.interval_s, want_missing=True)[1]
        assert missing is not None
        return np.ascontiguousarray(missing.T)

    def read_finest(self, start: int, end: int, columns: Sequence[str | int] | None = None
                    ) -> tuple[np.ndarray, int]:
        """(`read` at the finest interval serving all of [start, end), that interval): the
        history's own unless part of the range is kept only as roll-ups. The range must sit
        on that interval's boundaries."""
        step = self.resolution(start, end)
        return self.read(start, end, columns, interval_s=step), step

    def ground_truth(self) -> list[TruthEvent]:
        """The ground truth of the history, empty when it has none."""
        return read_ground_truth(self.directory)


def open_history(directory: str | os.PathLike[str]) -> History:
    """Open a history directory for reading; HistoryError says what is wrong with it."""
    return History(directory)


__all__ = [
    "DEFAULT_RAW_DAYS", "ROLLUP_LEVELS_S", "CellWrites", "Column", "History", "HistoryError", "HistoryWriter",
    "Topology", "TruthEvent", "month_start_utc", "next_month_start_utc", "open_history", "read_first_row",
    "read_ground_truth", "rollup_levels", "write_ground_truth",
]
