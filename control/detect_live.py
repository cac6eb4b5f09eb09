"""The detectors live: a periodic task of the platform that scores the recent history and
keeps the alarm book in step with the scores.

`attach(platform)` registers one task ("anomaly detection"). Each run, in the tick thread
under the platform lock like every periodic task (never on the event loop), it:

1. looks at the history the platform writes (`platform.history`); when no new rows have
   landed since the last run it stops there (the world writes a day at a time, so the
   detectors run once per simulated day however often the task wakes up);
2. reads the last `window_days` site-local days up to the end of what was written, with
   the valve and relay changes of that window: commands sent (`platform.commands`' store)
   and the changes devices reported (the simulated world's log, when the platform runs
   one; never its injection records);
3. runs `twin.anomaly.anomaly_scores` and, when `twin.theft` is installed, `theft_scores`;
4. for each kind and twin, takes the latest day with a score: at or above the threshold,
   it raises an alarm of that kind on the twin (the alarm book keeps one open alarm per kind
   and twin: a repeat refreshes it, never opens a second) with the day, score, threshold and
   the detector's line of evidence; below it, it clears the open alarm of that kind. A twin
   without a score (no data) keeps its alarm as it is. The kinds that weigh a whole day
   against the past (`WHOLE_DAY_KINDS`: theft, elevator_drift, level_shift) are judged on
   whole local days only, never on the day still going; leak once the night is over.

`offline` is left to the runtime's own check (silent for two intervals, from the reported
timestamps), which raises and clears alarms of that kind sooner than a day's scores can.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as clock
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from twin.alarms import Severity
from twin.anomaly import AnomalyParams, anomaly_scores
from twin.detect import DayScores, DetectView, Event, valve_columns
from twin.history import Column, History, HistoryError, Topology
from twin.kernels.load import local_calendar

if TYPE_CHECKING:
    from control.runtime import Platform

log = logging.getLogger("metertwin.detect")

#: Alarm severity of each kind the live detectors raise.
SEVERITY: dict[str, Severity] = {
    "stuck": Severity.WARNING,
    "backwards": Severity.WARNING,
    "jump": Severity.WARNING,
    "level_shift": Severity.INFO,
    "leak": Severity.MAJOR,
    "valve_stuck_open": Severity.MAJOR,
    "elevator_drift": Severity.WARNING,
    "off_schedule": Severity.WARNING,
    "theft": Severity.MAJOR,
}
#: Kinds scored live on whole days only: each weighs a whole day against the meter's past,
#: and the day still going misleads it. theft: a part of the day's total reads as a fall, a
#: few readings as a flat day (61 false alarms in a fresh demo's first minute);
#: elevator_drift: the first hour of a day has no quiet interval, so its smallest step holds
#: standby with the trip (a false drift of +16.7% a minute after a fresh demo's first
#: midnight); level_shift: a part of a day's total reads as a shift.
WHOLE_DAY_KINDS = ("theft", "elevator_drift", "level_shift")
#: Kinds judged live on a day only once its night window is over (AnomalyParams.night_end_h):
#: leak's night minimum over the first readings of a night read as a leak (four false leak
#: alarms, raised at 01:30 and cleared by 01:45, on a fresh demo started at 23:45).
NIGHT_KINDS = ("leak",)
#: Kinds the runtime handles itself.
LEFT_TO_RUNTIME = frozenset({"offline"})
#: Command actions that are control events, and the event each becomes.
COMMAND_EVENTS = {"valve_close": ("valve", "closed"), "valve_open": ("valve", "open"),
                  "relay_open": ("relay", "open"), "relay_close": ("relay", "closed")}


@dataclass
class LiveDetector:
    """The state of the live detectors on one platform."""

    platform: Platform  #: the platform whose history and alarms it works on
    window_days: int = 10  #: site-local days of history scored each run
    every_s: float = 900.0  #: platform seconds between looks at the history
    last_end: int | None = None  #: history end at the last scoring run
    runs: int = 0  #: scoring runs done
    seconds: float = 0.0  #: wall seconds spent scoring, all runs
    raised: int = 0  #: alarms opened
    cleared: int = 0  #: alarms cleared
    _history: History | None = field(default=None, repr=False)

    def history(self) -> History:
        """The platform's history opened for reading (once)."""
        if self._history is None:
            self._history = History(self.platform.history.directory)
        return self._history

    def view(self) -> DetectView | None:
        """The last `window_days` local days of history up to what was written, or None
        when nothing new landed since the last run."""
        history = self.history()
        end = history.end
        if end is None or end == self.last_end:
            return None
        topology = history.topology
        tz = ZoneInfo(topology.timezone)
        last_day = datetime.fromtimestamp(end - 1, tz=tz).date()
        first = datetime.combine(last_day - timedelta(days=self.window_days - 1), clock(), tzinfo=tz)
        start = max(int(first.timestamp()), history.start or end)
        start -= start % history.interval_s
        matrix = history.read(start, end)
        calendar = local_calendar(start, matrix.shape[1], history.interval_s, topology.timezone)
        self.last_end = end
        return DetectView(matrix, topology, calendar, self.events(start, end, topology))

    def events(self, start: int, end: int, topology: Any) -> list[Event]:
        """Valve and relay changes in [start, end): commands sent, and what the simulated
        world's devices reported."""
        p = self.platform
        column_of = valve_columns(topology, getattr(p.commands, "valve_meter", None))
        out: list[Event] = []
        rows = p.store.db.execute(
            "SELECT twin, action, sent FROM commands WHERE sent IS NOT NULL AND sent >= ? AND sent < ? "
            "AND action IN ('valve_close', 'valve_open', 'relay_open', 'relay_close') ORDER BY sent", (start, end))
        for row in rows:
            kind, value = COMMAND_EVENTS[row["action"]]
            out.append(Event(int(row["sent"]), row["twin"], kind, value, column_of(row["twin"])))
        for e in getattr(p.world, "events", []):
            if e.event in ("valve", "relay") and start <= e.utc < end and e.value in ("open", "closed"):
                out.append(Event(int(e.utc), e.twin, e.event, e.value, column_of(e.twin)))
        out.sort(key=lambda e: (e.t_utc, e.twin, e.kind))
        return out

    def run(self, now: float) -> None:
        """One look at the history: score it if it grew, and bring the alarms in step."""
        view = self.view()
        if view is None or view.n_days == 0:
            return
        started = time.perf_counter()
        whole = whole_days(view)
        night_done = whole_days(view, AnomalyParams().night_end_h)
        for kind, day_scores in anomaly_scores(view).items():
            if kind not in LEFT_TO_RUNTIME:
                self.apply(view, only_whole_days(kind, day_scores, night_done if kind in NIGHT_KINDS else whole), now)
        try:
            from twin.theft import theft_scores
        except ImportError:  # theft detection not installed
            pass
        else:
            try:
                thefts = theft_scores(view)
            except Exception:  # logged; the anomaly alarms above stand
                log.exception("theft detection failed on %d days of history", view.n_days)
            else:
                for kind, day_scores in thefts.items():
                    self.apply(view, only_whole_days(kind, day_scores, whole), now)
        self.runs += 1
        self.seconds += time.perf_counter() - started

    def apply(self, view: DetectView, scores: DayScores, now: float) -> None:
        """Raise or clear the alarms of one kind from the latest scored day of each twin."""
        p = self.platform
        s = scores.scores
        if s.shape[1] == 0:
            return
        finite = np.isfinite(s)
        has = finite.any(axis=1)
        latest = s.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)  # last finite day per twin
        values = s[np.arange(s.shape[0]), latest]
        severity = SEVERITY.get(scores.kind, Severity.WARNING)
        ids = view.topology.ids
        for c in np.flatnonzero(has).tolist():
            day = int(latest[c])
            value = float(values[c])
            twin = ids[c]
            if value >= scores.threshold:
                evidence = {"day": view.calendar.days[day].isoformat(), "score": round(value, 4),
                            "threshold": scores.threshold, "evidence": scores.explain(c, day), "detector": scores.kind}
                alarm, new = p.alarms.raise_(scores.kind, twin=twin, at=now, severity=severity, evidence=evidence)
                if new:
                    self.raised += 1
                    p.alarm_changed(alarm, "raised")
                    log.info("%s on %s: %s", scores.kind, twin, evidence["evidence"])
            else:
                cleared = p.alarms.clear_subject(scores.kind, twin=twin, at=now)
                if cleared is not None:
                    self.cleared += 1
                    p.alarm_changed(cleared, "cleared")

    def status(self) -> dict[str, object]:
        """Figures for the health page."""
        return {"runs": self.runs, "seconds": round(self.seconds, 3), "raised": self.raised, "cleared": self.cleared,
                "scored_until": self.last_end}


def only_whole_days(kind: str, scores: DayScores, whole: int) -> DayScores:
    """The scores the live task judges: for the kinds in WHOLE_DAY_KINDS and NIGHT_KINDS
    the days from `whole` on (the day still going, or its night) are left out (NaN, in
    place); the others as they are."""
    if kind in WHOLE_DAY_KINDS or kind in NIGHT_KINDS:
        scores.scores[:, whole:] = np.nan
    return scores


def whole_days(view: DetectView, until_h: float = 24.0) -> int:
    """How many of the view's days the history covers up to local hour `until_h` of the
    day (24: whole days): all of them, or all but the last when the history ends before
    that hour of its last day (the day still going)."""
    cal = view.calendar
    if not cal.days:
        return 0
    tz = ZoneInfo(view.topology.timezone)
    hour = datetime.combine(cal.days[-1], clock(), tzinfo=tz) + timedelta(hours=until_h)
    end = cal.start_utc + cal.n_intervals * cal.interval_s
    return len(cal.days) if end >= hour.timestamp() else len(cal.days) - 1


def _sample(topology: Topology) -> Topology:
    """One building's columns (the one with the most kinds of twin) and the site-level ones:
    every kernel's types, at a small fraction of a large site's cost."""
    buildings: dict[str, list[Column]] = {}
    for column in topology.columns:
        if column.building is not None:
            buildings.setdefault(column.building, []).append(column)
    most = max(buildings.values(), key=lambda columns: len({c.kind for c in columns}), default=[])
    chosen = {c.id for c in most}
    columns = [c for c in topology.columns if c.id in chosen or c.building is None]
    return Topology(topology.site, topology.timezone, topology.interval_s, columns)


def warm_up(platform: Platform, days: int = 2, seed: int = 0) -> float:
    """Compile (or load from Numba's cache) the kernels the live platform calls on its
    history: the detectors' on `days` synthetic days of the site's own columns (with a valve
    closed and opened), the history roll-up's on a few cells, and the interval billing's on
    one empty interval; returns the wall seconds it took. Run before the world's clock
    starts: a first-use compile holds the interpreter for tens of seconds, and the
    collector's polls (on the event loop) would wait behind it."""
    from control.billing import slice_tables
    from twin.history import DTYPE, MISSING_DTYPE
    from twin.kernels.billing import bill_fleet
    from twin.kernels.rollup import sum_intervals
    from twin.tariffs import price_tables

    started = time.perf_counter()
    interval_s = platform.history.interval_s
    topology = _sample(platform.history.topology)
    start = int(datetime(2026, 3, 2, tzinfo=ZoneInfo(topology.timezone)).timestamp())  # a Monday, midnight
    n = days * 86400 // interval_s
    rng = np.random.default_rng(seed)
    matrix = rng.gamma(2.0, 0.05, size=(len(topology.columns), n)).astype(np.float32)
    matrix[:, n // 3] = np.nan  # the detectors' paths for a missing reading too
    water = [c for c, column in enumerate(topology.columns) if column.kind == "water_meter"][:1]
    events = [Event(start + hour * 3600, f"{topology.columns[c].id}.valve", "valve", value, c)
              for c in water for hour, value in ((9, "closed"), (33, "open"))]
    view = DetectView(matrix, topology, local_calendar(start, n, interval_s, topology.timezone), events)
    anomaly_scores(view)
    try:
        from twin.theft import theft_scores
    except ImportError:  # theft detection not installed
        pass
    else:
        theft_scores(view)
    cells = np.ones((4, 2), dtype=DTYPE)
    sum_intervals(cells, 2, np.zeros((0, 2), dtype=MISSING_DTYPE), False,
                  np.empty((2, 2), dtype=DTYPE), np.empty((2, 2), dtype=MISSING_DTYPE))
    billing = getattr(platform, "billing", None)
    meters = len(getattr(billing, "tariff_of", ()))
    if billing is not None and meters:
        tables = price_tables(billing.tariffs, start, 86400 // interval_s, interval_s, topology.timezone)
        energy = np.zeros((meters, 1), dtype=np.float32)
        bill_fleet(energy, billing.tariff_of, np.zeros(meters), slice_tables(tables, 0))
    return time.perf_counter() - started


def attach(platform: Platform, *, window_days: int = 10, every_s: float | None = None) -> LiveDetector:
    """Register the live detectors on `platform` as a periodic task; returns their state."""
    try:
        interval = platform.history.interval_s
    except AttributeError as err:
        raise HistoryError("the platform has no history writer to score") from err
    detector = LiveDetector(platform, window_days, every_s or float(interval))
    platform.every("anomaly detection", detector.every_s, detector.run)
    return detector


__all__ = ["LiveDetector", "SEVERITY", "attach", "warm_up"]
