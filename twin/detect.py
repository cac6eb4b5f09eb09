"""What every detector reads and returns: a window of history with its topology, calendar
and control events (`DetectView`), and one suspicion score per meter per site-local day
(`DayScores`).

Input. `load_view(DIR)` reads a history directory in the documented format
(docs/history-format.md), any interval, our simulator's or an import: the matrix is
float32 [columns, intervals] with NaN for missing, exactly as `History.read` returns it;
the calendar (`twin.kernels.load.Calendar`) cuts those intervals into site-local days;
`events` are the relay and valve changes of DIR/events.csv (when present), each mapped to
the history column it acts on (a valve to its water meter). Injection edges in events.csv
(`inject_start`, `inject_end`) are ground truth and are never given to detectors.

`downsample_daily(view)` turns a view into what a field meter that reports once a day
would have given: one reading per site-local day, interval_s 86400, read as a register is.
The rule: a day's value is the register's advance between the end of the last day whose
final interval was read and the end of this day, that is the sum (missing as 0) of the
readings since then, and NaN when this day's final interval is missing (or the window does
not hold the whole day). So totals survive a gap (the catch-up reading lands on the first
day read again, as with a real register) and a day without its end-of-day read is missing.
Master meters are dropped by default (many field sites have none at daily resolution).

Output. `DayScores.scores` is float32 [columns, days] over `view.calendar.days`: higher is
more suspicious, NaN where the detector does not apply (wrong twin kind, no data that
day). A meter-day whose score is at or above `threshold` is an alarm; `evidence(column,
day)` gives one line saying why, with figures, for the alarm's record. Evaluation counts
meter-days: a flagged meter-day is a true positive when a ground-truth window of that
kind overlaps that site-local day.

Example::

    view = load_view("out/demo")
    scores = anomaly_scores(view)["leak"]            # twin.anomaly
    hits = np.argwhere(scores.scores >= scores.threshold)
    for column, day in hits:
        print(view.topology.columns[column].id, view.calendar.days[day], scores.evidence(column, day))
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from datetime import time as clock
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from numba import njit, prange

from twin.history import HistoryError, Topology, TruthEvent, open_history
from twin.kernels.load import DAILY, Calendar, local_calendar

#: Event kinds detectors see; everything else in events.csv is left out.
CONTROL_EVENTS = ("relay", "valve")


@dataclass(frozen=True, slots=True)
class Event:
    """A control change on a twin. Example: ``Event(1767312000, "B04-07-02.vl", "valve",
    "closed", 41)``: the valve of the water meter in column 41 reported closed."""

    t_utc: int  #: UTC epoch seconds
    twin: str  #: the twin that changed (a valve, an electric meter's relay)
    kind: str  #: "valve" or "relay"
    value: str  #: valve: "open" or "closed"; relay: "closed" (supply on) or "open" (tripped)
    column: int = -1  #: the history column it acts on (a valve: its water meter); -1 when none


@dataclass
class DetectView:
    """A window of history as detectors see it."""

    matrix: np.ndarray  #: float32 [columns, intervals], NaN missing (History.read)
    topology: Topology  #: what the columns are; its interval_s is the matrix's
    calendar: Calendar  #: site-local days of the window
    events: list[Event] = field(default_factory=list)  #: control events, in time order

    @property
    def n_days(self) -> int:
        """Site-local days in the window."""
        return len(self.calendar.days)

    def day_of(self, t_utc: int) -> int:
        """The calendar day holding instant `t_utc` (-1 before the window, n_days after)."""
        cal = self.calendar
        if cal.interval_s >= DAILY and cal.days:  # a daily reading covers its local date
            local = datetime.fromtimestamp(t_utc, tz=ZoneInfo(cal.timezone)).date()
            return max(-1, min((local - cal.days[0]).days, self.n_days))
        if t_utc < cal.start_utc:
            return -1
        i = (t_utc - cal.start_utc) // cal.interval_s
        if i >= cal.n_intervals:
            return self.n_days
        return int(np.searchsorted(cal.day_bounds, i, side="right")) - 1

    def day_start_utc(self, day: int) -> int:
        """UTC start of the first interval of calendar day `day`."""
        return int(self.calendar.start_utc + self.calendar.day_bounds[day] * self.calendar.interval_s)


@dataclass
class DayScores:
    """One detector's verdict per meter per day. Example: ``DayScores("leak", scores,
    2.0, lambda c, d: "night minimum 11.8 l/h")``."""

    kind: str  #: fault or theft kind: "leak", "stuck", "h1", "theft", ...
    scores: np.ndarray  #: float32 [columns, days]; higher = more suspicious; NaN = not applicable
    threshold: float  #: a score at or above this raises an alarm
    evidence: Callable[[int, int], str] | None = None  #: (column, day) -> one line of evidence

    def flagged(self) -> np.ndarray:
        """bool [columns, days]: alarm raised (NaN never is)."""
        with np.errstate(invalid="ignore"):
            return self.scores >= self.threshold

    def explain(self, column: int, day: int) -> str:
        """The evidence line, or the score when the detector gives none."""
        if self.evidence is not None:
            return self.evidence(column, day)
        return f"{self.kind} score {float(self.scores[column, day]):.3g} (threshold {self.threshold:.3g})"


# -- reading -----------------------------------------------------------------------------


def _parse_utc(text: str, where: str) -> int:
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise HistoryError(f"{where}: {text!r} is not an ISO-8601 UTC time like 2026-01-03T12:00:00Z") from None


def valve_columns(topology: Topology, valves: dict[str, str] | None = None) -> Callable[[str], int]:
    """A function twin id -> the column its events act on. A metered twin is its own column;
    a valve is its water meter's: from `valves` (valve id -> meter id) when given, else by
    the naming rule of twin.model (`ROOM.vl` closes `ROOM.wm`), else the one water meter of
    the room named before the last dot. -1 when nothing fits."""
    index = {c: i for i, c in enumerate(topology.ids)}
    water_of_room: dict[str, int] = {}
    for i, c in enumerate(topology.columns):
        if c.kind == "water_meter" and c.room:
            water_of_room.setdefault(c.room, i)

    def column_of(twin: str) -> int:
        if twin in index:
            return index[twin]
        if valves and twin in valves:
            return index.get(valves[twin], -1)
        stem = twin.rsplit(".", 1)[0]
        if f"{stem}.wm" in index:
            return index[f"{stem}.wm"]
        return water_of_room.get(stem, -1)

    return column_of


def read_events(path: str | os.PathLike[str], topology: Topology, start_utc: int | None = None,
                end_utc: int | None = None) -> list[Event]:
    """Relay and valve events of an events.csv (header time,twin,event,value[,source]) in
    [start_utc, end_utc); HistoryError names the line of a bad row."""
    column_of = valve_columns(topology)
    out: list[Event] = []
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"time", "twin", "event", "value"} - set(reader.fieldnames or [])
        if missing:
            raise HistoryError(f"{path}:1: header lacks {sorted(missing)}; expected time,twin,event,value,source")
        for n, row in enumerate(reader, start=2):
            if row["event"] not in CONTROL_EVENTS:
                continue
            t = _parse_utc(row["time"], f"{path}:{n}")
            if (start_utc is not None and t < start_utc) or (end_utc is not None and t >= end_utc):
                continue
            out.append(Event(t, row["twin"], row["event"], row["value"], column_of(row["twin"])))
    out.sort(key=lambda e: (e.t_utc, e.twin))
    return out


def load_view(history_dir: str | os.PathLike[str], start_utc: int | None = None,
              end_utc: int | None = None) -> DetectView:
    """The view of a history directory over [start_utc, end_utc) (default: all of it, from
    its first written interval); reads events.csv when present."""
    history = open_history(history_dir)
    start = history.start if start_utc is None else start_utc
    end = history.end if end_utc is None else end_utc
    if start is None or end is None:
        raise HistoryError(f"{history_dir}: the history holds no readings")
    step = history.interval_s
    start -= start % step
    end = -(-end // step) * step
    if end <= start:
        raise HistoryError(f"{history_dir}: empty window [{start}, {end})")
    matrix = history.read(start, end)
    calendar = local_calendar(start, matrix.shape[1], step, history.topology.timezone)
    events_path = Path(history_dir) / "events.csv"
    events = read_events(events_path, history.topology, start, end) if events_path.exists() else []
    return DetectView(matrix, history.topology, calendar, events)


# -- daily readings ----------------------------------------------------------------------


@njit(cache=True, nogil=True, parallel=True)
def register_days(matrix: np.ndarray, day_bounds: np.ndarray, whole: np.ndarray, out: np.ndarray) -> None:
    """Daily register reads: out[c, d] = sum (missing as 0) of column c's readings since
    the end of the last day read, NaN when day d's final interval is missing or the day
    is not `whole` in the window."""
    n_cols = matrix.shape[0]
    n_days = day_bounds.shape[0] - 1
    for c in prange(n_cols):
        carry = 0.0
        for d in range(n_days):
            acc = carry
            for i in range(day_bounds[d], day_bounds[d + 1]):
                v = matrix[c, i]
                if v == v:
                    acc += v
            last = matrix[c, day_bounds[d + 1] - 1]
            if whole[d] and last == last:
                out[c, d] = acc
                carry = 0.0
            else:
                out[c, d] = np.nan
                carry = acc


def downsample(view: DetectView, interval_s: int) -> DetectView:
    """The view at a coarser sub-daily interval (a multiple of the view's that divides a
    day), read as a register is (the rule in the module docstring, per interval instead of
    per day). The window keeps only whole coarse intervals from its first boundary."""
    cal = view.calendar
    if interval_s % cal.interval_s or DAILY % interval_s or interval_s >= DAILY:
        raise ValueError(f"interval_s {interval_s} must be a multiple of {cal.interval_s} that divides a day "
                         "(for daily readings use downsample_daily)")
    factor = interval_s // cal.interval_s
    skip = (-cal.start_utc % interval_s) // cal.interval_s
    n = (cal.n_intervals - skip) // factor
    bounds = skip + np.arange(n + 1, dtype=np.int64) * factor
    out = np.empty((view.matrix.shape[0], n), dtype=np.float64)
    if n:
        register_days(np.ascontiguousarray(view.matrix), bounds, np.ones(n, dtype=np.bool_), out)
    start = cal.start_utc + skip * cal.interval_s
    calendar = local_calendar(start, n, interval_s, cal.timezone)
    topology = Topology(view.topology.site, view.topology.timezone, interval_s, list(view.topology.columns))
    return DetectView(out.astype(np.float32), topology, calendar, list(view.events))


def downsample_daily(view: DetectView, drop_masters: bool = True) -> DetectView:
    """One reading per site-local day (the register rule in the module docstring), as a
    view with interval_s 86400 whose readings start at UTC midnight of their local date."""
    cal = view.calendar
    keep = [i for i, c in enumerate(view.topology.columns) if not (drop_masters and c.role == "master")]
    matrix = np.ascontiguousarray(view.matrix[keep]) if len(keep) != view.matrix.shape[0] else view.matrix
    n_days = len(cal.days)
    days = np.empty((len(keep), n_days), dtype=np.float64)
    whole = cal.periods["day"].covered if cal.interval_s < DAILY else np.ones(n_days, dtype=np.bool_)
    if n_days:
        register_days(matrix, cal.day_bounds, whole, days)
    first = cal.days[0] if n_days else datetime.fromtimestamp(cal.start_utc, tz=UTC).date()
    start = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp())
    calendar = local_calendar(start, n_days, DAILY, cal.timezone)
    columns = [view.topology.columns[i] for i in keep]
    if drop_masters:  # the masters are gone: no column names one
        columns = [replace(c, master=None) if c.master is not None else c for c in columns]
    topology = Topology(view.topology.site, view.topology.timezone, DAILY, columns)
    remap = {old: new for new, old in enumerate(keep)}
    events = [replace(e, column=remap.get(e.column, -1)) for e in view.events]
    return DetectView(days.astype(np.float32), topology, calendar, events)


__all__ = ["CONTROL_EVENTS", "DayScores", "DetectView", "Event", "downsample", "downsample_daily", "load_view",
           "read_events", "register_days", "truth_days", "valve_columns"]


def truth_days(view: DetectView, truth: list[TruthEvent], kind: str) -> np.ndarray:
    """bool [columns, days]: a ground-truth window of `kind` overlaps the column's day
    (the meter-days a detector of that kind should flag). Truth on twins that are not
    columns is left out."""
    out = np.zeros((view.matrix.shape[0], view.n_days), dtype=np.bool_)
    index = {c: i for i, c in enumerate(view.topology.ids)}
    cal = view.calendar
    starts = cal.start_utc + cal.day_bounds[:-1] * cal.interval_s
    ends = cal.start_utc + cal.day_bounds[1:] * cal.interval_s
    if cal.interval_s >= DAILY:  # a daily reading covers its local date
        tz = ZoneInfo(cal.timezone)
        starts = np.array([int(datetime.combine(d, clock(), tzinfo=tz).timestamp()) for d in cal.days], dtype=np.int64)
        ends = starts + DAILY
    for e in truth:
        if e.kind != kind or e.twin not in index:
            continue
        end = np.iinfo(np.int64).max if e.end is None else e.end
        out[index[e.twin]] |= (starts < end) & (ends > e.start)
    return out
