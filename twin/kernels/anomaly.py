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
def _day_sums(seg: np.ndarray, bits: np.ndarray) -> tuple:  # type: ignore[type-arg]
    """Two branch-free passes over a day's readings (`bits` is the same memory as int32):
    (sum, missing, readings at or below 0, sum of |negatives|, sort key of the largest
    reading, _LOWEST when none, the first and the last missing reading's index: n and -1
    when none). Integer keys, not a float max, because an integer max that skips NaN
    vectorises and a float one does not. The largest reading here may follow a gap, where
    day_features wants it divided: the gaps' pass checks that."""
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
    first = np.int32(n)
    last = np.int32(-1)
    for i in range(n):
        x = bits[i]
        nan = _is_nan(x)
        miss = np.int32(miss + (np.int32(1) if nan else np.int32(0)))
        top = np.int32(max(top, _LOWEST if nan else _sort_key(x)))
        at = np.int32(i)
        first = np.int32(min(first, at if nan else np.int32(n)))
        last = np.int32(max(last, at if nan else np.int32(-1)))
    return acc, miss, low, neg, top, first, last


@njit(cache=True, nogil=True)
def _top_after_known(bits: np.ndarray, first_after_gap: bool) -> np.int32:
    """Sort key of the largest reading of the day that follows a known one (_LOWEST when
    none); the first follows a gap when `first_after_gap`. Needed only when the largest
    reading follows a gap."""
    top = _LOWEST
    for i in range(bits.shape[0]):
        x = bits[i]
        after_gap = first_after_gap if i == 0 else _is_nan(bits[i - 1])
        if not (_is_nan(x) or after_gap):
            top = np.int32(max(top, _sort_key(x)))
    return top


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
    reading, where the first and the last gap are); a day with a gap, or one a gap runs
    into, adds a tight pass over its gaps only (their runs, and the readings after them;
    and, when the largest reading is one of those, a pass for the largest of the others,
    `_top_after_known`); a day with a
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
            acc, miss, low, neg, top, first_nan, last_nan = _day_sums(seg, bits[lo:hi])
            best_silent = 0
            gap_peak = np.nan  # the largest reading after a gap, divided (the first of equals)
            top_after_gap = False  # the day's largest reading follows a gap
            if carried > 0 and first_nan > 0:  # the gap running in ends at the day's first reading
                gap_peak = row[lo] / (nan_run + 1)
                top_after_gap = _sort_key(bits[lo]) == top
                nan_run = 0
            # the gaps: their runs, and the readings that end them (from the first missing
            # reading to the one after the last)
            for i in range(lo + first_nan, min(hi, lo + last_nan + 2)):
                v = row[i]
                if v != v:
                    nan_run += 1
                    best_silent = max(best_silent, nan_run)
                elif nan_run > 0:
                    rate = v / (nan_run + 1)
                    if not rate <= gap_peak:
                        gap_peak = rate
                    top_after_gap |= _sort_key(bits[i]) == top
                    nan_run = 0
            if top_after_gap:  # rare: the largest of the readings that follow a known one
                top = _top_after_known(bits[lo:hi], carried > 0)
            peak = np.nan
            if top != _LOWEST:  # back from the key to the float
                key_buf[0] = top if top >= 0 else (top - 1) ^ _ABS
                peak = np.float64(value_buf[0])
            if gap_peak == gap_peak and not gap_peak <= peak:
                peak = gap_peak
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


@njit(cache=True, nogil=True)
def _shift_row(adjusted: np.ndarray, baseline_days: int, sustain_days: int, min_base: float, min_days: int,
               window: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    """shift_ratios of one twin: `adjusted` [days] in, `low` and `high` [days] out, `window`
    scratch of at least max(baseline_days, 1) values. A day whose last sustain_days are not
    all read scores nothing, so it is checked first; the baseline (sorted) is built only for
    a day that passes."""
    n_days = adjusted.shape[0]
    for d in range(n_days):
        first = d - sustain_days + 1
        low[d] = np.nan
        high[d] = np.nan
        if first - 1 < 0:
            continue
        read = True
        for k in range(first, d + 1):
            read &= adjusted[k] == adjusted[k]
        if not read:
            continue
        n = 0  # the baseline days [first - baseline_days, first) that were read, sorted
        for b in range(max(0, first - baseline_days), first):
            v = adjusted[b]
            if v == v:
                i = n
                while i > 0 and window[i - 1] > v:
                    window[i] = window[i - 1]
                    i -= 1
                window[i] = v
                n += 1
        if n < max(min_days, 1):
            continue
        h = n // 2
        m = window[h] if n % 2 else 0.5 * (window[h - 1] + window[h])
        if not m >= min_base:
            continue
        lo = np.inf
        hi = -np.inf
        for k in range(first, d + 1):
            r = adjusted[k] / m
            if r != r:
                lo = np.nan
                break
            lo = min(lo, r)
            hi = max(hi, r)
        if lo == lo:
            low[d] = lo
            high[d] = hi


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
    for c in prange(adjusted.shape[0]):
        window = np.empty(max(baseline_days, 1), dtype=np.float64)  # the baseline days' values, sorted
        _shift_row(adjusted[c], baseline_days, sustain_days, min_base, min_days, window, low[c], high[c])


_ROWS_PER_TASK = 256  # rows a thread takes at a time in row_scores (one scratch allocation each)
_DBL_MAX = float(np.finfo(np.float64).max)  # numpy.nan_to_num puts this for inf


@njit(cache=True, nogil=True, inline="always")
def _nan_to_num(x: float, nan: float) -> float:
    """numpy.nan_to_num of one float64: NaN to `nan`, then (not `nan` itself) +-inf to +-the
    largest float."""
    if x != x:
        return nan
    return max(min(x, _DBL_MAX), -_DBL_MAX)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def row_scores(
    day_bounds: np.ndarray,  # int64 [days + 1]
    missing: np.ndarray,  # int32 [twins, days]: day_features' outputs, in
    silent_run: np.ndarray,  # int32 [twins, days]
    zero_run: np.ndarray,  # int32 [twins, days]
    negative: np.ndarray,  # float32 [twins, days]
    rate_max: np.ndarray,  # float32 [twins, days]
    total: np.ndarray,  # float64 [twins, days]
    night_min: np.ndarray,  # float32 [twins, days]
    night_n: np.ndarray,  # int32 [twins, days]
    meter: np.ndarray,  # bool [twins]: electric or water sub-meter (stuck, level_shift)
    water: np.ndarray,  # bool [twins]: water sub-meter (leak)
    beside_water: np.ndarray,  # bool [twins]: the electric meter of a room with a water meter (presence)
    span_ptr: np.ndarray,  # int64 [twins + 1]: supply cuts, as day_features takes them
    span_lo: np.ndarray,  # int64 [spans]
    span_hi: np.ndarray,  # int64 [spans]
    interval_h: float,
    min_use: float,  # stuck_min_use
    reach_h: float,  # zero hours from which a meter's stuck score may alarm (its peers are then needed)
    stuck_h: float,  # stuck_electric_h: zero hours that explain a day (level_shift) or spoil it (presence)
    presence_days: int,
    presence_share: float,
    backwards_min: np.float32,  # the threshold as float32: numpy compares a float32 array in float32
    jump_ratio: np.float32,
    jump_floor: float,  # jump_floor_per_h x interval hours
    leak_min_readings: int,
    want_leak: bool,  # sub-daily readings: leak scores
    offline: np.ndarray,  # float32 [twins, days] out: silent hours
    backwards: np.ndarray,  # float32 [twins, days] out: negative sum, NaN on a day without a reading
    jump: np.ndarray,  # float32 [twins, days] out: rate_max / usual
    usual: np.ndarray,  # float64 [twins] out: the usual daily largest (median, floored)
    leak: np.ndarray,  # float32 [twins, days] out: night minimum in l/h, NaN where not judged
    first_use: np.ndarray,  # int64 [twins] out: first day a total reached min_use (days when none)
    reach: np.ndarray,  # bool [twins] out: a meter with a zero run of reach_h hours
    home: np.ndarray,  # bool [twins, days] out: presence (rows beside_water only; False elsewhere)
    days: np.ndarray,  # float64 [twins, days] out: level_shift's day totals, NaN on unclean days
    divisor: np.ndarray,  # float64 [twins] out: the median of those days where above 0, else NaN
) -> None:
    """The rules that need only a twin's own days, from day_features' figures (see
    twin/anomaly.py for each rule): offline, backwards, jump, leak; stuck's first day of use
    and presence; level_shift's clean day totals and their median. Arithmetic in the types
    numpy would use, so the scores are the same to the bit."""
    n_twins = missing.shape[0]
    n_days = day_bounds.shape[0] - 1
    liters = np.float32(1000.0)
    per_h = np.float32(interval_h)
    for task in prange((n_twins + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        kept = np.empty(n_days, dtype=np.float64)
        cut = np.empty(n_days, dtype=np.bool_)
        clean = np.empty(n_days, dtype=np.bool_)
        for c in range(task * _ROWS_PER_TASK, min(n_twins, (task + 1) * _ROWS_PER_TASK)):
            cut[:] = False
            for s in range(span_ptr[c], span_ptr[c + 1]):
                d0 = np.searchsorted(day_bounds, span_lo[s], side="right") - 1
                d1 = np.searchsorted(day_bounds, span_hi[s] - 1, side="right") - 1
                cut[d0:d1 + 1] = True
            # jump: the median of the day's largest readings
            n = 0
            for d in range(n_days):
                v = np.float64(rate_max[c, d])
                if v == v:
                    kept[n] = v
                    n += 1
            u = _quantile_in_place(kept[:n], 0.5)
            u = _nan_to_num(u, 0.0)
            u = u if u > jump_floor else jump_floor  # numpy.maximum keeps the second of equals
            usual[c] = u
            first = n_days
            any_reach = False
            for d in range(n_days):
                has_data = day_bounds[d + 1] - day_bounds[d] - missing[c, d] > 0
                offline[c, d] = np.float32(silent_run[c, d] * interval_h)
                backwards[c, d] = negative[c, d] if has_data else np.nan
                j = np.float32(np.float64(rate_max[c, d]) / u)
                jump[c, d] = j
                lph = np.float32(np.nan)
                if want_leak and water[c] and night_n[c, d] >= leak_min_readings:
                    lph = np.float32(night_min[c, d] * liters) / per_h
                leak[c, d] = lph
                t = total[c, d]
                if first == n_days and (t if has_data else 0.0) >= min_use:
                    first = d
                zero_h = zero_run[c, d] * interval_h
                any_reach |= zero_h >= reach_h
                explained = cut[d] or zero_h >= stuck_h or negative[c, d] >= backwards_min or j >= jump_ratio
                days[c, d] = t if missing[c, d] == 0 and not explained else np.nan
                home[c, d] = False
            first_use[c] = first
            reach[c] = meter[c] and any_reach
            # level_shift: the median clean day
            n = 0
            for d in range(n_days):
                v = days[c, d]
                if v == v:
                    kept[n] = v
                    n += 1
            own = _quantile_in_place(kept[:n], 0.5)
            divisor[c] = own if own > 0 else np.nan
            if beside_water[c]:  # presence: at least presence_share of the upper quartile of clean days
                n = 0
                n_clean = 0
                for d in range(n_days):
                    clean[d] = (day_bounds[d + 1] - day_bounds[d] - missing[c, d] > 0
                                and zero_run[c, d] * interval_h < stuck_h and missing[c, d] == 0)
                    n_clean += clean[d]
                    if clean[d] and total[c, d] == total[c, d]:
                        kept[n] = total[c, d]
                        n += 1
                q = np.inf if n_clean < presence_days else _quantile_in_place(kept[:n], 0.75)
                level = presence_share * _nan_to_num(q, np.inf)
                for d in range(n_days):
                    home[c, d] = clean[d] and total[c, d] >= level


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def group_scores(
    order: np.ndarray,  # int64 [twins]: twins sorted by peer group
    cuts: np.ndarray,  # int64 [groups + 1]: group g is order[cuts[g]:cuts[g + 1]]
    day_bounds: np.ndarray,  # int64 [days + 1]
    missing: np.ndarray,  # int32 [twins, days]
    zero_run: np.ndarray,  # int32 [twins, days]
    total: np.ndarray,  # float64 [twins, days]
    days: np.ndarray,  # float64 [twins, days]: row_scores' clean day totals
    divisor: np.ndarray,  # float64 [twins]: row_scores' median clean day (NaN: none above 0)
    meter: np.ndarray,  # bool [twins]: electric or water sub-meter
    water: np.ndarray,  # bool [twins]: water sub-meter
    electric_of: np.ndarray,  # int64 [twins]: a water meter's room's electric meter, else -1
    home: np.ndarray,  # bool [twins, days]: row_scores' presence
    first_use: np.ndarray,  # int64 [twins]: row_scores'
    reach: np.ndarray,  # bool [twins]: row_scores'
    interval_h: float,
    scale_alone: float,  # stuck_electric_h / stuck_water_alone_h: a water meter's scale, no electric meter beside
    scale_room: float,  # stuck_electric_h / stuck_water_h
    baseline_days: int,  # shift_ratios' parameters
    sustain_days: int,
    min_base: float,
    min_days: int,
    stuck: np.ndarray,  # float32 [twins, days] out: stuck scores
    peer_total: np.ndarray,  # float64 [groups, days] out: the group's median day total (inf where not needed)
    low: np.ndarray,  # float32 [twins, days] out: shift_ratios' low, after removing the peers' day factor
    high: np.ndarray,  # float32 [twins, days] out: and high
    score: np.ndarray,  # float32 [twins, days] out: level_shift's score where it is NaN or 0 (low < 1 < high)
    needs_log: np.ndarray,  # bool [twins, days] out: the score is |log| of low or high: numpy computes it
) -> None:
    """The rules that need a twin's peers (its building and kind): stuck (the peers' median
    day total is above 0; computed only for a group with a twin reaching an alarm) and
    level_shift (each twin's clean days over its median, the group's median of that per day
    is the day factor; shift_ratios on the days divided by it). The log of level_shift's
    score is left to numpy (the same float32 log as before, to the bit)."""
    n_days = day_bounds.shape[0] - 1
    for g in prange(cuts.shape[0] - 1):
        a, b = cuts[g], cuts[g + 1]
        kept = np.empty(b - a, dtype=np.float64)
        factor = np.empty(n_days, dtype=np.float64)
        adjusted = np.empty(n_days, dtype=np.float64)
        window = np.empty(max(baseline_days, 1), dtype=np.float64)
        needed = False
        for k in range(a, b):
            needed |= reach[order[k]]
        for d in range(n_days):
            per_day = day_bounds[d + 1] - day_bounds[d]
            peer_total[g, d] = np.inf
            if needed:
                n = 0
                for k in range(a, b):
                    r = order[k]
                    if per_day - missing[r, d] > 0 and total[r, d] == total[r, d]:
                        kept[n] = total[r, d]
                        n += 1
                peer_total[g, d] = _sorted_median(kept, n)
            n = 0
            for k in range(a, b):
                r = order[k]
                v = days[r, d] / divisor[r]
                if v == v:
                    kept[n] = v
                    n += 1
            m = _sorted_median(kept, n)
            factor[d] = m if np.isfinite(m) and m > 0 else 1.0
        for k in range(a, b):
            r = order[k]
            e = electric_of[r]
            scale = scale_alone if e < 0 else scale_room
            for d in range(n_days):
                s = np.float32(np.nan)
                if meter[r] and d >= first_use[r] and peer_total[g, d] > 0:
                    s = np.float32(zero_run[r, d] * interval_h)
                if water[r]:
                    s = np.float32(np.float64(s) * scale)
                    if e >= 0 and not home[e, d] and s == s:
                        s = np.float32(0.0)
                stuck[r, d] = s
                adjusted[d] = days[r, d] / factor[d]
            _shift_row(adjusted, baseline_days, sustain_days, min_base, min_days, window, low[r], high[r])
            for d in range(n_days):
                lo, hi = low[r, d], high[r, d]
                strict = lo < 1 and hi > 1  # both logs away from 0 (checked for every float32)
                score[r, d] = np.float32(0.0) if meter[r] and strict else np.float32(np.nan)
                needs_log[r, d] = meter[r] and lo == lo and not strict
