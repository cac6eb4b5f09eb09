"""The load analytics live: a periodic task of the platform that computes each building's
energy balance, peak demand, load factor, month total against last year and typical day
from the recent history, keeps them as one immutable snapshot, and raises `energy_loss`
on a master meter whose gap jumps above its usual.

`attach(platform)` registers one task ("load analytics"). Each run, in the tick thread under
the platform lock like every periodic task (never on the event loop), it:

1. looks at the history the platform writes; it goes on only when a site-local day was
   completed since its last run (a day still going would read as a short day, so every
   figure is over whole days; late cells of past days are picked up with the next day);
2. reads the last `window_days` (35: a month is always whole in it) whole local days and
   computes with `twin.kernels.load`: `day_summary`, `energy_balance` (each master against
   the sum of what it feeds, loss kWh and percent by day), and per building and utility:
   the sum of its sub-meters at each interval (missing as 0; an interval where none read is
   missing), rolled to the month of the last whole day with `period_summary`: the month's
   total, its peak demand (the coincident peak of the building, not the sum of each meter's
   peak) with the UTC start of that interval, and load factor; the same dates a year before
   where the history reaches back; the typical weekday and weekend day (`building_profiles`,
   the sum of the sub-meters' mean days);
3. assigns a new `AnalyticsSnapshot` to `LoadAnalytics.snapshot` (never mutated after:
   the API reads it from the event loop without the lock);
4. brings the `energy_loss` alarms in step (`loss_verdicts`, rule below).

The energy-loss rule, per master meter on the last whole day: judged only when that day and
at least `USUAL_MIN_DAYS` earlier days of the window have every reading of the master and of
what it feeds (a missing sub-meter reading counts as 0 and would read as loss) and the
master measured something. Its usual is the median loss percent of those earlier days. It
raises when the day's loss is more than `LOSS_MARGIN_PCT` points above the usual AND the
energy above the usual (loss - usual% x master) is more than `LOSS_MIN` (kWh, or m3 for
water): a theft of one flat in a tower of seventy moves the loss by about a point, a day of
noise in a clean building by hundredths. Below either, it clears the open alarm; a day
that cannot be judged keeps the alarm as it is. A theft that lasts more than half the
window becomes the usual, and the alarm clears: the theft detectors (twin.theft) still
point at the meter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np

from twin.alarms import Severity
from twin.history import History, HistoryError, Topology
from twin.kernels.load import (
    Calendar,
    EnergyBalance,
    Profile,
    SiteIndex,
    building_profiles,
    day_summary,
    energy_balance,
    group_sum,
    local_calendar,
    period_summary,
    site_index,
    typical_profile,
    utc_label,
)

if TYPE_CHECKING:
    from control.runtime import Platform

log = logging.getLogger("metertwin.analytics")

#: The alarm kind, and its severity: money leaves the site, as with a theft score.
KIND = "energy_loss"
SEVERITY = Severity.MAJOR
#: Points of loss percent above the master's usual that raise the alarm, at the least.
LOSS_MARGIN_PCT = 0.5
#: ... or this many robust standard deviations (1.4826 x MAD) of the earlier days' loss
#: percent, when that is more: a small building's loss swings with its load.
LOSS_SPREAD_K = 4.0
#: Energy above the usual loss that raises it too, per utility (kWh; m3 of water).
LOSS_MIN: dict[str, float] = {"electric": 2.0, "water": 0.2}
#: Earlier whole days (all readings there) the usual needs.
USUAL_MIN_DAYS = 3
UNIT = {"electric": "kWh", "water": "m3"}


@dataclass(frozen=True, slots=True)
class LossVerdict:
    """One master's last whole day against its usual. Example: ``LossVerdict("B03.mm", 20,
    12.4, 143.2, 1152.0, 3.1, 20, 0.5, True)``."""

    master: str  #: master meter id
    day: int  #: index of the judged day in the snapshot's days, -1 when none
    loss_pct: float  #: the day's loss percent (NaN when not judged)
    loss_kwh: float  #: the day's loss (kWh or m3)
    master_kwh: float  #: what the master measured that day
    usual_pct: float  #: median loss percent of the earlier days with all readings (NaN: too few)
    usual_days: int  #: how many such days
    margin_pct: float  #: points above the usual that raise: LOSS_MARGIN_PCT or the spread, the larger
    over: bool | None  #: above the margin (True), within it (False), not judged (None)


@dataclass(frozen=True, slots=True)
class BuildingFigures:
    """One building and utility over the snapshot's window (NaN / None where absent)."""

    building: str  #: building id
    utility: str  #: electric or water
    unit: str  #: kWh or m3
    master: str | None  #: its master meter, if it has one
    month: str  #: "2026-03": the month of the last whole day
    month_first_day: str  #: its first local date inside the window
    month_days: int  #: its days inside the window
    month_kwh: float  #: sum of the sub-meters over those days
    month_missing: int  #: missing sub-meter readings in them
    last_year_kwh: float  #: the same dates a year before, NaN where the history does not hold them
    peak_kw: float  #: the month's highest interval demand of the building (kW; m3/h)
    peak_utc: int  #: UTC start of that interval, -1 when none
    load_factor: float  #: mean demand over peak, that month


@dataclass(frozen=True, slots=True)
class AnalyticsSnapshot:
    """What one run computed; replaced whole by the next run, never changed (its arrays are
    read-only)."""

    computed_at: float  #: platform UTC epoch seconds of the run
    seconds: float  #: wall seconds it took
    window_start: int  #: UTC start of the first day read
    window_end: int  #: UTC end of the last whole day (exclusive)
    timezone: str  #: the site's zone
    days: tuple[str, ...]  #: local dates of the window's days
    balance: EnergyBalance  #: each master against what it feeds, by day
    verdicts: tuple[LossVerdict, ...]  #: per master (balance order), its last whole day against its usual
    buildings: tuple[BuildingFigures, ...]  #: per building and utility
    profiles: Profile  #: per building and utility: the typical weekday and weekend day

    def building_ids(self) -> list[str]:
        """Buildings with any figure, in order of first appearance."""
        return list(dict.fromkeys(b.building for b in self.buildings))


def _frozen(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


def loss_verdicts(balance: EnergyBalance, margin_pct: float = LOSS_MARGIN_PCT,
                  min_loss: dict[str, float] | None = None) -> list[LossVerdict]:
    """The energy-loss rule (module docstring) on the last day of `balance`, per master."""
    minimum = LOSS_MIN if min_loss is None else min_loss
    out: list[LossVerdict] = []
    n_days = len(balance.days)
    for m, master in enumerate(balance.masters):
        if n_days == 0:
            out.append(LossVerdict(master, -1, np.nan, np.nan, np.nan, np.nan, 0, np.nan, None))
            continue
        last = n_days - 1
        pct = balance.loss_pct[m]
        whole = (balance.missing[m] == 0) & np.isfinite(pct)
        earlier = pct[:last][whole[:last]]
        usual, margin = np.nan, np.nan
        if earlier.size >= USUAL_MIN_DAYS:
            usual = float(np.median(earlier))
            margin = max(margin_pct, LOSS_SPREAD_K * 1.4826 * float(np.median(np.abs(earlier - usual))))
        day_pct, loss, measured = float(pct[last]), float(balance.loss_kwh[m, last]), float(balance.master_kwh[m, last])
        over: bool | None = None
        if whole[last] and np.isfinite(usual):
            above = loss - usual / 100.0 * measured
            over = bool(day_pct - usual > margin and above > minimum.get(balance.utilities[m], 0.0))
        out.append(LossVerdict(master, last, day_pct, loss, measured, usual, int(earlier.size), margin, over))
    return out


def evidence_line(balance: EnergyBalance, m: int, verdict: LossVerdict) -> str:
    """"B03 electric loss 12.4% (143.2 kWh of 1,152.0 kWh) on 2026-12-05, usual 3.1% over
    the 20 days before"."""
    unit = UNIT.get(balance.utilities[m], "kWh")
    where = balance.buildings[m] or balance.masters[m]
    return (f"{where} {balance.utilities[m]} loss {verdict.loss_pct:.1f}% ({verdict.loss_kwh:,.1f} {unit} of "
            f"{verdict.master_kwh:,.1f} {unit}) on {balance.days[verdict.day]}, usual {verdict.usual_pct:.1f}% "
            f"over the {verdict.usual_days} days before")


def building_sums(matrix: np.ndarray, index: SiteIndex) -> np.ndarray:
    """float32 [groups, intervals]: per building and utility, its sub-meters summed at each
    interval (missing as 0), NaN where none of them read."""
    sums = np.empty((len(index.group_labels), matrix.shape[1]))
    counts = np.empty(sums.shape, dtype=np.int64)
    group_sum(matrix, index.group, sums, counts)
    sums[counts == 0] = np.nan
    return sums.astype(np.float32)


def year_before(day: date) -> date:
    """The same date a year before (a 29 February falls on the 28th)."""
    try:
        return day.replace(year=day.year - 1)
    except ValueError:
        return day.replace(year=day.year - 1, day=28)


def last_year_totals(history: History, index: SiteIndex, first: date, last: date, timezone: str) -> np.ndarray:
    """float64 [groups]: each building and utility's sub-meters over the dates a year before
    [first, last], NaN when the history does not hold all of that span or none read."""
    out = np.full(len(index.group_labels), np.nan)
    h_start, h_end = history.start, history.end
    if h_start is None or h_end is None:
        return out
    tz = ZoneInfo(timezone)
    t0 = int(datetime.combine(year_before(first), clock(), tzinfo=tz).timestamp())
    t1 = int(datetime.combine(year_before(last) + timedelta(days=1), clock(), tzinfo=tz).timestamp())
    if t0 < h_start or t1 > h_end:
        return out
    try:
        matrix, _ = history.read_finest(t0, t1)
    except HistoryError:  # kept only as roll-ups that do not fit local days
        return out
    sums = np.empty((len(index.group_labels), matrix.shape[1]))
    counts = np.empty(sums.shape, dtype=np.int64)
    group_sum(np.ascontiguousarray(matrix, dtype=np.float32), index.group, sums, counts)
    read = counts.sum(axis=1) > 0
    out[read] = sums.sum(axis=1)[read]
    return out


def compute(matrix: np.ndarray, calendar: Calendar, index: SiteIndex, topology: Topology, now: float,
            last_year: np.ndarray | None = None) -> AnalyticsSnapshot:
    """The snapshot of whole days `matrix` [columns, intervals] with its calendar;
    `last_year` (float64 [groups]) is `last_year_totals` of the month's dates."""
    started = time.perf_counter()
    days = day_summary(matrix, calendar)
    balance = energy_balance(days, index)
    verdicts = loss_verdicts(balance)
    profiles = building_profiles(typical_profile(matrix, calendar, index.ids), index)
    b_days = day_summary(building_sums(matrix, index), calendar)
    months = period_summary(b_days, calendar, "month")
    figures: list[BuildingFigures] = []
    if len(months.periods):
        p = len(months.periods) - 1
        d0 = int(months.periods.day_bounds[p])
        peak_kw, peak_utc, lf = months.peak_kw[:, p], months.peak_utc[:, p], months.load_factor[:, p]
        master_of = {(b, u): index.ids[c] for b, u, c in zip(index.master_buildings, index.master_utilities,
                                                            index.masters.tolist(), strict=True)}
        for g, label in enumerate(index.group_labels):
            building, utility = label.rsplit(" ", 1)
            figures.append(BuildingFigures(
                building, utility, UNIT.get(utility, "kWh"), master_of.get((building, utility)),
                months.periods.labels[p], calendar.days[d0].isoformat(), len(calendar.days) - d0,
                float(months.totals[g, p]), int(months.missing[g, p]),
                float(last_year[g]) if last_year is not None else np.nan,
                float(peak_kw[g]), int(peak_utc[g]), float(lf[g])))
    _frozen(balance.master_kwh, balance.fed_kwh, balance.loss_kwh, balance.loss_pct, balance.missing,
            profiles.mean)
    end = calendar.start_utc + calendar.n_intervals * calendar.interval_s
    return AnalyticsSnapshot(now, time.perf_counter() - started, calendar.start_utc, end, topology.timezone,
                             tuple(d.isoformat() for d in calendar.days), balance, tuple(verdicts),
                             tuple(figures), profiles)


@dataclass
class LoadAnalytics:
    """The state of the live load analytics on one platform."""

    platform: Platform  #: the platform whose history and alarms it works on
    window_days: int = 35  #: whole site-local days read each run
    every_s: float = 900.0  #: platform seconds between looks at the history
    snapshot: AnalyticsSnapshot | None = None  #: the latest results (replaced whole, never changed)
    last_end: int | None = None  #: end of the last whole day computed
    runs: int = 0  #: computing runs done
    seconds: float = 0.0  #: wall seconds spent, all runs
    raised: int = 0  #: energy_loss alarms opened
    cleared: int = 0  #: energy_loss alarms cleared
    _history: History | None = field(default=None, repr=False)
    _index: tuple[Topology, SiteIndex] | None = field(default=None, repr=False)

    def history(self) -> History:
        """The platform's history opened for reading (once)."""
        if self._history is None:
            self._history = History(self.platform.history.directory)
        return self._history

    def index(self, topology: Topology) -> SiteIndex:
        """The `SiteIndex` of the topology, built once per topology."""
        if self._index is None or self._index[0] is not topology:
            self._index = (topology, site_index(topology))
        return self._index[1]

    def window(self) -> tuple[int, int] | None:
        """[start, end) UTC of the last `window_days` whole local days, or None when no day
        was completed since the last run."""
        history = self.history()
        end, first_written = history.end, history.start
        if end is None or first_written is None:
            return None
        tz = ZoneInfo(history.topology.timezone)
        last_day = datetime.fromtimestamp(end, tz=tz).date() - timedelta(days=1)  # the last day that ended
        whole_end = int(datetime.combine(last_day + timedelta(days=1), clock(), tzinfo=tz).timestamp())
        if whole_end > end:  # history ends before that day's midnight (DST edge): a day before
            last_day -= timedelta(days=1)
            whole_end = int(datetime.combine(last_day + timedelta(days=1), clock(), tzinfo=tz).timestamp())
        first = int(datetime.combine(last_day - timedelta(days=self.window_days - 1), clock(),
                                     tzinfo=tz).timestamp())
        start = max(first, first_written)
        start -= start % history.interval_s
        if whole_end <= start or whole_end == self.last_end:
            return None
        return start, whole_end

    def run(self, now: float) -> None:
        """One look at the history: compute the snapshot if a day was completed, and bring
        the energy_loss alarms in step."""
        span = self.window()
        if span is None:
            return
        started = time.perf_counter()
        history = self.history()
        topology = history.topology
        start, end = span
        matrix = history.read(start, end)
        calendar = local_calendar(start, matrix.shape[1], history.interval_s, topology.timezone)
        index = self.index(topology)
        last_year = None
        if calendar.days:
            month_first = calendar.periods["month"].day_bounds[-2] if len(calendar.periods["month"]) else 0
            last_year = last_year_totals(history, index, calendar.days[int(month_first)], calendar.days[-1],
                                         topology.timezone)
        snapshot = compute(matrix, calendar, index, topology, now, last_year)
        self.snapshot = snapshot
        self.last_end = end
        self.apply(snapshot, now)
        self.runs += 1
        self.seconds += time.perf_counter() - started

    def apply(self, snapshot: AnalyticsSnapshot, now: float) -> None:
        """Raise or clear energy_loss on each master from its verdict."""
        p = self.platform
        balance = snapshot.balance
        for m, verdict in enumerate(snapshot.verdicts):
            if verdict.over is None:
                continue
            if verdict.over:
                evidence = {"day": balance.days[verdict.day], "loss_pct": round(verdict.loss_pct, 2),
                            "loss": round(verdict.loss_kwh, 3), "master": round(verdict.master_kwh, 3),
                            "unit": UNIT.get(balance.utilities[m], "kWh"), "usual_pct": round(verdict.usual_pct, 2),
                            "usual_days": verdict.usual_days, "margin_pct": round(verdict.margin_pct, 2),
                            "min_loss": LOSS_MIN.get(balance.utilities[m], 0.0),
                            "evidence": evidence_line(balance, m, verdict), "detector": "load analytics"}
                alarm, new = p.alarms.raise_(KIND, twin=verdict.master, at=now, severity=SEVERITY, evidence=evidence)
                if new:
                    self.raised += 1
                    p.alarm_changed(alarm, "raised")
                    log.info("%s on %s: %s", KIND, verdict.master, evidence["evidence"])
                else:
                    p.alarm_changed(alarm, "repeated")
            else:
                cleared = p.alarms.clear_subject(KIND, twin=verdict.master, at=now)
                if cleared is not None:
                    self.cleared += 1
                    p.alarm_changed(cleared, "cleared")

    def status(self) -> dict[str, object]:
        """Figures for the health page."""
        return {"runs": self.runs, "seconds": round(self.seconds, 3), "raised": self.raised, "cleared": self.cleared,
                "computed_until": self.last_end}


def warm_up(platform: Platform, days: int = 2, seed: int = 0) -> float:
    """Compile (or load from Numba's cache) the kernels a run calls, on `days` synthetic
    days of one building's columns (`control.detect_live._sample`); returns wall seconds."""
    from control.detect_live import _sample

    started = time.perf_counter()
    interval_s = platform.history.interval_s
    topology = _sample(platform.history.topology)
    start = int(datetime(2026, 3, 2, tzinfo=ZoneInfo(topology.timezone)).timestamp())
    n = days * 86400 // interval_s
    matrix = np.random.default_rng(seed).gamma(2.0, 0.05, size=(len(topology.columns), n)).astype(np.float32)
    matrix[:, n // 3] = np.nan
    index = site_index(topology)
    compute(matrix, local_calendar(start, n, interval_s, topology.timezone), index, topology, float(start))
    return time.perf_counter() - started


def attach(platform: Platform, *, window_days: int = 35, every_s: float | None = None) -> LoadAnalytics:
    """Register the live load analytics on `platform` as a periodic task; returns their state."""
    try:
        interval = platform.history.interval_s
    except AttributeError as err:
        raise HistoryError("the platform has no history writer to analyse") from err
    analytics = LoadAnalytics(platform, window_days, every_s or float(interval))
    platform.every("load analytics", analytics.every_s, analytics.run)
    return analytics


def peak_time(figures: BuildingFigures, timezone: str) -> tuple[str | None, str | None]:
    """(UTC, site-local) ISO times of a building's peak, None when it has none."""
    if figures.peak_utc < 0:
        return None, None
    local = datetime.fromtimestamp(figures.peak_utc, tz=ZoneInfo(timezone)).isoformat()
    return utc_label(figures.peak_utc), local


__all__ = ["AnalyticsSnapshot", "BuildingFigures", "KIND", "LOSS_MARGIN_PCT", "LOSS_MIN", "LoadAnalytics",
           "LossVerdict", "SEVERITY", "USUAL_MIN_DAYS", "attach", "compute", "loss_verdicts", "warm_up"]
