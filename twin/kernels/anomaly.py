"""Anomaly kernels: arrays in, arrays out, over the interval matrix float32 [twins,
intervals] (NaN missing) cut into site-local days by `day_bounds` (int64 [days + 1]).

`day_features` is the only kernel that reads the whole matrix, once, column by column in
parallel; it yields the per-day figures most rules need. The others read a few columns
(shared circuits, elevators, valve spans) or the [twins, days] results. The rules that turn
these figures into scores, and their parameters, are in twin/anomaly.py.

Run lengths are causal and carry across days: a day's `silent_run` is the longest run of
missing readings ending inside that day, counted from where it began (maybe the day
before), so a score for day d never looks past day d.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from twin.kernels.order import select as _select

_FAST = {"nsz", "arcp", "contract", "reassoc"}  # reassociate sums; keep NaN and inf semantics


@njit(cache=True, nogil=True)
def _quantile_in_place(part: np.ndarray, q: float) -> float:
    """numpy's linear-interpolated quantile of `part` (no NaN), reordering it; NaN if empty."""
    n = part.shape[0]
    if n == 0:
        return np.nan
    pos = q * (n - 1)
    a = int(np.floor(pos))
    low = _select(part, a)
    if a + 1 >= n or pos == a:
        return low
    high = part[a + 1]
    for i in range(a + 2, n):  # after the select, the next order statistic is the least of the rest
        high = min(high, part[i])
    return low + (float(high) - low) * (pos - a)


@njit(cache=True, nogil=True)
def _sorted_median(buf: np.ndarray, n: int) -> float:
    """Median of buf[:n], reordering it in place (no allocation); NaN when n is 0."""
    return _quantile_in_place(buf[:n], 0.5)


_ABS = np.int32(0x7FFFFFFF)  # float32 bits without the sign
_INF_BITS = np.int32(0x7F800000)  # above this (sign off): NaN
_LOWEST = np.int32(-(2**31))  # below every key


@njit(cache=True, nogil=True, inline="always")
def _sort_key(x: np.int32) -> np.int32:
    """float32 bits (as int32) to an int32 that orders as the float does (-0.0 and 0.0 get
    the same key); NaN must be screened out before. Every step cast back to int32: numba
    widens int32 arithmetic to int64, which vectorises at half the width, or not at all."""
    sign = np.int32(x >> np.int32(31))
    return np.int32(np.int32(x ^ np.int32(sign & _ABS)) - sign)


@njit(cache=True, nogil=True, inline="always")
def _is_nan(x: np.int32) -> bool:
    """The float32 whose bits are x is NaN."""
    return bool(np.int32(x & _ABS) > _INF_BITS)


@njit(cache=True, nogil=True, fastmath=_FAST)
def _day_sums(seg: np.ndarray, bits: np.ndarray, first_after_gap: bool) -> tuple:  # type: ignore[type-arg]
    """Two branch-free passes over a day's readings (`bits` is the same memory as int32):
    (sum, missing, readings at or below 0, sum of |negatives|, sort key of the largest
    reading that follows a known one, _LOWEST when none). The first reading follows a gap
    when `first_after_gap`. Integer keys, not a float max, because an integer max that
    skips NaN vectorises and a float one does not."""
    n = seg.shape[0]
    acc = 0.0
    neg = 0.0
    low = np.int32(0)
    for i in range(n):
        v = np.float64(seg[i])
        acc += v if v == v else 0.0
        neg += -v if v < 0 else 0.0
        low = np.int32(low + (np.int32(1) if v <= 0 else np.int32(0)))
    miss = np.int32(0)
    top = _LOWEST
    if n == 0:
        return acc, miss, low, neg, top
    x = bits[0]
    nan = _is_nan(x)
    miss = np.int32(1) if nan else np.int32(0)
    top = _LOWEST if nan or first_after_gap else _sort_key(x)
    for i in range(1, n):
        x = bits[i]
        nan = _is_nan(x)
        miss = np.int32(miss + (np.int32(1) if nan else np.int32(0)))
        key = _LOWEST if nan or _is_nan(bits[i - 1]) else _sort_key(x)
        top = np.int32(max(top, key))
    return acc, miss, low, neg, top


@njit(cache=True, nogil=True)
def _zero_runs(seg: np.ndarray, zeros: int) -> tuple[int, int]:
    """(longest run of exact zeros as day_features counts it, the run open at the day's
    end) over a day without excused spans, `zeros` open when it began. Branch-free (select,
    not jump): a water meter's zeros come and go at random, which a branch mispredicts."""
    best = 0
    for i in range(seg.shape[0]):
        zeros = zeros + 1 if seg[i] == 0 else 0
        best = max(best, min(zeros, i + 1))
    return max(best, zeros), zeros


@njit(cache=True, nogil=True)
def _exact_day(row: np.ndarray, c: int, d: int, lo: int, hi: int, nan_run: int, zeros: int, j: int, j_end: int,
               span_lo: np.ndarray, span_hi: np.ndarray, dark: bool, night: np.ndarray, missing: np.ndarray,
               silent_run: np.ndarray, zero_run: np.ndarray, negative: np.ndarray, rate_max: np.ndarray,
               total: np.ndarray, night_min: np.ndarray, night_n: np.ndarray) -> tuple:  # type: ignore[type-arg]
    """day_features of one day, reading by reading (a twin with excused spans); returns the
    carried (nan_run, zeros, j)."""
    miss = 0
    best_silent = 0
    best_zero = 0
    neg = 0.0
    peak = np.nan
    acc = 0.0
    night_exact = np.nan
    n_night = 0
    for i in range(lo, hi):
        while j < j_end and span_hi[j] <= i:
            j += 1
        excused = j < j_end and span_lo[j] <= i
        v = row[i]
        if v != v:
            miss += 1
            nan_run += 1
            zeros = 0
            if nan_run > best_silent:
                best_silent = nan_run
            continue
        rate = v if nan_run == 0 else v / (nan_run + 1)
        if not rate <= peak:  # NaN peak: first reading
            peak = rate
        if dark and night[i] and nan_run == 0:
            n_night += 1
            if not v >= night_exact:
                night_exact = v
        nan_run = 0
        acc += v
        if v < 0:
            neg -= v
        if v == 0 and not excused:
            zeros += 1
            inside = min(zeros, i - lo + 1)
            if inside > best_zero:
                best_zero = inside
        else:
            zeros = 0
    if zeros > best_zero:  # still at zero when the day ends: the whole run counts
        best_zero = zeros
    missing[c, d] = miss
    silent_run[c, d] = best_silent
    zero_run[c, d] = best_zero
    negative[c, d] = neg
    rate_max[c, d] = peak
    total[c, d] = acc
    night_min[c, d] = night_exact
    night_n[c, d] = n_night
    return nan_run, zeros, j


@njit(cache=True, nogil=True, parallel=True)
def day_features(
    matrix: np.ndarray,  # float32 [twins, intervals], NaN missing
    day_bounds: np.ndarray,  # int64 [days + 1]
    night: np.ndarray,  # bool [intervals]: the interval lies in the night window
    night_ptr: np.ndarray,  # int64 [days + 1]: day d's night intervals are night_idx[night_ptr[d]:night_ptr[d + 1]]
    night_idx: np.ndarray,  # int64 [night intervals]: the same, as indices
    want_night: np.ndarray,  # bool [twins]: compute the night figures (NaN and 0 otherwise)
    span_ptr: np.ndarray,  # int64 [twins + 1]: twin c's excused spans are span_ptr[c]:span_ptr[c + 1]
    span_lo: np.ndarray,  # int64 [spans]: first interval of a span (supply cut: zeros are expected)
    span_hi: np.ndarray,  # int64 [spans]: first interval after it; spans of a twin sorted, disjoint
    missing: np.ndarray,  # int32 [twins, days] out: missing readings
    silent_run: np.ndarray,  # int32 [twins, days] out: longest run of missing readings reaching into the day
    zero_run: np.ndarray,  # int32 [twins, days] out: longest run of exact zeros outside spans (see below)
    negative: np.ndarray,  # float32 [twins, days] out: sum of |negative readings|
    rate_max: np.ndarray,  # float32 [twins, days] out: largest reading / (1 + missing readings before it); NaN none
    total: np.ndarray,  # float64 [twins, days] out: sum of readings, missing as 0
    night_min: np.ndarray,  # float32 [twins, days] out: smallest night reading (not after a gap); NaN none
    night_n: np.ndarray,  # int32 [twins, days] out: night readings (not after a gap)
) -> None:
    """Per twin per day: missing counts and runs, zero runs, negatives, the largest
    gap-normalised reading (a catch-up after k missing intervals counts as its mean over
    k + 1), the total, and the smallest reading in the night window.

    A zero run that ends inside the day counts only its part inside the day; one still
    open at the day's end counts whole (since it began, maybe days before): a meter that
    starts moving again at 06:00 after a quiet night is not stuck that day, one still at
    zero at midnight is. A missing reading or an excused interval ends a zero run.

    Speed: every day takes one branch-free pass (`_day_sums`: sums, counts, the largest
    reading that follows a known one); a day with a gap, or one a gap runs into, adds a
    tight pass over its gaps only (their runs, and the readings after them); a day with a
    reading at or below 0 adds one for its zero runs. Twins with excused spans go reading
    by reading (`_exact_day`)."""
    n_twins = matrix.shape[0]
    n_days = day_bounds.shape[0] - 1
    bits_all = matrix.view(np.int32)
    for c in prange(n_twins):
        key_buf = np.empty(1, dtype=np.int32)  # a float32's bits, to turn a key back into the float
        value_buf = key_buf.view(np.float32)
        row = matrix[c]
        bits = bits_all[c]
        nan_run = 0
        zeros = 0
        j = span_ptr[c]
        j_end = span_ptr[c + 1]
        dark = want_night[c]
        for d in range(n_days):
            lo, hi = day_bounds[d], day_bounds[d + 1]
            if j_end > span_ptr[c]:
                nan_run, zeros, j = _exact_day(row, c, d, lo, hi, nan_run, zeros, j, j_end, span_lo, span_hi, dark,
                                               night, missing, silent_run, zero_run, negative, rate_max, total,
                                               night_min, night_n)
                continue
            seg = row[lo:hi]
            carried = nan_run  # the gap running into the day, in readings
            acc, miss, low, neg, top = _day_sums(seg, bits[lo:hi], carried > 0)
            peak = np.nan
            if top != _LOWEST:  # back from the key to the float
                key_buf[0] = top if top >= 0 else (top - 1) ^ _ABS
                peak = np.float64(value_buf[0])
            best_silent = 0
            if miss > 0 or carried > 0:  # the gaps: their runs, and the readings that end them
                for i in range(lo, hi):
                    v = row[i]
                    if v != v:
                        nan_run += 1
                        best_silent = max(best_silent, nan_run)
                    elif nan_run > 0:
                        rate = v / (nan_run + 1)
                        if not rate <= peak:
                            peak = rate
                        nan_run = 0
            best_zero = 0
            if low == 0:
                zeros = 0
            else:  # readings at 0 (or below): the zero runs, which a gap ends
                best_zero, zeros = _zero_runs(seg, zeros)
            night_low = np.float32(np.nan)
            n_night = 0
            if dark:  # night readings that follow a known one
                for k in range(night_ptr[d], night_ptr[d + 1]):
                    i = night_idx[k]
                    v = row[i]
                    known_before = carried == 0 if i == lo else row[i - 1] == row[i - 1]
                    if v == v and known_before:
                        n_night += 1
                        if not v >= night_low:
                            night_low = v
            missing[c, d] = miss
            silent_run[c, d] = best_silent
            zero_run[c, d] = best_zero
            negative[c, d] = neg
            rate_max[c, d] = peak
            total[c, d] = acc
            night_min[c, d] = night_low
            night_n[c, d] = n_night


@njit(cache=True, nogil=True, parallel=True)
def row_quantile(
    values: np.ndarray,  # float64 [rows, days], NaN ignored
    q: float,  # quantile in [0, 1]
    out: np.ndarray,  # float64 [rows] out: linear-interpolated quantile (numpy's default); NaN when none
) -> None:
    """Each row's quantile over its finite values, as numpy.nanquantile computes it."""
    n_days = values.shape[1]
    scratch = np.empty_like(values)
    for r in prange(values.shape[0]):
        kept = scratch[r]
        n = 0
        for d in range(n_days):
            v = values[r, d]
            if v == v:
                kept[n] = v
                n += 1
        if n == 0:
            out[r] = np.nan
            continue
        out[r] = _quantile_in_place(kept[:n], q)


@njit(cache=True, nogil=True, parallel=True)
def group_day_median(
    values: np.ndarray,  # float64 [rows, days], NaN ignored
    order: np.ndarray,  # int64 [rows]: rows sorted by group
    cuts: np.ndarray,  # int64 [groups + 1]: group g is order[cuts[g]:cuts[g + 1]]
    out: np.ndarray,  # float64 [groups, days] out: median of the group's finite values that day; NaN none
) -> None:
    """The median of each group's rows, day by day."""
    n_days = values.shape[1]
    for g in prange(cuts.shape[0] - 1):
        kept = np.empty(cuts[g + 1] - cuts[g], dtype=np.float64)
        for d in range(n_days):
            n = 0
            for k in range(cuts[g], cuts[g + 1]):
                v = values[order[k], d]
                if v == v:
                    kept[n] = v
                    n += 1
            out[g, d] = _sorted_median(kept, n)


@njit(cache=True, nogil=True, parallel=True)
def span_day_sums(
    matrix: np.ndarray,  # float32 [twins, intervals]
    span_col: np.ndarray,  # int64 [spans]: twin of each span
    span_lo: np.ndarray,  # int64 [spans]: first interval
    span_hi: np.ndarray,  # int64 [spans]: first interval after
    day_bounds: np.ndarray,  # int64 [days + 1]
    sums: np.ndarray,  # float64 [spans, days] out: sum of readings (missing as 0) of the span inside each day
    counts: np.ndarray,  # int32 [spans, days] out: intervals of the span inside each day
) -> None:
    """What each span of intervals (a valve closed, say) recorded, split by day."""
    n_days = day_bounds.shape[0] - 1
    for s in prange(span_col.shape[0]):
        c = span_col[s]
        for d in range(n_days):
            lo = max(span_lo[s], day_bounds[d])
            hi = min(span_hi[s], day_bounds[d + 1])
            acc = 0.0
            n = 0
            for i in range(lo, hi):
                v = matrix[c, i]
                n += 1
                if v == v:
                    acc += v
            sums[s, d] = acc
            counts[s, d] = max(n, 0)


@njit(cache=True, nogil=True, parallel=True)
def schedule_scores(
    matrix: np.ndarray,  # float32 [twins, intervals]
    cols: np.ndarray,  # int64 [k]: the twins to score (shared circuits)
    day_bounds: np.ndarray,  # int64 [days + 1]
    slot: np.ndarray,  # int64 [intervals]
    n_slots: int,
    on_share: float,  # a reading above on_share x the twin's largest reading counts as on
    off_share: float,  # a slot on in at most this share of the baseline days is an off slot
    threshold_h: float,  # a day scoring this or more is left out of the baseline
    interval_h: float,
    scores: np.ndarray,  # float32 [k, days] out: hours on in off slots; NaN without a baseline or a reading
    off_slots: np.ndarray,  # int32 [k, days] out: off slots of the learned schedule
) -> None:
    """Off-schedule: learn each circuit's schedule from its earlier days (the share of days
    each slot of the day was on), then count the hours it was on in slots that were off.
    Days that score at or above the threshold do not teach the schedule."""
    n_days = day_bounds.shape[0] - 1
    for k in prange(cols.shape[0]):
        c = cols[k]
        top = 0.0
        for i in range(matrix.shape[1]):
            v = matrix[c, i]
            if v > top:
                top = v
        level = on_share * top
        on_days = np.zeros(n_slots, dtype=np.int64)
        seen_days = np.zeros(n_slots, dtype=np.int64)
        for d in range(n_days):
            lo, hi = day_bounds[d], day_bounds[d + 1]
            hours = 0.0
            n_off = 0
            any_base = False
            read = 0
            for i in range(lo, hi):
                s = slot[i]
                if matrix[c, i] == matrix[c, i]:
                    read += 1
                if seen_days[s] > 0:
                    any_base = True
                    if on_days[s] <= off_share * seen_days[s]:
                        n_off += 1
                        v = matrix[c, i]
                        if v > level and top > 0:
                            hours += interval_h
            off_slots[k, d] = n_off
            scores[k, d] = hours if any_base and read > 0 else np.nan
            if not (hours >= threshold_h):
                for i in range(lo, hi):
                    v = matrix[c, i]
                    if v == v:
                        s = slot[i]
                        seen_days[s] += 1
                        if v > level and top > 0:
                            on_days[s] += 1


@njit(cache=True, nogil=True, parallel=True)
def trip_quanta(
    matrix: np.ndarray,  # float32 [twins, intervals]
    cols: np.ndarray,  # int64 [k]: the twins (elevators)
    day_bounds: np.ndarray,  # int64 [days + 1]
    tolerance: float,  # an excess below this (kWh) is noise, not a trip
    floor: np.ndarray,  # float32 [k, days] out: smallest reading of the day (standby); NaN none
    quantum: np.ndarray,  # float32 [k, days] out: smallest excess over the floor above tolerance; NaN none
) -> None:
    """Energy of one trip: an interval's energy is standby plus whole trips, so the
    smallest step above the day's floor (its quietest interval) is one trip's energy."""
    n_days = day_bounds.shape[0] - 1
    for k in prange(cols.shape[0]):
        c = cols[k]
        for d in range(n_days):
            lo, hi = day_bounds[d], day_bounds[d + 1]
            low = np.inf
            for i in range(lo, hi):
                v = matrix[c, i]
                if v < low:
                    low = v
            step = np.inf
            for i in range(lo, hi):
                e = matrix[c, i] - low
                if e > tolerance and e < step:
                    step = e
            floor[k, d] = low if low < np.inf else np.nan
            quantum[k, d] = step if step < np.inf else np.nan


@njit(cache=True, nogil=True, parallel=True)
def drift_ratios(
    quantum: np.ndarray,  # float32 [k, days]: smallest step over the day's floor (trip_quanta)
    threshold: float,  # a ratio at or above 1 + threshold keeps the day out of the baseline
    baseline_days: int,  # how many earlier unflagged days make the baseline
    ratio: np.ndarray,  # float32 [k, days] out: energy of one trip / the baseline; NaN without one
    base: np.ndarray,  # float32 [k, days] out: the baseline used (kWh per trip)
    trip: np.ndarray,  # float32 [k, days] out: the day's energy of one trip
) -> None:
    """Each day's energy per trip against the baseline: the least per-trip energy of up to
    `baseline_days` earlier days that were not themselves flagged (so a slow drift cannot
    teach itself as normal). A day's smallest step may hold more than one trip (hourly
    readings with no single-trip hour): it is divided by its whole number of baseline trips."""
    n_days = quantum.shape[1]
    for k in prange(quantum.shape[0]):
        kept = np.empty(n_days, dtype=np.float64)
        n = 0
        for d in range(n_days):
            q = float(quantum[k, d])
            base[k, d] = np.nan
            ratio[k, d] = np.nan
            if n > 0 and q == q:
                m = kept[max(0, n - baseline_days)]
                for b in range(max(0, n - baseline_days), n):
                    m = min(m, kept[b])
                q /= max(1.0, np.floor(q / m + 0.5))
                base[k, d] = m
                ratio[k, d] = q / m
            trip[k, d] = q
            if q == q and not (ratio[k, d] >= 1.0 + threshold):
                kept[n] = q
                n += 1


@njit(cache=True, nogil=True, parallel=True)
def shift_ratios(
    adjusted: np.ndarray,  # float64 [twins, days]: day totals divided by the peers' day factor; NaN missing
    baseline_days: int,  # days before the run that make the baseline (median)
    sustain_days: int,  # days the change must last
    min_base: float,  # a baseline below this makes no ratio (a meter that uses nothing)
    min_days: int,  # fewer baseline days with a reading than this make no ratio
    low: np.ndarray,  # float32 [twins, days] out: smallest ratio over the last sustain_days days
    high: np.ndarray,  # float32 [twins, days] out: largest ratio over them
) -> None:
    """Sudden sustained change: the last `sustain_days` days (to day d) against the median
    of the `baseline_days` days before them. A rise shows as low > 1, a fall as high < 1."""
    n_days = adjusted.shape[1]
    for c in prange(adjusted.shape[0]):
        window = np.empty(max(baseline_days, 1), dtype=np.float64)  # the baseline days' values, sorted
        n = 0
        for d in range(n_days):
            first = d - sustain_days + 1
            low[c, d] = np.nan
            high[c, d] = np.nan
            if first - 1 < 0:
                continue
            # slide the window to days [first - baseline_days, first): one day in, one out
            v = adjusted[c, first - 1]
            if v == v and baseline_days > 0:
                i = n
                while i > 0 and window[i - 1] > v:
                    window[i] = window[i - 1]
                    i -= 1
                window[i] = v
                n += 1
            gone = first - 1 - baseline_days
            if gone >= 0:
                v = adjusted[c, gone]
                if v == v:
                    i = 0
                    while window[i] != v:
                        i += 1
                    for t in range(i, n - 1):
                        window[t] = window[t + 1]
                    n -= 1
            if n < max(min_days, 1):
                continue
            h = n // 2
            m = window[h] if n % 2 else 0.5 * (window[h - 1] + window[h])
            if not m >= min_base:
                continue
            lo = np.inf
            hi = -np.inf
            for k in range(first, d + 1):
                r = adjusted[c, k] / m
                if r != r:
                    lo = np.nan
                    break
                lo = min(lo, r)
                hi = max(hi, r)
            if lo == lo:
                low[c, d] = lo
                high[c, d] = hi
