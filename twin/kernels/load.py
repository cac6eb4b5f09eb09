"""Load analytics over the interval matrix: totals by local day, week, month and year, the
split by time-of-use band, peak demand and its time, load factor, the typical day per
meter and per building, the month against the same month last year, and each master
meter's energy balance by day.

Input is energy (kWh, or m3 for water) per twin per interval, float32 [twins, intervals],
NaN for missing, at any interval a history holds (60 s to 86400 s). A `Calendar`, built
once in Python with zoneinfo, cuts the intervals into site-local days (contiguous runs) and
gives each interval its slot of the day; the kernels then take only int arrays. Only three
kernels read the whole matrix, each once: `day_stats` (totals, missing counts, peaks),
`band_day_totals` and `profile_means`; `day_band_profile_stats` runs the three over each
day of each twin while it is in cache, one pass for all three (`day_band_profile`).
Everything else rolls up their [twins, days] results, which are about 100 times smaller.

Rules that hold at every resolution:
- An interval belongs to the local day (and ISO week from Monday, month, year) holding its
  start, as billing and tariffs take it. A daily reading (interval_s = 86400, starting at
  UTC midnight as the history format puts it) belongs to the local date holding its
  midpoint, which for zones within 12 hours of UTC is its UTC date: for Asia/Shanghai it
  covers 08:00 to 08:00 of that date and the next.
- Totals count a missing reading as 0; each total comes with the number of missing
  readings in its period and the number of intervals the window holds of it (`intervals`)
  and the full period would hold (`expected`: 92 or 100 on a DST day), so a caller can tell
  a short total from a low one.
- Weekends are Saturday and Sunday; public holidays and make-up workdays (调休) are not
  known here.
- Peak demand is the largest interval energy divided by the interval in hours (kW, or
  m3/h), with the UTC start of that interval (the first one, on ties). Load factor is the
  mean over intervals with a reading divided by the peak. A period with no reading has
  NaN peak, load factor and peak time -1.

What the outputs mean at coarse resolution:
- Hourly: peaks are hourly mean demand (lower than 15-minute peaks); a band whose window
  starts on the half hour takes the whole hour of the band in force at its start, as the
  bill does.
- Daily: a day's peak is that day's mean power and its time the reading's start, so a
  day's load factor is 1; only peaks and load factors over weeks, months and years (the
  highest day) say something. The band split puts the whole day in the band in force at
  the reading's start: meaningless, do not use it. The typical profile has one slot: the
  mean day on weekdays and on weekends.

Example::

    h = open_history("out/demo")
    matrix = h.read(h.start, h.end)
    cal = local_calendar(h.start, matrix.shape[1], h.interval_s, h.topology.timezone)
    site = site_index(h.topology)                         # once per topology
    days = day_summary(matrix, cal)                       # one pass over the matrix
    # or with the split by band and the typical day, still one pass:
    # days, bands, profile = day_band_profile(matrix, cal, price_tables(...).band)
    months = period_summary(days, cal, "month")          # totals, missing, peaks, load factor
    balance = energy_balance(days, site)                  # loss by master meter and day
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
from numba import njit, prange

from twin.history import History, Topology
from twin.kernels.prefetch import prefetch

MAX_BANDS = 8
DAILY = 86400
_FAST = {"nsz", "arcp", "contract", "reassoc"}  # reassociate sums; keep NaN and inf semantics
_ABS = np.int32(0x7FFFFFFF)  # float32 bits without the sign
_INF_BITS = np.int32(0x7F800000)  # above this (sign off): NaN
_LOWEST = np.int32(-(2**31))  # the sort key NaN gets: below every number
_AHEAD = 1024  # readings (4 KB) ahead that the whole-matrix kernels ask the cache for
Period = Literal["day", "week", "month", "year"]
PERIODS: tuple[Period, ...] = ("day", "week", "month", "year")


# -- the calendar ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Periods:
    """Site-local periods of one kind (weeks, say) over a calendar's days. Example: two
    ISO weeks over 10 days: ``Periods("week", ["2026-W01", "2026-W02"], array([0, 3, 10]),
    array([288, 672]), array([672, 672]))``."""

    kind: str  #: day, week, month or year
    labels: list[str]  #: "2026-01-05", "2026-W02", "2026-01", "2026"
    day_bounds: np.ndarray  #: int64 [periods + 1]: period p is days day_bounds[p]:day_bounds[p + 1]
    intervals: np.ndarray  #: int64 [periods]: intervals of the period inside the window
    expected: np.ndarray  #: int64 [periods]: intervals of the whole period (DST days counted as they are)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def covered(self) -> np.ndarray:
        """bool [periods]: the window holds the whole period."""
        return self.intervals == self.expected


@dataclass(frozen=True, slots=True)
class Calendar:
    """The site-local calendar of a run of intervals; build it with `local_calendar`."""

    start_utc: int  #: UTC epoch seconds of the first interval's start
    interval_s: int  #: seconds per interval
    timezone: str  #: IANA zone of the site
    n_intervals: int  #: intervals in the window
    days: list[date]  #: local date of each day, in order
    day_bounds: np.ndarray  #: int64 [days + 1]: day d is intervals day_bounds[d]:day_bounds[d + 1]
    n_slots: int  #: slots in a day: 86400 / interval_s
    slot: np.ndarray  #: int64 [intervals]: local wall-clock time of the start // interval (0 when daily)
    day_slot0: np.ndarray  #: int64 [days]: slot of a day's first interval
    day_regular: np.ndarray  #: bool [days]: slots run day_slot0, day_slot0 + 1, ... (no DST jump)
    weekend: np.ndarray  #: bool [days]: Saturday or Sunday
    periods: dict[str, Periods]  #: by kind: day, week, month, year

    @property
    def interval_h(self) -> float:
        """Hours per interval: divides an interval's energy into mean power."""
        return self.interval_s / 3600.0


def _midnight_utc(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, clock(), tzinfo=tz).timestamp())


def _wall_minute(t: int, tz: ZoneInfo) -> int:
    local = datetime.fromtimestamp(t, tz=tz)
    return local.hour * 60 + local.minute


def _period_key(day: date, kind: str) -> tuple[int, int]:
    if kind == "week":
        iso = day.isocalendar()
        return iso.year, iso.week
    if kind == "month":
        return day.year, day.month
    return day.year, 0


def _period_span(key: tuple[int, int], kind: str) -> tuple[date, date]:
    """First local date of a period and the first date after it."""
    if kind == "week":
        first = date.fromisocalendar(key[0], key[1], 1)
        return first, first + timedelta(days=7)
    if kind == "month":
        first = date(key[0], key[1], 1)
        return first, date(key[0] + key[1] // 12, key[1] % 12 + 1, 1)
    return date(key[0], 1, 1), date(key[0] + 1, 1, 1)


def _period_label(key: tuple[int, int], kind: str) -> str:
    if kind == "week":
        return f"{key[0]}-W{key[1]:02d}"
    if kind == "month":
        return f"{key[0]}-{key[1]:02d}"
    return f"{key[0]}"


def local_calendar(start_utc: int, n_intervals: int, interval_s: int, timezone: str) -> Calendar:
    """The site-local days, slots and periods of `n_intervals` intervals from `start_utc`;
    costs a few zoneinfo calls per day, not per interval."""
    if interval_s <= 0 or DAILY % interval_s:
        raise ValueError(f"interval_s {interval_s} must divide a day (86400 s)")
    if n_intervals < 0:
        raise ValueError(f"n_intervals {n_intervals} must be >= 0")
    tz = ZoneInfo(timezone)
    starts = start_utc + np.arange(n_intervals, dtype=np.int64) * interval_s
    anchor = starts + (DAILY // 2 if interval_s == DAILY else 0)
    slot_minutes = interval_s // 60
    slot = np.zeros(n_intervals, dtype=np.int64)
    days: list[date] = []
    bounds = [0]
    expected: list[int] = []
    t = 0
    while t < n_intervals:
        day = datetime.fromtimestamp(int(anchor[t]), tz=tz).date()
        m0, m1 = _midnight_utc(day, tz), _midnight_utc(day + timedelta(days=1), tz)
        b = int(np.searchsorted(anchor, m1, side="left"))
        b = max(b, t + 1)
        if interval_s < DAILY:
            offset0 = datetime.fromtimestamp(m0, tz=tz).utcoffset()
            offset1 = datetime.fromtimestamp(m1 - 1, tz=tz).utcoffset()
            if offset0 == offset1:  # no DST change inside the day: wall clock = elapsed time
                minutes = (starts[t:b] - m0) // 60
            else:
                minutes = np.array([_wall_minute(int(s), tz) for s in starts[t:b]], dtype=np.int64)
            slot[t:b] = np.clip(minutes // slot_minutes, 0, DAILY // interval_s - 1)  # [0, slots)
            expected.append(max(1, round((m1 - m0) / interval_s)))
        else:
            expected.append(1)
        days.append(day)
        bounds.append(b)
        t = b
    day_bounds = np.array(bounds, dtype=np.int64)
    n_days = len(days)
    first = day_bounds[:-1]
    day_slot0 = slot[first] if n_days else np.zeros(0, dtype=np.int64)
    day_regular = np.ones(n_days, dtype=np.bool_)
    for d in range(n_days):
        run = slot[day_bounds[d]:day_bounds[d + 1]]
        day_regular[d] = bool(np.all(run == run[0] + np.arange(run.shape[0])))
    weekend = np.array([d.weekday() >= 5 for d in days], dtype=np.bool_)
    counts = np.diff(day_bounds)
    periods = {"day": Periods("day", [d.isoformat() for d in days], np.arange(n_days + 1, dtype=np.int64),
                              counts.copy(), np.array(expected, dtype=np.int64))}
    for kind in ("week", "month", "year"):
        keys = [_period_key(d, kind) for d in days]
        cuts = [0] + [i for i in range(1, n_days) if keys[i] != keys[i - 1]] + [n_days] if n_days else [0]
        labels, full = [], []
        for p in range(len(cuts) - 1):
            key = keys[cuts[p]]
            labels.append(_period_label(key, kind))
            first_day, after = _period_span(key, kind)
            if interval_s < DAILY:
                full.append(round((_midnight_utc(after, tz) - _midnight_utc(first_day, tz)) / interval_s))
            else:
                full.append((after - first_day).days)
        day_cuts = np.array(cuts, dtype=np.int64)
        periods[kind] = Periods(kind, labels, day_cuts, np.add.reduceat(counts, day_cuts[:-1]) if n_days else
                                np.zeros(0, dtype=np.int64), np.array(full, dtype=np.int64))
    return Calendar(start_utc, interval_s, timezone, n_intervals, days, day_bounds, DAILY // interval_s, slot,
                    day_slot0, day_regular, weekend, periods)


def calendar_of_history(history: History, start_utc: int, end_utc: int) -> Calendar:
    """The calendar of `history.read(start_utc, end_utc)`."""
    return local_calendar(start_utc, (end_utc - start_utc) // history.interval_s, history.interval_s,
                          history.topology.timezone)


# -- kernels over the whole matrix ----------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _ask_ahead(row: np.ndarray, a: int, b: int) -> None:
    """Prefetch the readings `_AHEAD` past row[a:b], one hint per 64-byte line: the loops
    over a day do enough work per reading that the hardware prefetcher alone falls behind
    (day_stats took 3.1 times numpy.sum without, 1.9 with, on one thread)."""
    for t in range(a + _AHEAD, b + _AHEAD, 16):
        prefetch(row, t)


@njit(cache=True, nogil=True, inline="always")
def _sort_key(x: np.int32) -> np.int32:
    """float32 bits (as int32) to an int32 that orders as the float does; -0.0 and 0.0
    get the same key. NaN must be screened out before: its key is meaningless."""
    sign = np.int32(x >> np.int32(31))  # -1 for negative floats, else 0
    # every step cast back: numba widens int32 arithmetic to int64, which vectorises at half
    # the width, or not at all
    return np.int32(np.int32(x ^ np.int32(sign & _ABS)) - sign)


@njit(cache=True, nogil=True, inline="always")
def _day_figures(seg: np.ndarray, seg_bits: np.ndarray) -> tuple[float, np.int32, np.int32]:
    """One day of one twin: (total with missing as 0, missing count, index in seg of the
    first peak reading, len(seg) when none): three vectorised loops over the slice.

    The peak is found on the float's bits turned into an int that sorts as the float does
    (NaN lowest): integer max and min vectorise where a float max that must skip NaN does
    not."""
    n = np.int32(seg.shape[0])
    total = 0.0
    for i in range(n):
        e = seg[i]
        total += np.float64(e) if e == e else 0.0
    top = _LOWEST
    gaps = np.int32(0)
    for i in range(n):
        x = seg_bits[i]
        nan = np.int32(x & _ABS) > _INF_BITS
        gaps = np.int32(gaps + (np.int32(1) if nan else np.int32(0)))
        top = np.int32(max(top, _LOWEST if nan else _sort_key(x)))
    at = n
    for i in range(n):  # the first interval holding the peak: an integer min, vectorised
        x = seg_bits[i]
        at = np.int32(min(at, np.int32(i) if _sort_key(x) == top else n))
    return total, gaps, at if gaps < n else n


@njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def day_stats(
    matrix: np.ndarray,  # float32 [twins, intervals], NaN missing
    bits: np.ndarray,  # int32 [twins, intervals]: the same memory (matrix.view(np.int32))
    day_bounds: np.ndarray,  # int64 [days + 1]
    totals: np.ndarray,  # float64 [twins, days] out: sum, missing as 0
    missing: np.ndarray,  # int32 [twins, days] out: NaN readings
    peak: np.ndarray,  # float32 [twins, days] out: largest reading, NaN when none
    peak_at: np.ndarray,  # int64 [twins, days] out: interval index of the first largest, -1 when none
) -> None:
    """Per twin and local day in one pass: total, missing count, peak reading and where
    (`_day_figures`). Each day's loops run over a slice already in cache (asked for
    `_AHEAD` readings before, by `_ask_ahead`)."""
    n_days = day_bounds.shape[0] - 1
    for m in prange(matrix.shape[0]):
        row = matrix[m]
        row_bits = bits[m]
        for d in range(n_days):
            a = day_bounds[d]
            b = day_bounds[d + 1]
            _ask_ahead(row, a, b)
            total, gaps, at = _day_figures(row[a:b], row_bits[a:b])
            totals[m, d] = total
            missing[m, d] = gaps
            peak[m, d] = row[a + at] if at < b - a else np.nan
            peak_at[m, d] = a + at if at < b - a else -1


@njit(cache=True, nogil=True)
def band_masks(band: np.ndarray, n_bands: int) -> np.ndarray:
    """float64 [tariffs, bands rounded up to 4, intervals]: 1.0 where a band is in force at
    an interval, else 0.0, per tariff row of `band` (int [tariffs, intervals]); bands past
    `n_bands` are never in force."""
    n_rows, n_int = band.shape
    masks = np.zeros((n_rows, (max(n_bands, 1) + 3) // 4 * 4, n_int))
    for r in range(n_rows):
        for t in range(n_int):
            if band[r, t] < n_bands:
                masks[r, band[r, t], t] = 1.0
    return masks


@njit(cache=True, nogil=True, inline="always")
def _four_band_sums(seg: np.ndarray, in0: np.ndarray, in1: np.ndarray, in2: np.ndarray,
                    in3: np.ndarray) -> tuple[float, float, float, float]:
    """Sums of seg (missing as 0) where each of four band masks (`band_masks`) is 1: one
    vectorised loop, a multiply-add by the mask per band and reading. A product 0 * inf
    would turn the other bands NaN, so a day with an infinite reading is summed again with
    a select per band and reading instead (the same sums, slower)."""
    u0 = u1 = u2 = u3 = 0.0
    for i in range(seg.shape[0]):
        e = seg[i]
        x = np.float64(e) if e == e else 0.0
        u0 += x * in0[i]
        u1 += x * in1[i]
        u2 += x * in2[i]
        u3 += x * in3[i]
    if u0 == u0 and u1 == u1 and u2 == u2 and u3 == u3:
        return u0, u1, u2, u3
    u0 = u1 = u2 = u3 = 0.0
    for i in range(seg.shape[0]):
        e = seg[i]
        x = np.float64(e) if e == e else 0.0
        u0 += x if in0[i] != 0.0 else 0.0
        u1 += x if in1[i] != 0.0 else 0.0
        u2 += x if in2[i] != 0.0 else 0.0
        u3 += x if in3[i] != 0.0 else 0.0
    return u0, u1, u2, u3


@njit(cache=True, nogil=True, inline="always")
def _day_bands(seg: np.ndarray, mask: np.ndarray, a: int, b: int, n_bands: int, out: np.ndarray) -> None:
    """out[band] = energy of seg = row[a:b] in each band, four bands a loop (`band_masks`)."""
    if n_bands <= 4:  # 尖峰平谷: one loop, no loop over the results
        u0, u1, u2, u3 = _four_band_sums(seg, mask[0, a:b], mask[1, a:b], mask[2, a:b], mask[3, a:b])
        out[0] = u0
        if n_bands > 1:
            out[1] = u1
        if n_bands > 2:
            out[2] = u2
        if n_bands > 3:
            out[3] = u3
        return
    for b0 in range(0, n_bands, 4):
        u = _four_band_sums(seg, mask[b0, a:b], mask[b0 + 1, a:b], mask[b0 + 2, a:b], mask[b0 + 3, a:b])
        for j in range(min(4, n_bands - b0)):
            out[b0 + j] = u[j]


@njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def band_day_totals(
    matrix: np.ndarray,  # float32 [twins, intervals]
    day_bounds: np.ndarray,  # int64 [days + 1]
    band: np.ndarray,  # int8 [tariffs, intervals] band in force (twin.tariffs.PriceTables.band)
    tariff_of: np.ndarray,  # int64 [twins] row of `band` for each twin
    n_bands: int,
    out: np.ndarray,  # float64 [twins, days, n_bands] out: energy per band, missing as 0
) -> None:
    """Per twin, local day and time-of-use band: the energy measured in that band.

    Speed: each day's readings are summed once per four bands, each band a multiply-add by
    a mask of where it is in force (`band_masks`), in one vectorised loop over the day;
    how the bands fall (runs of hours, or a change every interval) does not matter. A sum
    per band and day adds its readings in the vectoriser's order (as `day_stats` does), not
    run by run."""
    n_days = day_bounds.shape[0] - 1
    masks = band_masks(band, n_bands)
    for m in prange(matrix.shape[0]):
        row = matrix[m]
        mask = masks[tariff_of[m]]
        for d in range(n_days):
            a = day_bounds[d]
            b = day_bounds[d + 1]
            _ask_ahead(row, a, b)
            _day_bands(row[a:b], mask, a, b, n_bands, out[m, d])


@njit(cache=True, nogil=True, inline="always")
def _add_profile_day(row: np.ndarray, a: int, b: int, regular: bool, c0: int, cell: np.ndarray, sums: np.ndarray,
                     counts: np.ndarray) -> None:
    """Add the readings row[a:b] of one day to their cells' sums and counts."""
    if regular:
        seg = row[a:b]
        s = sums[c0:c0 + (b - a)]
        k = counts[c0:c0 + (b - a)]
        for i in range(seg.shape[0]):
            e = seg[i]
            ok = e == e
            s[i] += np.float64(e) if ok else 0.0
            k[i] += 1.0 if ok else 0.0
    else:  # a DST day: walk its cells one by one
        for t in range(a, b):
            e = row[t]
            if e == e:
                sums[cell[t]] += e
                counts[cell[t]] += 1.0


@njit(cache=True, nogil=True, inline="always")
def _profile_row(sums: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
    for c in range(sums.shape[0]):
        out[c] = sums[c] / counts[c] if counts[c] > 0 else np.nan


@njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def profile_means(
    matrix: np.ndarray,  # float32 [twins, intervals]
    day_bounds: np.ndarray,  # int64 [days + 1]
    day_cell0: np.ndarray,  # int64 [days]: cell of the day's first interval (weekend * n_slots + slot)
    day_regular: np.ndarray,  # bool [days]: cells run day_cell0, day_cell0 + 1, ...
    cell: np.ndarray,  # int64 [intervals]: weekend * n_slots + slot, for irregular days
    n_cells: int,  # 2 * n_slots
    out: np.ndarray,  # float32 [twins, n_cells] out: mean reading per cell, NaN when none
) -> None:
    """Per twin: the mean reading at each slot of the local day, weekdays in cells
    0..n_slots-1 and weekends in n_slots..2*n_slots-1."""
    n_days = day_bounds.shape[0] - 1
    for m in prange(matrix.shape[0]):
        row = matrix[m]
        sums = np.zeros(n_cells)
        counts = np.zeros(n_cells)
        for d in range(n_days):
            a = day_bounds[d]
            b = day_bounds[d + 1]
            _ask_ahead(row, a, b)
            _add_profile_day(row, a, b, day_regular[d], day_cell0[d], cell, sums, counts)
        _profile_row(sums, counts, out[m])


@njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def day_band_profile_stats(
    matrix: np.ndarray,  # float32 [twins, intervals], NaN missing
    bits: np.ndarray,  # int32 [twins, intervals]: the same memory (matrix.view(np.int32))
    day_bounds: np.ndarray,  # int64 [days + 1]
    band: np.ndarray,  # int8 [tariffs, intervals] band in force
    tariff_of: np.ndarray,  # int64 [twins] row of `band` for each twin
    n_bands: int,
    day_cell0: np.ndarray,  # int64 [days]: cell of the day's first interval (weekend * n_slots + slot)
    day_regular: np.ndarray,  # bool [days]: cells run day_cell0, day_cell0 + 1, ...
    cell: np.ndarray,  # int64 [intervals]: weekend * n_slots + slot, for irregular days
    totals: np.ndarray,  # float64 [twins, days] out: as day_stats
    missing: np.ndarray,  # int32 [twins, days] out
    peak: np.ndarray,  # float32 [twins, days] out
    peak_at: np.ndarray,  # int64 [twins, days] out
    band_out: np.ndarray,  # float64 [twins, days, n_bands] out: as band_day_totals
    profile_out: np.ndarray,  # float32 [twins, 2 * n_slots] out: as profile_means
) -> None:
    """`day_stats`, `band_day_totals` and `profile_means` in one pass: each day of each
    twin is read from memory once and goes through the same loops as in those kernels
    while it is in cache, so the results are theirs, bit for bit."""
    n_days = day_bounds.shape[0] - 1
    n_cells = profile_out.shape[1]
    masks = band_masks(band, n_bands)
    for m in prange(matrix.shape[0]):
        row = matrix[m]
        row_bits = bits[m]
        mask = masks[tariff_of[m]]
        sums = np.zeros(n_cells)
        counts = np.zeros(n_cells)
        for d in range(n_days):
            a = day_bounds[d]
            b = day_bounds[d + 1]
            _ask_ahead(row, a, b)
            total, gaps, at = _day_figures(row[a:b], row_bits[a:b])
            totals[m, d] = total
            missing[m, d] = gaps
            peak[m, d] = row[a + at] if at < b - a else np.nan
            peak_at[m, d] = a + at if at < b - a else -1
            _day_bands(row[a:b], mask, a, b, n_bands, band_out[m, d])
            _add_profile_day(row, a, b, day_regular[d], day_cell0[d], cell, sums, counts)
        _profile_row(sums, counts, profile_out[m])


# -- kernels over [twins, days] results -----------------------------------------------------


@njit(cache=True, nogil=True, parallel=True)
def rollup_days(
    totals: np.ndarray,  # float64 [twins, days]
    missing: np.ndarray,  # int32 [twins, days]
    peak: np.ndarray,  # float32 [twins, days]
    peak_at: np.ndarray,  # int64 [twins, days]
    day_bounds: np.ndarray,  # int64 [periods + 1]: days of each period
    out_totals: np.ndarray,  # float64 [twins, periods] out
    out_missing: np.ndarray,  # int64 [twins, periods] out
    out_peak: np.ndarray,  # float32 [twins, periods] out: largest daily peak, NaN when none
    out_at: np.ndarray,  # int64 [twins, periods] out: its interval (the first on ties), -1 when none
) -> None:
    """Days to periods: sums of totals and missing counts, the largest peak and its interval."""
    for m in prange(totals.shape[0]):
        for p in range(day_bounds.shape[0] - 1):
            total = 0.0
            gaps = 0
            top = np.float32(np.nan)
            at = -1
            for d in range(day_bounds[p], day_bounds[p + 1]):
                total += totals[m, d]
                gaps += missing[m, d]
                v = peak[m, d]
                if v == v and (at < 0 or v > top):
                    top = v
                    at = peak_at[m, d]
            out_totals[m, p] = total
            out_missing[m, p] = gaps
            out_peak[m, p] = top
            out_at[m, p] = at


@njit(cache=True, nogil=True)
def group_sum(
    values: np.ndarray,  # float64 or float32 [twins, k]
    group: np.ndarray,  # int64 [twins]: group of each twin, -1 for none
    out: np.ndarray,  # float64 [groups, k] out: sum of the group's values, NaN skipped
    counts: np.ndarray,  # int64 [groups, k] out: twins that gave a value
) -> None:
    """Sum rows of `values` into their groups, skipping NaN."""
    out[:] = 0.0
    counts[:] = 0
    for m in range(values.shape[0]):
        g = group[m]
        if g < 0:
            continue
        for j in range(values.shape[1]):
            v = values[m, j]
            if v == v:
                out[g, j] += v
                counts[g, j] += 1


# -- the Python API -------------------------------------------------------------------------


def _matrix(matrix: np.ndarray, calendar: Calendar) -> np.ndarray:
    if matrix.ndim != 2 or matrix.shape[1] != calendar.n_intervals:
        raise ValueError(f"matrix shape {matrix.shape} does not match the calendar's {calendar.n_intervals} "
                         "intervals: give [twins, intervals] (History.read's view)")
    return np.ascontiguousarray(matrix, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class PeriodSummary:
    """Totals and peaks per twin and period; the derived figures are computed when read.
    Power is kW for electric twins, m3/h for water."""

    periods: Periods  #: the periods (labels, intervals, expected)
    start_utc: int  #: UTC start of interval 0
    interval_s: int  #: seconds per interval
    totals: np.ndarray  #: float64 [twins, periods]: energy, missing counted as 0
    missing: np.ndarray  #: int32 or int64 [twins, periods]: missing readings
    peak_kwh: np.ndarray  #: float32 [twins, periods]: largest interval reading, NaN when none
    peak_at: np.ndarray  #: int64 [twins, periods]: interval index of the peak (the first), -1 when none

    @property
    def peak_kw(self) -> np.ndarray:
        """float64 [twins, periods]: peak demand, the peak reading over the interval in hours."""
        return self.peak_kwh.astype(np.float64) * (3600.0 / self.interval_s)

    @property
    def peak_utc(self) -> np.ndarray:
        """int64 [twins, periods]: UTC start of the peak interval, -1 when none."""
        return np.where(self.peak_at >= 0, self.start_utc + self.peak_at * self.interval_s, -1)

    @property
    def present(self) -> np.ndarray:
        """int64 [twins, periods]: readings the window holds (intervals less missing)."""
        return self.periods.intervals[None, :] - self.missing

    @property
    def load_factor(self) -> np.ndarray:
        """float64 [twins, periods]: mean reading (over present ones) / peak reading; NaN
        when the period has no reading or its peak is not above 0."""
        present = self.present
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.totals / present
            return np.where((present > 0) & (self.peak_kwh > 0), mean / self.peak_kwh, np.nan)


def day_summary(matrix: np.ndarray, calendar: Calendar) -> PeriodSummary:
    """Totals, missing counts and peaks per twin and local day: one pass over the matrix."""
    energy = _matrix(matrix, calendar)
    n, n_days = energy.shape[0], len(calendar.days)
    totals = np.empty((n, n_days))
    missing = np.empty((n, n_days), dtype=np.int32)
    peak = np.empty((n, n_days), dtype=np.float32)
    peak_at = np.empty((n, n_days), dtype=np.int64)
    day_stats(energy, energy.view(np.int32), calendar.day_bounds, totals, missing, peak, peak_at)
    return PeriodSummary(calendar.periods["day"], calendar.start_utc, calendar.interval_s, totals, missing, peak,
                         peak_at)


def period_summary(days: PeriodSummary, calendar: Calendar, kind: Period) -> PeriodSummary:
    """Roll a `day_summary` up to local ISO weeks (Monday first), months or years."""
    if kind not in PERIODS:
        raise ValueError(f"period {kind!r} is not one of {', '.join(PERIODS)}")
    if days.periods.kind != "day":
        raise ValueError("period_summary rolls up a day_summary")
    if kind == "day":
        return days
    periods = calendar.periods[kind]
    shape = (days.totals.shape[0], len(periods))
    totals, missing = np.empty(shape), np.empty(shape, dtype=np.int64)
    peak, peak_at = np.empty(shape, dtype=np.float32), np.empty(shape, dtype=np.int64)
    rollup_days(days.totals, days.missing, days.peak_kwh, days.peak_at, periods.day_bounds, totals, missing, peak,
                peak_at)
    return PeriodSummary(periods, days.start_utc, days.interval_s, totals, missing, peak, peak_at)


def daily_totals(matrix: np.ndarray, start_utc: int, interval_s: int, timezone: str) -> PeriodSummary:
    """`day_summary` with the calendar built here: for one-off calls."""
    return day_summary(matrix, local_calendar(start_utc, matrix.shape[1], interval_s, timezone))


@dataclass(frozen=True, slots=True)
class BandTotals:
    """Energy per twin, period and time-of-use band."""

    periods: Periods  #: the periods
    band_names: list[str]  #: band index -> name ("band0".. when not given)
    kwh: np.ndarray  #: float64 [twins, periods, bands]: missing counted as 0


def _band_rows(energy: np.ndarray, calendar: Calendar, band: np.ndarray, tariff_of: np.ndarray | None,
               band_names: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`band` as int8 [tariffs, intervals], each twin's row of it, and the band names; the
    checks of `band_totals`."""
    bands = np.atleast_2d(np.asarray(band)).astype(np.int8)
    if bands.shape[1] != calendar.n_intervals:
        raise ValueError(f"band covers {bands.shape[1]} intervals, the calendar {calendar.n_intervals}")
    rows = np.zeros(energy.shape[0], dtype=np.int64) if tariff_of is None else np.asarray(tariff_of, np.int64)
    if rows.shape != (energy.shape[0],) or (rows.size and not 0 <= rows.min() <= rows.max() < bands.shape[0]):
        raise ValueError(f"tariff_of must give each of {energy.shape[0]} twins a row of band (0..{bands.shape[0] - 1})")
    n_bands = int(bands.max()) + 1 if bands.size else 1
    if band_names is not None:
        n_bands = max(n_bands, len(band_names))
    if bands.size and bands.min() < 0 or n_bands > MAX_BANDS:
        raise ValueError(f"band indexes must be 0..{MAX_BANDS - 1}")
    names = list(band_names) if band_names else []
    names += [f"band{i}" for i in range(len(names), n_bands)]
    return np.ascontiguousarray(bands), rows, names


def _by_period(by_day: np.ndarray, calendar: Calendar, kind: Period) -> tuple[Periods, np.ndarray]:
    periods = calendar.periods[kind]
    if kind != "day" and len(periods):
        return periods, np.add.reduceat(by_day, periods.day_bounds[:-1], axis=1)
    return periods, by_day


def band_totals(matrix: np.ndarray, calendar: Calendar, band: np.ndarray, tariff_of: np.ndarray | None = None,
                kind: Period = "day", band_names: list[str] | None = None) -> BandTotals:
    """Split each twin's energy by the time-of-use band in force at each interval's start.

    `band` is int [intervals] (one tariff for all) or int [tariffs, intervals] with
    `tariff_of` int [twins] choosing the row: `twin.tariffs.price_tables(...).band`
    with its `band_names`. Needs sub-daily data (see the module docstring)."""
    energy = _matrix(matrix, calendar)
    bands, rows, names = _band_rows(energy, calendar, band, tariff_of, band_names)
    out = np.empty((energy.shape[0], len(calendar.days), len(names)))
    band_day_totals(energy, calendar.day_bounds, bands, rows, len(names), out)
    periods, out = _by_period(out, calendar, kind)
    return BandTotals(periods, names, out)


@dataclass(frozen=True, slots=True)
class Profile:
    """The typical local day: the mean reading at each slot, weekdays and weekends apart.
    Per building (`building_profiles`) it is the sum of the sub-meters' means."""

    labels: list[str]  #: twin ids, or "B01 electric" per building and utility
    slot_minutes: int  #: minutes per slot (1440 for daily data: one slot)
    mean: np.ndarray  #: float32 [rows, 2, slots]: [:, 0] weekdays, [:, 1] weekends; NaN when no reading
    meters: np.ndarray | None = None  #: int64 [rows, 2, slots]: meters summed (per building only)


def _profile_cells(calendar: Calendar) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(day_cell0, day_regular, cell) of `profile_means` for the calendar."""
    day_weekend = calendar.weekend.astype(np.int64) * calendar.n_slots
    cell = calendar.slot + np.repeat(day_weekend, np.diff(calendar.day_bounds))
    return day_weekend + calendar.day_slot0, calendar.day_regular, cell


def typical_profile(matrix: np.ndarray, calendar: Calendar, labels: list[str] | None = None) -> Profile:
    """Each twin's mean reading by slot of the local day, weekdays and weekends apart. On a
    DST day the repeated hour adds to its slots twice, the skipped one to none."""
    energy = _matrix(matrix, calendar)
    n_slots = calendar.n_slots
    out = np.empty((energy.shape[0], 2 * n_slots), dtype=np.float32)
    profile_means(energy, calendar.day_bounds, *_profile_cells(calendar), 2 * n_slots, out)
    names = labels if labels is not None else [str(i) for i in range(energy.shape[0])]
    return Profile(names, 1440 // n_slots, out.reshape(energy.shape[0], 2, n_slots))


def day_band_profile(matrix: np.ndarray, calendar: Calendar, band: np.ndarray, tariff_of: np.ndarray | None = None,
                     kind: Period = "day", band_names: list[str] | None = None,
                     labels: list[str] | None = None) -> tuple[PeriodSummary, BandTotals, Profile]:
    """`day_summary`, `band_totals` and `typical_profile` of the same matrix in one pass
    over it (each day of each twin read from memory once): the same results, bit for bit,
    for about the time of the slowest of the three alone. Arguments as theirs."""
    energy = _matrix(matrix, calendar)
    bands, rows, names = _band_rows(energy, calendar, band, tariff_of, band_names)
    n, n_days, n_slots = energy.shape[0], len(calendar.days), calendar.n_slots
    totals = np.empty((n, n_days))
    missing = np.empty((n, n_days), dtype=np.int32)
    peak = np.empty((n, n_days), dtype=np.float32)
    peak_at = np.empty((n, n_days), dtype=np.int64)
    by_band = np.empty((n, n_days, len(names)))
    means = np.empty((n, 2 * n_slots), dtype=np.float32)
    day_band_profile_stats(energy, energy.view(np.int32), calendar.day_bounds, bands, rows, len(names),
                           *_profile_cells(calendar), totals, missing, peak, peak_at, by_band, means)
    days = PeriodSummary(calendar.periods["day"], calendar.start_utc, calendar.interval_s, totals, missing, peak,
                         peak_at)
    periods, by_band = _by_period(by_band, calendar, kind)
    names_of = labels if labels is not None else [str(i) for i in range(n)]
    return days, BandTotals(periods, names, by_band), Profile(names_of, 1440 // n_slots, means.reshape(n, 2, n_slots))


@dataclass(frozen=True, slots=True)
class SiteIndex:
    """A topology as the arrays the roll-ups take. Build it once per topology with
    `site_index` (that walks every column in Python: about 0.1 s for 100,000) and pass it
    wherever a topology is asked for."""

    ids: list[str]  #: column ids
    group: np.ndarray  #: int64 [columns]: building group of each sub-meter (role sub, with a building), else -1
    group_labels: list[str]  #: "B01 electric": building and utility of each group, first seen first
    masters: np.ndarray  #: int64 [masters]: column of each master meter (role master, or named as a master)
    fed_by: np.ndarray  #: int64 [columns]: row in `masters` of the master a column names, -1 for none
    feeds: list[list[str]]  #: per master, the ids of the columns it feeds
    master_buildings: list[str | None]  #: per master, its building
    master_utilities: list[str]  #: per master, electric or water


def site_index(topology: Topology) -> SiteIndex:
    """The `SiteIndex` of a topology."""
    columns = topology.columns
    labels: dict[str, int] = {}
    group = np.full(len(columns), -1, dtype=np.int64)
    for i, column in enumerate(columns):
        if column.role == "sub" and column.building is not None:
            group[i] = labels.setdefault(f"{column.building} {column.utility}", len(labels))
    referenced = {c.master for c in columns if c.master is not None}
    masters = [i for i, c in enumerate(columns) if c.role == "master" or c.id in referenced]
    row_of = {columns[i].id: g for g, i in enumerate(masters)}
    fed_by = np.array([row_of.get(c.master, -1) if c.master is not None else -1 for c in columns], dtype=np.int64)
    feeds: list[list[str]] = [[] for _ in masters]
    for fed in np.flatnonzero(fed_by >= 0).tolist():
        feeds[fed_by[fed]].append(columns[fed].id)
    return SiteIndex([c.id for c in columns], group, list(labels), np.array(masters, dtype=np.int64), fed_by, feeds,
                     [columns[i].building for i in masters], [columns[i].utility for i in masters])


def _site(site: Topology | SiteIndex, rows: int) -> SiteIndex:
    index = site if isinstance(site, SiteIndex) else site_index(site)
    if len(index.ids) != rows:
        raise ValueError(f"{rows} rows against {len(index.ids)} topology columns")
    return index


def _grouped(values: np.ndarray, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    flat = np.ascontiguousarray(values.reshape(values.shape[0], -1))
    out = np.empty((n_groups, flat.shape[1]))
    counts = np.empty((n_groups, flat.shape[1]), dtype=np.int64)
    group_sum(flat, group, out, counts)
    shape = (n_groups,) + values.shape[1:]
    return out.reshape(shape), counts.reshape(shape)


def building_profiles(profile: Profile, site: Topology | SiteIndex) -> Profile:
    """Per building and utility, the sum of its sub-meters' typical days (a meter with no
    reading at a slot adds nothing there; `meters` says how many did)."""
    index = _site(site, profile.mean.shape[0])
    sums, counts = _grouped(profile.mean, index.group, len(index.group_labels))
    return Profile(index.group_labels, profile.slot_minutes, sums.astype(np.float32), counts)


@dataclass(frozen=True, slots=True)
class YearOnYear:
    """Each local month against the same month a year before, per twin or building."""

    labels: list[str]  #: twin ids or "B01 electric"
    months: list[str]  #: "2026-01", ...
    this_year: np.ndarray  #: float64 [rows, months]: the month's total, NaN unless the window holds all of it
    last_year: np.ndarray  #: float64 [rows, months]: the same month a year before, NaN where the history
    #: does not reach back (or holds only part of it)
    change_pct: np.ndarray  #: float64 [rows, months]: 100 * (this / last - 1), NaN where undefined
    missing: np.ndarray  #: int64 [rows, months]: missing readings this month plus that month last year


def year_on_year(days: PeriodSummary, calendar: Calendar, site: Topology | SiteIndex | None = None,
                 by_building: bool = False) -> YearOnYear:
    """Month against the same month last year from a `day_summary`; `by_building` sums the
    sub-meters of each building and utility (needs the topology). Only months the window
    holds whole are compared: a month in progress has NaN."""
    months = period_summary(days, calendar, "month")
    covered = months.periods.covered
    totals = np.where(covered[None, :], months.totals, np.nan)
    missing = months.missing
    index = None if site is None else _site(site, totals.shape[0])
    labels = [str(i) for i in range(totals.shape[0])] if index is None else index.ids
    if by_building:
        if index is None:
            raise ValueError("by_building needs the topology")
        labels = index.group_labels
        totals, _ = _grouped(months.totals, index.group, len(labels))
        totals[:, ~covered] = np.nan
        summed, _ = _grouped(missing.astype(np.float64), index.group, len(labels))
        missing = summed.astype(np.int64)
    names = months.periods.labels
    back = np.array([names.index(f"{int(m[:4]) - 1}{m[4:]}") if f"{int(m[:4]) - 1}{m[4:]}" in names else -1
                     for m in names], dtype=np.int64)
    last = np.full_like(totals, np.nan)
    extra = np.zeros_like(missing)
    has = back >= 0
    last[:, has] = totals[:, back[has]]
    extra[:, has] = missing[:, back[has]]
    with np.errstate(invalid="ignore", divide="ignore"):
        change = np.where(last > 0, 100.0 * (totals / np.where(last > 0, last, 1.0) - 1.0), np.nan)
    return YearOnYear(labels, list(names), totals, last, change, missing + extra)


@dataclass(frozen=True, slots=True)
class EnergyBalance:
    """Each master meter against the sum of what it feeds, by local day.

    Missing readings count as 0 on both sides (so a sub-meter offline shows as loss that
    day and its catch-up reading as a gain later); `missing` counts them so callers can set
    such days aside."""

    masters: list[str]  #: master meter ids
    buildings: list[str | None]  #: building of each master
    utilities: list[str]  #: electric or water
    feeds: list[list[str]]  #: ids of the twins each master feeds (their `master` names it)
    days: list[str]  #: local dates
    master_kwh: np.ndarray  #: float64 [masters, days]: what the master measured
    fed_kwh: np.ndarray  #: float64 [masters, days]: sum of what its feeds measured
    loss_kwh: np.ndarray  #: float64 [masters, days]: master - fed (negative: feeds read more)
    loss_pct: np.ndarray  #: float64 [masters, days]: 100 * loss / master, NaN when master <= 0
    missing: np.ndarray  #: int64 [masters, days]: missing readings of the master and its feeds


def energy_balance(source: np.ndarray | PeriodSummary, site: Topology | SiteIndex,
                   calendar: Calendar | None = None) -> EnergyBalance:
    """Per master meter and local day: its energy, the sum of the twins whose `master` is
    it (sub-meters, elevators, shared circuits), loss in kWh (m3 for water) and percent.
    `source` is a `day_summary` (no pass over the matrix) or the matrix with its calendar."""
    if isinstance(source, PeriodSummary):
        days = source
    else:
        if calendar is None:
            raise ValueError("energy_balance of a matrix needs its calendar")
        days = day_summary(source, calendar)
    if days.periods.kind != "day":
        raise ValueError("energy_balance needs a day_summary")
    index = _site(site, days.totals.shape[0])
    n_masters = index.masters.shape[0]
    fed, _ = _grouped(days.totals, index.fed_by, n_masters)
    fed_missing, _ = _grouped(days.missing.astype(np.float64), index.fed_by, n_masters)
    master_kwh = days.totals[index.masters]
    loss = master_kwh - fed
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(master_kwh > 0, 100.0 * loss / np.where(master_kwh > 0, master_kwh, 1.0), np.nan)
    return EnergyBalance([index.ids[i] for i in index.masters], index.master_buildings, index.master_utilities,
                         index.feeds, list(days.periods.labels), master_kwh, fed, loss, pct,
                         days.missing[index.masters].astype(np.int64) + fed_missing.astype(np.int64))


def utc_label(t: int) -> str:
    """An epoch second as 2026-01-05T08:15:00Z (for reports of peak times)."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = [
    "BandTotals", "Calendar", "EnergyBalance", "PeriodSummary", "Periods", "Profile", "SiteIndex", "YearOnYear",
    "band_totals", "building_profiles", "calendar_of_history", "daily_totals", "day_band_profile", "day_summary",
    "energy_balance", "local_calendar", "period_summary", "site_index", "typical_profile", "utc_label",
    "year_on_year",
]
