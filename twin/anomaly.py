"""Anomaly detection: one `DayScores` per fault kind, per meter per site-local day, from a
`DetectView` (twin/detect.py) at any interval the history holds.

Each kind is a rule with its parameters in `AnomalyParams` (defaults below, one line each):

- offline: the longest run of missing readings reaching into the day, in hours; alarm at
  `offline_min_h` (never less than one interval). A stale register (one that repeats its
  reading) shows as zero deltas: see stuck.
- stuck: the longest run of exact zeros in the day, in hours, outside the times its
  supply was cut (relay open, valve closed, from the events), on a meter that used at
  least `stuck_min_use` on some day up to this one, while the peers of its building and
  kind consume (their median day total is above 0; checked where the zeros reach an
  alarm). Electric: alarm at `stuck_electric_h` (above the 12 h a theft of kind h2 may
  switch off). Water meters go quiet for a day when the household is away, so a water
  meter also needs its room's electric meter to show the household at home that day (a
  day total of at least `presence_share` of its upper quartile over at least
  `presence_days` days it was read in full and not itself stuck); without an electric
  meter in the room, `stuck_water_alone_h` applies. A run that ends inside the day counts
  only its part inside the day; one still open at midnight counts whole, so a quiet night
  after an away day is not a stuck meter, and a meter still at zero at midnight is.
- backwards: the sum of negative readings in the day; alarm at `backwards_min` (kWh or m3).
- jump: the day's largest reading (a reading after k missing ones counts as its mean over
  k + 1, so a catch-up after an outage is not a jump) against the meter's median daily
  largest reading over the window (at least `jump_floor_per_h` x interval hours); alarm at
  `jump_ratio` times.
- level_shift: a sudden sustained change: each of the last `shift_sustain_days` day totals
  against the median of the `shift_baseline_days` days before them, after dividing every
  day total by the median of its building peers' (same kind) normalised totals that day, so
  weather and weekends cancel; score |log ratio| of the least changed of those days (0
  when they change in different directions); alarm at log(`shift_ratio`). Days with a
  missing reading, a supply cut, or another rule's alarm (stuck, backwards, jump) neither
  score nor make the baseline. The simulator injects no such fault, but thefts h1 and
  bypass look like one.
- leak (water meters): the smallest reading in the night window (`night_start_h` to
  `night_end_h` local), as litres per hour; a household's flow falls to zero at some point
  of the night, a leak's never does; alarm at `leak_lph`, with at least
  `leak_min_readings` night readings.
- valve_stuck_open (water meters with a valve): litres that flowed in the day while the
  valve was reported closed (from `valve_settle_s` after the close until it opened); alarm
  at `valve_litres`. Needs the valve events.
- elevator_drift (elevators): energy per trip. An interval's energy is standby plus whole
  trips, so the smallest step above the day's quietest interval is a whole number of
  trips (one, at 15 minutes; maybe more in hourly readings, divided out by the baseline);
  the score is that against the least of up to `drift_baseline_days` earlier days that
  were not flagged, minus 1; alarm at `drift_share` (a maintenance warning). The model
  assumes trips of equal energy, as the simulator makes them; field lifts vary by load,
  so a real site wants a higher `drift_share`.
- off_schedule (shared circuits): the schedule is learned from the circuit's earlier days
  (a slot of the day on in at most `off_share` of them is an off slot; on is a reading above
  `on_share` of the circuit's largest); score = hours on in off slots; alarm at
  `off_schedule_h`. Flagged days do not teach the schedule.

Resolution: offline, stuck, backwards, jump and level_shift work at any interval, daily
included (stuck needs the run to reach its hours, so at daily a whole day of zeros: water
then uses `stuck_water_alone_h` of 48 h, i.e. two days). leak, elevator_drift and
off_schedule need sub-daily data (hourly works) and score NaN on daily views;
valve_stuck_open works on daily data for whole days the valve stayed closed.

Rules that need earlier days (stuck's use, level_shift, drift, off_schedule) look only at
days up to the one scored, so a score never uses the future; the first day of a window has
no baseline for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

import numpy as np

from twin.detect import DayScores, DetectView
from twin.history import Topology
from twin.kernels import anomaly as k
from twin.kernels.load import DAILY, Calendar

KINDS = ("offline", "stuck", "backwards", "jump", "level_shift", "leak", "valve_stuck_open", "elevator_drift",
         "off_schedule")
#: Kinds that need readings finer than a day; on a daily view they score NaN.
SUB_DAILY_KINDS = ("leak", "elevator_drift", "off_schedule")


@dataclass(frozen=True)
class AnomalyParams:
    """The detectors' parameters. Example: ``AnomalyParams(leak_lph=3.0)``."""

    offline_min_h: float = 1.0  #: silent hours that make a meter offline (at least one interval)
    stuck_electric_h: float = 13.0  #: hours of zeros on an electric meter in use
    stuck_water_h: float = 16.0  #: hours of zeros on a water meter whose household is at home
    stuck_water_alone_h: float = 48.0  #: hours of zeros on a water meter with no electric meter beside it
    stuck_min_use: float = 0.05  #: a meter is in use once a day total reached this (kWh or m3)
    presence_share: float = 0.4  #: electric day total over its usual day (upper quartile) that says "at home"
    presence_days: int = 3  #: clean electric days needed before presence can be told
    backwards_min: float = 1e-3  #: negative readings summing to this (kWh or m3) in a day
    jump_ratio: float = 25.0  #: largest reading against its usual daily largest
    jump_floor_per_h: float = 0.1  #: the usual largest is at least this per hour (kWh or m3)
    shift_ratio: float = 3.0  #: sustained change factor (up or down)
    shift_baseline_days: int = 7  #: days before the change that make the baseline
    shift_sustain_days: int = 2  #: days the change must last
    shift_min_days: int = 5  #: baseline days with a full reading needed to judge
    shift_min_base: float = 0.05  #: baselines below this (kWh or m3 a day) make no ratio
    night_start_h: float = 1.0  #: night window start, local hour
    night_end_h: float = 5.0  #: night window end, local hour
    leak_lph: float = 8.0  #: night minimum flow, litres per hour (a toilet cistern leak runs 10 to 30)
    leak_min_readings: int = 2  #: night readings needed to judge
    valve_settle_s: float = 900.0  #: after a close, flow this long is the pipe emptying
    valve_litres: float = 2.0  #: litres through a closed valve in a day
    drift_share: float = 0.015  #: rise of energy per trip over its baseline
    drift_baseline_days: int = 7  #: earlier unflagged days whose least energy per trip is the baseline
    drift_tolerance_kwh: float = 0.002  #: steps above the standby floor smaller than this are noise
    on_share: float = 0.1  #: a circuit reading above this share of its largest is on
    off_share: float = 0.1  #: a slot on in at most this share of earlier days is off-schedule
    off_schedule_h: float = 1.0  #: hours on in off slots in a day


@dataclass
class _Spans:
    """Runs of intervals per column, sorted: supply cut (relay open, valve closed)."""

    col: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    closed_at: np.ndarray  #: UTC time of the event that began each span
    twin: list[str]  #: the twin whose event began it (a valve, a meter's relay)


def _interval_starts(view: DetectView) -> np.ndarray:
    """True UTC start of each interval; a daily reading covers its local date."""
    cal = view.calendar
    if cal.interval_s < DAILY:
        return cal.start_utc + np.arange(cal.n_intervals, dtype=np.int64) * cal.interval_s
    tz = ZoneInfo(cal.timezone)
    return np.array([int(datetime.combine(d, time(), tzinfo=tz).timestamp()) for d in cal.days], dtype=np.int64)


def _spans(view: DetectView, kinds: tuple[str, ...], off_value: str, on_value: str, settle_s: float) -> _Spans:
    """Intervals wholly inside each off period (from `settle_s` after the off event to the
    on event) of events of `kinds`."""
    starts = _interval_starts(view)
    n = starts.shape[0]
    length = view.calendar.interval_s if view.calendar.interval_s < DAILY else DAILY
    open_at: dict[int, tuple[int, str]] = {}
    rows: list[tuple[int, int, int, int, str]] = []

    def close(col: int, t_off: int, twin: str, t_on: int | None) -> None:
        lo = int(np.searchsorted(starts, t_off + settle_s, side="left"))
        hi = n if t_on is None else int(np.searchsorted(starts, t_on - length, side="right"))
        if hi > lo:
            rows.append((col, lo, hi, t_off, twin))

    for e in view.events:
        if e.kind not in kinds or e.column < 0:
            continue
        if e.value == off_value and e.column not in open_at:
            open_at[e.column] = (e.t_utc, e.twin)
        elif e.value == on_value and e.column in open_at:
            t_off, twin = open_at.pop(e.column)
            close(e.column, t_off, twin, e.t_utc)
    for col, (t_off, twin) in open_at.items():
        close(col, t_off, twin, None)
    rows.sort()
    return _Spans(np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64),
                  np.array([r[2] for r in rows], dtype=np.int64), np.array([r[3] for r in rows], dtype=np.int64),
                  [r[4] for r in rows])


def _merged_ptr(spans: _Spans, n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of each column's spans, overlaps merged (day_features wants them disjoint)."""
    lo_out: list[int] = []
    hi_out: list[int] = []
    ptr = np.zeros(n_cols + 1, dtype=np.int64)
    counts = np.zeros(n_cols, dtype=np.int64)
    last_col = -1
    for c, lo, hi in zip(spans.col.tolist(), spans.lo.tolist(), spans.hi.tolist(), strict=True):
        if c == last_col and lo <= hi_out[-1]:
            hi_out[-1] = max(hi_out[-1], hi)
            continue
        lo_out.append(lo)
        hi_out.append(hi)
        counts[c] += 1
        last_col = c
    ptr[1:] = np.cumsum(counts)
    return ptr, np.array(lo_out, dtype=np.int64), np.array(hi_out, dtype=np.int64)


def _nan_scores(n_cols: int, n_days: int) -> np.ndarray:
    return np.full((n_cols, n_days), np.nan, dtype=np.float32)


def _hm(t: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz=tz).strftime("%m-%d %H:%M")


def anomaly_scores(view: DetectView, params: AnomalyParams | None = None) -> dict[str, DayScores]:
    """Every anomaly kind's scores over `view` (see the module docstring for each rule)."""
    p = params or AnomalyParams()
    cal = view.calendar
    matrix = np.ascontiguousarray(view.matrix, dtype=np.float32)
    n_cols, n_days = matrix.shape[0], len(cal.days)
    cols = view.topology.columns
    interval_h = cal.interval_s / 3600.0
    daily = cal.interval_s >= DAILY
    tz = ZoneInfo(cal.timezone)
    index = column_index(view.topology)

    # one pass over the matrix
    valve_cuts = _spans(view, ("valve",), "closed", "open", 0.0)
    relay_cuts = _spans(view, ("relay",), "open", "closed", 0.0)
    merged = _Spans(np.concatenate([relay_cuts.col, valve_cuts.col]), np.concatenate([relay_cuts.lo, valve_cuts.lo]),
                    np.concatenate([relay_cuts.hi, valve_cuts.hi]), np.zeros(0, dtype=np.int64), [])
    order = np.lexsort((merged.lo, merged.col))
    merged = _Spans(merged.col[order], merged.lo[order], merged.hi[order], merged.closed_at, [])
    ptr, span_lo, span_hi = _merged_ptr(merged, n_cols)
    shape = (n_cols, n_days)
    missing = np.empty(shape, dtype=np.int32)
    silent = np.empty(shape, dtype=np.int32)
    zero_run = np.empty(shape, dtype=np.int32)
    negative = np.empty(shape, dtype=np.float32)
    rate_max = np.empty(shape, dtype=np.float32)
    total = np.empty(shape, dtype=np.float64)
    night_min = np.empty(shape, dtype=np.float32)
    night_n = np.empty(shape, dtype=np.int32)
    if n_cols and n_days:
        night_of, night_ptr, night_idx = _night(cal, p, interval_h, daily)
        k.day_features(matrix, cal.day_bounds, night_of, night_ptr, night_idx, index.water, ptr, span_lo, span_hi,
                       missing, silent, zero_run, negative, rate_max, total, night_min, night_n)

    # the rules of a meter's own days
    offline = np.empty(shape, dtype=np.float32)
    back = np.empty(shape, dtype=np.float32)
    jump = np.empty(shape, dtype=np.float32)
    usual = np.empty(n_cols, dtype=np.float64)
    leak = np.empty(shape, dtype=np.float32)
    first_use = np.empty(n_cols, dtype=np.int64)
    reach = np.empty(n_cols, dtype=np.bool_)
    home = np.empty(shape, dtype=np.bool_)
    clean_days = np.empty(shape, dtype=np.float64)
    divisor = np.empty(n_cols, dtype=np.float64)
    k.row_scores(cal.day_bounds, missing, silent, zero_run, negative, rate_max, total, night_min, night_n, index.meter,
                 index.water, index.beside_water, ptr, span_lo, span_hi, interval_h, p.stuck_min_use,
                 min(p.stuck_electric_h, p.stuck_water_h), p.stuck_electric_h, p.presence_days, p.presence_share,
                 np.float32(p.backwards_min), np.float32(p.jump_ratio), p.jump_floor_per_h * interval_h,
                 p.leak_min_readings, not daily, offline, back, jump, usual, leak, first_use, reach, home, clean_days,
                 divisor)

    # the rules that need the peers
    stuck = np.empty(shape, dtype=np.float32)
    peer_total = np.empty((index.n_groups, n_days), dtype=np.float64)
    low = np.empty(shape, dtype=np.float32)
    high = np.empty(shape, dtype=np.float32)
    shift = np.empty(shape, dtype=np.float32)
    needs_log = np.empty(shape, dtype=np.bool_)
    k.group_scores(index.order, index.cuts, cal.day_bounds, missing, zero_run, total, clean_days, divisor, index.meter,
                   index.water, index.electric_of, home, first_use, reach, interval_h,
                   p.stuck_electric_h / p.stuck_water_alone_h, p.stuck_electric_h / p.stuck_water_h,
                   p.shift_baseline_days, p.shift_sustain_days, p.shift_min_base, p.shift_min_days, stuck, peer_total,
                   low, high, shift, needs_log)
    at = np.flatnonzero(needs_log)
    with np.errstate(all="ignore"):  # the same float32 log as numpy over the whole array, to the bit
        shift.flat[at] = np.maximum(np.maximum(np.log(low.flat[at]), -np.log(high.flat[at])), 0.0)

    group = index.group
    per_day = np.diff(cal.day_bounds)
    out: dict[str, DayScores] = {}
    out["offline"] = DayScores("offline", offline, max(p.offline_min_h, interval_h),
                               lambda c, d: f"no reading for {silent[c, d] * interval_h:g} h ({missing[c, d]} of "
                                            f"{int(per_day[d])} readings of the day missing)")
    out["stuck"] = DayScores("stuck", stuck, p.stuck_electric_h,  # water scores rescaled to the electric threshold
                             lambda c, d: f"reads 0 for {zero_run[c, d] * interval_h:g} h while its building's "
                                          f"{cols[c].kind.replace('_', ' ')}s used a median "
                                          f"{peer_total[group[c], d]:.3g} {cols[c].unit} that day")
    out["backwards"] = DayScores("backwards", back, p.backwards_min,
                                 lambda c, d: f"register ran back {negative[c, d]:.3g} {cols[c].unit} in the day")
    out["jump"] = DayScores("jump", jump, p.jump_ratio,
                            lambda c, d: f"a reading of {rate_max[c, d]:.4g} {cols[c].unit} against a usual daily "
                                         f"largest of {usual[c]:.3g}")

    def shift_evidence(c: int, d: int) -> str:
        up = low[c, d] > 1
        ratio = low[c, d] if up else high[c, d]
        return (f"{'up' if up else 'down'} to {ratio:.2f} x its usual day for {p.shift_sustain_days} days "
                f"(peers' day effect removed)")

    out["level_shift"] = DayScores("level_shift", shift, math.log(p.shift_ratio), shift_evidence)
    out["leak"] = DayScores("leak", leak, p.leak_lph,
                            lambda c, d: f"water never stopped at night: at least {leak[c, d]:.1f} l/h every "
                                         f"interval from {p.night_start_h:02g}:00 to {p.night_end_h:02g}:00")
    out["valve_stuck_open"] = _valve(view, matrix, valve_cuts, p, tz)
    out["elevator_drift"] = _drift(view, matrix, index.lifts, p, daily)
    out["off_schedule"] = _off_schedule(view, matrix, index.circuits, p, daily)
    return out


def _night(cal: Calendar, p: AnomalyParams, interval_h: float,
           daily: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """day_features' night window: per interval, and each day's night intervals (CSR)."""
    night = np.zeros(cal.n_slots, dtype=np.bool_)
    if not daily:
        slot_h = np.arange(cal.n_slots) * interval_h
        night[:] = (slot_h >= p.night_start_h) & (slot_h + interval_h <= p.night_end_h)
    night_of = night[cal.slot]
    night_idx = np.flatnonzero(night_of).astype(np.int64)
    return night_of, np.searchsorted(night_idx, cal.day_bounds).astype(np.int64), night_idx


@dataclass(frozen=True)
class ColumnIndex:
    """What the rules need to know of the columns, as arrays; built once per topology."""

    kind: np.ndarray  #: str [columns]: twin kind
    sub: np.ndarray  #: bool [columns]: role sub
    group: np.ndarray  #: int64 [columns]: peer group (building and kind)
    n_groups: int  #: number of peer groups
    electric_of: np.ndarray  #: int64 [columns]: a water meter's room's electric meter, else -1
    water: np.ndarray  #: bool [columns]: water sub-meter
    meter: np.ndarray  #: bool [columns]: electric or water sub-meter (stuck, level_shift)
    beside_water: np.ndarray  #: bool [columns]: some water meter's room's electric meter (presence)
    order: np.ndarray  #: int64 [columns]: columns sorted by group
    cuts: np.ndarray  #: int64 [groups + 1]: group g is order[cuts[g]:cuts[g + 1]]
    lifts: np.ndarray  #: int64: the elevators' columns
    circuits: np.ndarray  #: int64: the shared circuits' columns


_INDEX: dict[int, tuple[Topology, ColumnIndex]] = {}


def column_index(topology: Topology) -> ColumnIndex:
    """The ColumnIndex of a topology, cached by identity (topologies are not changed once
    built; a few are kept)."""
    hit = _INDEX.get(id(topology))
    if hit is not None and hit[0] is topology:
        return hit[1]
    cols = topology.columns
    keys: dict[tuple[str | None, str], int] = {}
    group = np.array([keys.setdefault((c.building, c.kind), len(keys)) for c in cols], dtype=np.int64)
    electric_of_room: dict[str, int] = {}
    for i, c in enumerate(cols):
        if c.kind == "electric_meter" and c.role == "sub" and c.room:
            electric_of_room.setdefault(c.room, i)
    electric_of = np.array([electric_of_room.get(c.room, -1) if c.kind == "water_meter" and c.room else -1
                            for c in cols], dtype=np.int64)
    kind = np.array([c.kind for c in cols], dtype="<U16")
    sub = np.array([c.role == "sub" for c in cols], dtype=np.bool_)
    water = (kind == "water_meter") & sub
    beside_water = np.zeros(len(cols), dtype=np.bool_)
    beside_water[electric_of[electric_of >= 0]] = True
    order = np.argsort(group, kind="stable").astype(np.int64)
    cuts = np.searchsorted(group[order], np.arange(len(keys) + 1)).astype(np.int64)
    index = ColumnIndex(kind, sub, group, len(keys), electric_of, water, ((kind == "electric_meter") & sub) | water,
                        beside_water, order, cuts, np.flatnonzero(kind == "elevator").astype(np.int64),
                        np.flatnonzero(kind == "shared_circuit").astype(np.int64))
    if len(_INDEX) >= 8:
        _INDEX.clear()
    _INDEX[id(topology)] = (topology, index)
    return index


def _valve(view: DetectView, matrix: np.ndarray, closed: _Spans, p: AnomalyParams, tz: ZoneInfo) -> DayScores:
    n_cols, n_days = matrix.shape[0], len(view.calendar.days)
    scores = _nan_scores(n_cols, n_days)
    if closed.col.size == 0 or n_days == 0:
        return DayScores("valve_stuck_open", scores, p.valve_litres)
    settled = _spans(view, ("valve",), "closed", "open", p.valve_settle_s)
    sums = np.zeros((settled.col.size, n_days), dtype=np.float64)
    counts = np.zeros((settled.col.size, n_days), dtype=np.int32)
    k.span_day_sums(matrix, settled.col, settled.lo, settled.hi, view.calendar.day_bounds, sums, counts)
    closed_since: dict[tuple[int, int], tuple[str, int]] = {}
    for s in range(settled.col.size):
        c = int(settled.col[s])
        for d in np.flatnonzero(counts[s] > 0).tolist():
            litres = float(sums[s, d]) * 1000.0
            prior = scores[c, d]
            scores[c, d] = litres if np.isnan(prior) else prior + litres
            closed_since[(c, d)] = (settled.twin[s], int(settled.closed_at[s]))
    cols = view.topology.columns

    def evidence(c: int, d: int) -> str:
        valve, since = closed_since.get((c, d), ("its valve", 0))
        return (f"{scores[c, d]:.0f} l flowed through {cols[c].id} while {valve} reported closed "
                f"(closed {_hm(since, tz)})")

    return DayScores("valve_stuck_open", scores, p.valve_litres, evidence)


def _drift(view: DetectView, matrix: np.ndarray, lifts: np.ndarray, p: AnomalyParams, daily: bool) -> DayScores:
    n_cols, n_days = matrix.shape[0], len(view.calendar.days)
    scores = _nan_scores(n_cols, n_days)
    if daily or lifts.size == 0 or n_days == 0:
        return DayScores("elevator_drift", scores, p.drift_share)
    floor = np.zeros((lifts.size, n_days), dtype=np.float32)
    quantum = np.zeros((lifts.size, n_days), dtype=np.float32)
    k.trip_quanta(matrix, lifts, view.calendar.day_bounds, p.drift_tolerance_kwh, floor, quantum)
    ratio = np.zeros_like(quantum)
    base = np.zeros_like(quantum)
    trip = np.zeros_like(quantum)
    k.drift_ratios(quantum, p.drift_share, p.drift_baseline_days, ratio, base, trip)
    scores[lifts] = ratio - 1.0
    row = {int(c): i for i, c in enumerate(lifts)}

    def evidence(c: int, d: int) -> str:
        i = row[c]
        return (f"energy per trip {trip[i, d] * 1000:.1f} Wh against {base[i, d] * 1000:.1f} Wh before "
                f"(+{(ratio[i, d] - 1) * 100:.1f}%): maintenance due")

    return DayScores("elevator_drift", scores, p.drift_share, evidence)


def _off_schedule(view: DetectView, matrix: np.ndarray, circuits: np.ndarray, p: AnomalyParams,
                  daily: bool) -> DayScores:
    cal = view.calendar
    n_cols, n_days = matrix.shape[0], len(cal.days)
    scores = _nan_scores(n_cols, n_days)
    if daily or circuits.size == 0 or n_days == 0:
        return DayScores("off_schedule", scores, p.off_schedule_h)
    hours = np.zeros((circuits.size, n_days), dtype=np.float32)
    off_slots = np.zeros((circuits.size, n_days), dtype=np.int32)
    k.schedule_scores(matrix, circuits, cal.day_bounds, cal.slot, cal.n_slots, p.on_share, p.off_share,
                      p.off_schedule_h, cal.interval_h, hours, off_slots)
    scores[circuits] = hours
    row = {int(c): i for i, c in enumerate(circuits)}
    interval_h = cal.interval_h

    def evidence(c: int, d: int) -> str:
        i = row[c]
        return (f"on for {hours[i, d]:g} h in the {off_slots[i, d] * interval_h:g} h of the day it is usually off")

    return DayScores("off_schedule", scores, p.off_schedule_h, evidence)


__all__ = ["KINDS", "SUB_DAILY_KINDS", "AnomalyParams", "ColumnIndex", "anomaly_scores", "column_index"]
