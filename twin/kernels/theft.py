"""Theft kernels: the building energy balance at interval level, and per meter-day features
of the consumption pattern, against the meter's own history and its building.

Input is the interval matrix float32 [columns, intervals] (NaN missing) with the day cuts
and slots of a `twin.kernels.load.Calendar`; outputs are float arrays [meters, days]. The
Python side (`twin.theft`) turns them into one score per meter-day.

The balance. A master meter reads what it feeds plus line loss, `a + (1 + c) * fed` per
interval (a fixed loss and a loss proportional to load). `balance_sums` adds up what each
master feeds, interval by interval, and `balance_day_fits` gives the least-squares (a, c)
of each master-day; the Python side takes the median fit of the cleanest days (a theft
only adds to the gap, so the days where the line fits best are the honest ones) and
`balance_residual` leaves, per master and interval, the energy the feeds did not report,
in units of the feeds: `(master - a) / (1 + c) - fed`. Localisation (`balance_corr`,
feature `BAL_CORR`): a meter that under-reports a share of its load (h1, bypass, h3) leaves
in that residual a copy of its own interval-to-interval moves; the correlation of the
first differences of the meter's readings with those of its master's residual is near 1
for it and near 0 for its neighbours, whose moves are their own (differencing removes the
daily shape all flats share). It is computed over quarter days and the best of the four
whole-day windows ending in each quarter of a day is kept, so a theft that starts late in
a day, or ends early, is still seen in a window that holds most of it. Several thieves
under one master share its residual; `clean_residual` takes out the moves of the meters the
pattern features already name, so the others' correlation is not diluted by them.

The pattern features, per meter and local day (index in `FEATURES`):
- TOTAL: the day's energy (missing as 0);
- ZERO_H: longest run of readings at or below `ZERO_KWH`, in hours (h2 switches the meter
  off for hours; a flat that is away keeps a standby draw);
- CV: standard deviation / mean of the day's readings (h5 makes it 0; h2, h3 raise it);
- LAG1: lag-1 autocorrelation of the day's readings (load moves smoothly from one quarter
  hour to the next; h3 and h4 draw a random factor per interval and break that);
- PROFILE_CORR: correlation of the day's readings, slot by slot, with the meter's own mean
  day over the `window` days before (h4, h5 and h6 reorder or flatten the day);
- BAL_CORR: the balance localisation above (`balance_corr`; NaN without a master).
CV, LAG1 and PROFILE_CORR need sub-daily data and are NaN at one reading a day.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from twin.kernels.order import select

TOTAL, ZERO_H, CV, LAG1, PROFILE_CORR, BAL_CORR = range(6)
FEATURES = ("total", "zero_hours", "cv", "lag1", "profile_corr", "balance_corr")
#: A reading at or below this (kWh per interval) counts as "off" for ZERO_H.
ZERO_KWH = 1e-4
QUARTERS = 4
_FAST = {"nsz", "arcp", "contract", "reassoc"}  # reassociate sums; keep NaN and inf semantics


@njit(cache=True, nogil=True, parallel=True)
def balance_sums(
    matrix: np.ndarray,  # float32 [columns, intervals]
    feed_ptr: np.ndarray,  # int64 [masters + 1]: CSR offsets into feed_cols
    feed_cols: np.ndarray,  # int64 [feeds]: the columns each master feeds
    out: np.ndarray,  # float64 [masters, intervals] out: sum of the feeds' readings, NaN as 0
) -> None:
    """Per master and interval: what the columns it feeds reported."""
    n_t = matrix.shape[1]
    for g in prange(feed_ptr.shape[0] - 1):
        acc = out[g]
        acc[:] = 0.0
        for k in range(feed_ptr[g], feed_ptr[g + 1]):
            row = matrix[feed_cols[k]]
            for t in range(n_t):
                v = row[t]
                if v == v:
                    acc[t] += v


@njit(cache=True, nogil=True, parallel=True)
def balance_day_fits(
    master: np.ndarray,  # float64 [masters, intervals]: the masters' readings (NaN missing)
    fed: np.ndarray,  # float64 [masters, intervals]: balance_sums
    day_bounds: np.ndarray,  # int64 [days + 1]
    out: np.ndarray,  # float64 [masters, days, 3] out: a, c, rms of master - a - (1 + c) * fed
) -> None:
    """Least-squares line master = a + (1 + c) * fed per master and day, over the
    intervals with a master reading; NaN where fewer than 3 intervals or fed is constant."""
    n_days = day_bounds.shape[0] - 1
    for g in prange(master.shape[0]):
        for d in range(n_days):
            n = 0.0
            sx = sy = sxx = sxy = 0.0
            for t in range(day_bounds[d], day_bounds[d + 1]):
                y = master[g, t]
                if y == y:
                    x = fed[g, t]
                    n += 1.0
                    sx += x
                    sy += y
                    sxx += x * x
                    sxy += x * y
            det = n * sxx - sx * sx
            if n < 3.0 or det <= 1e-12 * max(n * sxx, 1e-300):
                out[g, d, 0] = np.nan
                out[g, d, 1] = np.nan
                out[g, d, 2] = np.nan
                continue
            slope = (n * sxy - sx * sy) / det
            a = (sy - slope * sx) / n
            sse = 0.0
            for t in range(day_bounds[d], day_bounds[d + 1]):
                y = master[g, t]
                if y == y:
                    e = y - a - slope * fed[g, t]
                    sse += e * e
            out[g, d, 0] = a
            out[g, d, 1] = slope - 1.0
            out[g, d, 2] = np.sqrt(sse / n)


@njit(cache=True, nogil=True, parallel=True)
def balance_residual(
    master: np.ndarray,  # float64 [masters, intervals]
    fed: np.ndarray,  # float64 [masters, intervals]
    a: np.ndarray,  # float64 [masters]
    c: np.ndarray,  # float64 [masters]
    out: np.ndarray,  # float64 [masters, intervals] out: (master - a) / (1 + c) - fed; NaN missing master
) -> None:
    """Energy the feeds did not report, per master and interval, in the feeds' units."""
    for g in prange(master.shape[0]):
        scale = 1.0 / (1.0 + c[g])
        for t in range(master.shape[1]):
            out[g, t] = (master[g, t] - a[g]) * scale - fed[g, t]


@njit(cache=True, nogil=True)
def _corr(sxy: float, sxx: float, syy: float) -> float:
    if sxx <= 0.0 or syy <= 0.0:
        return np.nan
    return sxy / np.sqrt(sxx * syy)


@njit(cache=True, nogil=True)
def regular_days(
    day_bounds: np.ndarray,  # int64 [days + 1]
    slot: np.ndarray,  # int64 [intervals]
    n_slots: int,
) -> np.ndarray:  # bool [days]
    """The days whose intervals are the slots 0 .. n_slots - 1 in order (every day but the
    two DST days of a year, where a slot is missing or repeated): on those, slot i of day d
    is interval day_bounds[d] + i, and the kernels take the branch-free, vectorised path."""
    n_days = day_bounds.shape[0] - 1
    out = np.zeros(n_days, dtype=np.bool_)
    for d in range(n_days):
        a = day_bounds[d]
        if day_bounds[d + 1] - a != n_slots:
            continue
        same = True
        for i in range(n_slots):
            if slot[a + i] != i:
                same = False
                break
        out[d] = same
    return out


# The day sums of meter_day_features: (readings, readings at or below ZERO_KWH, sum, sum of
# squares, pairs of consecutive readings, pairs of them both at or below ZERO_KWH, and the
# pairs' sums of x_prev, x and x_prev * x); counts as floats, so the loops vectorise.
_DaySums = tuple[float, float, float, float, float, float, float, float, float]


@njit(cache=True, nogil=True, fastmath=_FAST)
def _day_sums_regular(day: np.ndarray, n_slots: int, cum: np.ndarray, prev_cum: np.ndarray,
                      cnt: np.ndarray, prev_cnt: np.ndarray) -> _DaySums:
    """The day sums over a regular day's readings (`day`: the row's slice of that day, so
    its index is never negative and a load is a load: `row[a + i]` with an unknown `a`
    carries numba's wraparound check, which turned the loads into gathers), branch-free (a
    missing reading adds 0 with weight 0); cum and cnt become prev_cum and prev_cnt plus
    the day, slot by slot."""
    c0 = o0 = z0 = 0.0  # the reading before, carried (a first-order recurrence vectorises): none for slot 0,
    n = nz = s1 = s2 = pn = zz = p0 = p1 = p01 = 0.0  # whose pair terms are 0; so the loop takes all 96 slots
    for i in range(n_slots):  # (slot 0 peeled left 95: 7 slots of scalar remainder a day, 6% of the kernel)
        x = np.float64(day[i])
        ok1 = x == x
        c1 = x if ok1 else 0.0
        o1 = 1.0 if ok1 else 0.0
        z1 = 1.0 if x <= ZERO_KWH else 0.0
        n += o1
        nz += z1
        s1 += c1
        s2 += c1 * c1
        cum[i] = prev_cum[i] + c1
        cnt[i] = prev_cnt[i] + o1
        pn += o0 * o1
        zz += z0 * z1
        p0 += c0 * o1
        p1 += c1 * o0
        p01 += c0 * c1
        c0 = c1
        o0 = o1
        z0 = z1
    return n, nz, s1, s2, pn, zz, p0, p1, p01


@njit(cache=True, nogil=True)
def _day_sums_any(row: np.ndarray, a: int, b: int, slot: np.ndarray, cum: np.ndarray, prev_cum: np.ndarray,
                  cnt: np.ndarray, prev_cnt: np.ndarray) -> _DaySums:
    """The same over any day (a DST day), through the slot map."""
    cum[:] = prev_cum
    cnt[:] = prev_cnt
    n = nz = s1 = s2 = pn = zz = p0 = p1 = p01 = 0.0
    for t in range(a, b):
        x = np.float64(row[t])
        if x == x:
            n += 1.0
            nz += 1.0 if x <= ZERO_KWH else 0.0
            s1 += x
            s2 += x * x
            k = slot[t]
            cum[k] += x
            cnt[k] += 1.0
            if t > a:
                x0 = np.float64(row[t - 1])
                if x0 == x0:
                    pn += 1.0
                    zz += 1.0 if x0 <= ZERO_KWH and x <= ZERO_KWH else 0.0
                    p0 += x0
                    p1 += x
                    p01 += x0 * x
    return n, nz, s1, s2, pn, zz, p0, p1, p01


_CorrSums = tuple[float, float, float, float, float, float]


@njit(cache=True, nogil=True, fastmath=_FAST)
def _profile_sums_regular(day: np.ndarray, n_slots: int, ref: np.ndarray) -> _CorrSums:
    """(pairs, sum x, sum y, sum x^2, sum y^2, sum xy) of a regular day's readings x (the
    row's slice of the day) against ref y, slot by slot, over the slots where both are
    known; branch-free."""
    m = sx = sy = sxx = syy = sxy = 0.0
    for i in range(n_slots):
        x = np.float64(day[i])
        y = ref[i]
        okx = x == x
        oky = y == y
        cx = x if okx else 0.0
        ox = 1.0 if okx else 0.0
        cy = y if oky else 0.0
        oy = 1.0 if oky else 0.0
        m += ox * oy
        sx += cx * oy
        sy += cy * ox
        sxx += cx * cx * oy
        syy += cy * cy * ox
        sxy += cx * cy
    return m, sx, sy, sxx, syy, sxy


@njit(cache=True, nogil=True)
def _profile_sums_any(row: np.ndarray, a: int, b: int, slot: np.ndarray, ref: np.ndarray) -> _CorrSums:
    """The same over any day, through the slot map."""
    m = sx = sy = sxx = syy = sxy = 0.0
    for t in range(a, b):
        x = np.float64(row[t])
        y = ref[slot[t]]
        if x == x and y == y:
            m += 1.0
            sx += x
            sy += y
            sxx += x * x
            syy += y * y
            sxy += x * y
    return m, sx, sy, sxx, syy, sxy


@njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def meter_day_features(
    matrix: np.ndarray,  # float32 [columns, intervals]
    meters: np.ndarray,  # int64 [meters]: columns to score
    day_bounds: np.ndarray,  # int64 [days + 1]
    slot: np.ndarray,  # int64 [intervals]: slot of the local day
    n_slots: int,
    interval_h: float,
    window: int,  # days of own history behind PROFILE_CORR
    out: np.ndarray,  # float64 [6, meters, days] out: FEATURES but BAL_CORR (left as it is: balance_corr)
) -> None:
    """The pattern features of the module docstring for every meter and local day: one
    pass over each day's readings for all but PROFILE_CORR, which re-reads the day (in
    cache) against the mean day kept as running sums.

    Speed: on a regular day (`regular_days`) both passes are branch-free and vectorise; the
    longest off run is counted only on a day with two readings in a row at or below
    ZERO_KWH (on any other it is 1 or 0, from the count)."""
    n_days = day_bounds.shape[0] - 1
    sub_daily = n_slots > 1
    regular = regular_days(day_bounds, slot, n_slots)
    n_rows = meters.shape[0]
    chunk = 16  # meters per task: one set of buffers each
    for c in prange((n_rows + chunk - 1) // chunk):
        prof = np.zeros((n_days + 1, n_slots))  # cumulative day profiles (NaN as 0)
        seen = np.zeros((n_days + 1, n_slots))  # cumulative counts of readings
        ref = np.empty(n_slots)
        for j in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            row = matrix[meters[j]]
            for d in range(n_days):
                a = day_bounds[d]
                b = day_bounds[d + 1]
                if regular[d]:
                    n, nz, s1, s2, pn, zz, p0, p1, p01 = _day_sums_regular(row[a:b], n_slots, prof[d + 1], prof[d],
                                                                           seen[d + 1], seen[d])
                else:
                    n, nz, s1, s2, pn, zz, p0, p1, p01 = _day_sums_any(row, a, b, slot, prof[d + 1], prof[d],
                                                                       seen[d + 1], seen[d])
                longest = min(nz, 1.0)
                if zz > 0.0:  # two off readings in a row: find the longest run
                    run = 0
                    for t in range(a, b):
                        run = run + 1 if row[t] <= ZERO_KWH else 0
                        longest = max(longest, run)
                out[TOTAL, j, d] = s1
                out[ZERO_H, j, d] = longest * interval_h
                out[CV, j, d] = np.nan
                out[LAG1, j, d] = np.nan
                if sub_daily and n >= 3.0:
                    mean = s1 / n
                    var = s2 / n - mean * mean
                    out[CV, j, d] = np.sqrt(max(var, 0.0)) / mean if mean > 0.0 else np.nan
                    if var > 1e-12 and pn > 0.0:  # lag-1 covariance about the day's mean, from the pair sums
                        lag_cov = (p01 - mean * (p0 + p1) + pn * mean * mean) / pn
                        out[LAG1, j, d] = lag_cov / var
            for d in range(n_days):
                # own mean day over the window before d (the first days: the days after, up to window)
                lo = max(0, d - window)
                hi = d
                if d < 3:
                    lo = d + 1
                    hi = min(n_days, d + 1 + window)
                out[PROFILE_CORR, j, d] = np.nan
                if not (sub_daily and hi > lo):
                    continue
                ph = prof[hi]
                pl = prof[lo]
                sh = seen[hi]
                sl = seen[lo]
                for k in range(n_slots):
                    cc = sh[k] - sl[k]
                    ref[k] = (ph[k] - pl[k]) / cc if cc > 0.0 else np.nan
                if regular[d]:
                    m, sx, sy, sxx, syy, sxy = _profile_sums_regular(row[day_bounds[d]:day_bounds[d + 1]], n_slots, ref)
                else:
                    m, sx, sy, sxx, syy, sxy = _profile_sums_any(row, day_bounds[d], day_bounds[d + 1], slot, ref)
                if m >= 3.0:
                    out[PROFILE_CORR, j, d] = _corr(sxy - sx * sy / m, sxx - sx * sx / m, syy - sy * sy / m)


@njit(cache=True, nogil=True, fastmath=_FAST)
def _diff_sums(row: np.ndarray, res: np.ndarray, lo: int, hi: int) -> tuple[float, float, float]:
    """(sum dx*dr, dx*dx, dr*dr) over t in [lo, hi) of the first differences dx = row[t] -
    row[t - 1], dr = res[t] - res[t - 1] where all four readings are known; branch-free."""
    sxy = sxx = syy = 0.0
    for t in range(lo, hi):
        dx = np.float64(row[t]) - np.float64(row[t - 1])
        dr = res[t] - res[t - 1]
        ok = (dx == dx) & (dr == dr)
        cx = dx if ok else 0.0
        cr = dr if ok else 0.0
        sxy += cx * cr
        sxx += cx * cx
        syy += cr * cr
    return sxy, sxx, syy


@njit(cache=True, nogil=True, parallel=True)
def balance_corr(
    matrix: np.ndarray,  # float32 [columns, intervals]
    meters: np.ndarray,  # int64 [meters]: columns to score
    residual_row: np.ndarray,  # int64 [meters]: row of `residual` for each meter's master, -1 none
    residual: np.ndarray,  # float64 [masters, intervals]: balance_residual (or clean_residual)
    day_bounds: np.ndarray,  # int64 [days + 1]
    slot: np.ndarray,  # int64 [intervals]
    n_slots: int,
    out: np.ndarray,  # float64 [meters, days] out: BAL_CORR; NaN without a master or sub-daily data
) -> None:
    """BAL_CORR of the module docstring: per meter and day, the best correlation of first
    differences (meter against its master's residual) over the four whole-day windows of
    quarters ending in a quarter of that day.

    Speed: on a regular day (`regular_days`) each quarter is a run of intervals, summed
    branch-free (vectorised); other days go reading by reading through the slot map."""
    n_days = day_bounds.shape[0] - 1
    regular = regular_days(day_bounds, slot, n_slots)
    n_rows = meters.shape[0]
    chunk = 16  # meters per task: one buffer each
    for c in prange((n_rows + chunk - 1) // chunk):
        qs = np.zeros((n_days, QUARTERS, 3))  # per quarter: sum dx*dr, dx*dx, dr*dr
        for j in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            rrow = residual_row[j]
            if n_slots <= 1 or rrow < 0:
                out[j, :] = np.nan
                continue
            row = matrix[meters[j]]
            res = residual[rrow]
            qs[:] = 0.0
            for d in range(n_days):
                a = day_bounds[d]
                if regular[d]:
                    for q in range(QUARTERS):  # slot i is in quarter i * QUARTERS // n_slots
                        lo = max(a + (q * n_slots + QUARTERS - 1) // QUARTERS, 1)
                        hi = a + ((q + 1) * n_slots + QUARTERS - 1) // QUARTERS
                        qs[d, q, 0], qs[d, q, 1], qs[d, q, 2] = _diff_sums(row, res, lo, hi)
                    continue
                x0 = np.float64(row[a - 1]) if a > 0 else np.nan
                r0 = res[a - 1] if a > 0 else np.nan
                for t in range(a, day_bounds[d + 1]):
                    x = np.float64(row[t])
                    r = res[t]
                    if x == x and x0 == x0 and r == r and r0 == r0:
                        q = slot[t] * QUARTERS // n_slots
                        dx = x - x0
                        dr = r - r0
                        qs[d, q, 0] += dx * dr
                        qs[d, q, 1] += dx * dx
                        qs[d, q, 2] += dr * dr
                    x0 = x
                    r0 = r
            for d in range(n_days):
                best = np.nan
                for q_end in range(QUARTERS):
                    sxy = sxx = syy = 0.0
                    for back in range(QUARTERS):  # quarters q_end - 3 .. q_end, reaching into day d - 1
                        qq = q_end - back
                        dd = d
                        if qq < 0:
                            qq += QUARTERS
                            dd -= 1
                        if dd < 0:
                            continue
                        sxy += qs[dd, qq, 0]
                        sxx += qs[dd, qq, 1]
                        syy += qs[dd, qq, 2]
                    r = _corr(sxy, sxx, syy)
                    if r == r and not r <= best:
                        best = r
                out[j, d] = best


@njit(cache=True, nogil=True)
def _solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with a x = b for a small symmetric positive definite a (Cholesky; numba's
    np.linalg needs SciPy's LAPACK, which we do not install)."""
    n = b.shape[0]
    low = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1):
            acc = a[i, j]
            for m in range(j):
                acc -= low[i, m] * low[j, m]
            if i == j:
                low[i, i] = np.sqrt(max(acc, 1e-300))
            else:
                low[i, j] = acc / low[j, j]
    y = np.zeros(n)
    for i in range(n):
        acc = b[i]
        for m in range(i):
            acc -= low[i, m] * y[m]
        y[i] = acc / low[i, i]
    x = np.zeros(n)
    for i in range(n - 1, -1, -1):
        acc = y[i]
        for m in range(i + 1, n):
            acc -= low[m, i] * x[m]
        x[i] = acc / low[i, i]
    return x


@njit(cache=True, nogil=True, parallel=True)
def clean_residual(
    matrix: np.ndarray,  # float32 [columns, intervals]
    residual: np.ndarray,  # float64 [masters, intervals]: balance_residual
    day_bounds: np.ndarray,  # int64 [days + 1]
    pairs: np.ndarray,  # int64 [pairs, 2]: (master row, day) to clean
    sus_ptr: np.ndarray,  # int64 [pairs + 1]: CSR offsets into sus_cols
    sus_cols: np.ndarray,  # int64 [suspects]: columns of each pair's suspects
    out: np.ndarray,  # float64 [masters, intervals] out: residual less the suspects' fitted share
) -> None:
    """Explaining away: on each (master, day) of `pairs`, take out of the residual what a
    least-squares fit of its first differences on the suspects' first differences explains
    (a meter that reorders or randomises its readings, h3/h4/h6, leaves its own moves in
    the residual; once they are out, a neighbour that under-reports stands out again).
    `out` starts as a copy of `residual`; days not in `pairs` stay as they are."""
    for p in prange(pairs.shape[0]):
        g = pairs[p, 0]
        d = pairs[p, 1]
        a = day_bounds[d]
        b = day_bounds[d + 1]
        k = sus_ptr[p + 1] - sus_ptr[p]
        if k == 0 or b - a < 3 + k:
            continue
        cols = sus_cols[sus_ptr[p]:sus_ptr[p + 1]]
        ata = np.zeros((k, k))
        atb = np.zeros(k)
        dx = np.zeros(k)
        for t in range(max(a, 1), b):
            r1 = residual[g, t]
            r0 = residual[g, t - 1]
            if r1 != r1 or r0 != r0:
                continue
            ok = True
            for i in range(k):
                x1 = matrix[cols[i], t]
                x0 = matrix[cols[i], t - 1]
                if x1 != x1 or x0 != x0:
                    ok = False
                    break
                dx[i] = np.float64(x1) - np.float64(x0)
            if not ok:
                continue
            for i in range(k):
                atb[i] += dx[i] * (r1 - r0)
                for m in range(k):
                    ata[i, m] += dx[i] * dx[m]
        for i in range(k):
            ata[i, i] += 1e-9 + 1e-6 * ata[i, i]  # ridge: a suspect that never moved gets no weight
        beta = _solve_spd(ata, atb)
        for t in range(a, b):
            fit = 0.0
            for i in range(k):
                x = matrix[cols[i], t]
                fit += beta[i] * (np.float64(x) if x == x else 0.0)
            out[g, t] = residual[g, t] - fit


@njit(cache=True, nogil=True)
def _sorted_insert(buf: np.ndarray, n: int, v: float) -> int:
    """Insert v into the sorted buf[:n]; the new length."""
    m = n - 1
    while m >= 0 and buf[m] > v:
        buf[m + 1] = buf[m]
        m -= 1
    buf[m + 1] = v
    return n + 1


@njit(cache=True, nogil=True)
def _sort7(buf: np.ndarray) -> None:
    """Sort buf[:7] in place by a 16-comparator sorting network (Knuth, TAOCP 5.3.4): min
    and max, no branch (the order of a week's values is a coin toss, which insertion sort
    mispredicts: trailing_robust_z took 64-67 CPU ms a call with it, 49-50 with this)."""
    x0, x1, x2, x3, x4, x5, x6 = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6]
    x0, x6 = min(x0, x6), max(x0, x6)
    x2, x3 = min(x2, x3), max(x2, x3)
    x4, x5 = min(x4, x5), max(x4, x5)
    x0, x2 = min(x0, x2), max(x0, x2)
    x1, x4 = min(x1, x4), max(x1, x4)
    x3, x6 = min(x3, x6), max(x3, x6)
    x0, x1 = min(x0, x1), max(x0, x1)
    x2, x5 = min(x2, x5), max(x2, x5)
    x3, x4 = min(x3, x4), max(x3, x4)
    x1, x2 = min(x1, x2), max(x1, x2)
    x4, x6 = min(x4, x6), max(x4, x6)
    x2, x3 = min(x2, x3), max(x2, x3)
    x4, x5 = min(x4, x5), max(x4, x5)
    x1, x2 = min(x1, x2), max(x1, x2)
    x3, x4 = min(x3, x4), max(x3, x4)
    x5, x6 = min(x5, x6), max(x5, x6)
    buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6] = x0, x1, x2, x3, x4, x5, x6


@njit(cache=True, nogil=True)
def _sorted_remove(buf: np.ndarray, n: int, v: float) -> int:
    """Remove one value equal to v from the sorted buf[:n] (it must be there); the new length."""
    lo, hi = 0, n  # first index with buf[i] >= v
    while lo < hi:
        mid = (lo + hi) // 2
        if buf[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    for i in range(lo, n - 1):
        buf[i] = buf[i + 1]
    return n - 1


@njit(cache=True, nogil=True, inline="always")
def _dev_up(buf: np.ndarray, n: int, hi: int, med: float, i: int) -> float:
    """The i-th smallest deviation above the median (buf[hi + i] - med); -inf before the
    first, inf past the last."""
    if i < 0:
        return -np.inf
    return buf[hi + i] - med if hi + i < n else np.inf


@njit(cache=True, nogil=True, inline="always")
def _dev_down(buf: np.ndarray, hi: int, med: float, i: int) -> float:
    """The i-th smallest deviation below the median (med - buf[hi - 1 - i]); -inf before the
    first, inf past the last."""
    if i < 0:
        return -np.inf
    return med - buf[hi - 1 - i] if hi - 1 - i >= 0 else np.inf


@njit(cache=True, nogil=True)
def _sorted_median_mad(buf: np.ndarray, n: int) -> tuple[float, float]:
    """(median, median absolute deviation) of the sorted buf[:n], n >= 1, without sorting the
    deviations: those above the median (buf[hi:] - med) and those below it (med -
    buf[:hi][::-1]) are each already in order, so the middle one (and the one before, for
    an even n) is the k-th of two sorted runs, found by bisecting on how many the first run
    gives (log steps, not a merge of half the values)."""
    h = n // 2
    med = buf[h] if n % 2 else 0.5 * (buf[h - 1] + buf[h])
    hi = h  # first index with buf[hi] >= med (buf[h] >= med): only ties move it down
    while hi > 0 and buf[hi - 1] >= med:
        hi -= 1
    k = h  # the MAD is the k-th smallest deviation (0-based), and the (k - 1)-th for an even n
    n_up = n - hi
    lo_i = max(0, k + 1 - hi)  # i: deviations taken from above among the k + 1 smallest
    hi_i = min(k + 1, n_up)
    while lo_i < hi_i:
        i = (lo_i + hi_i) // 2
        if _dev_up(buf, n, hi, med, i) < _dev_down(buf, hi, med, k - i):  # the (i+1)-th above belongs in
            lo_i = i + 1
        else:
            hi_i = i
    i = lo_i
    a = _dev_up(buf, n, hi, med, i - 1)  # the largest taken from above (-inf: none)
    b = _dev_down(buf, hi, med, k - i)  # the largest taken from below
    cur = max(a, b)
    if n % 2:
        return med, cur
    prev = max(_dev_up(buf, n, hi, med, i - 2), b) if a >= b else max(a, _dev_down(buf, hi, med, k - i - 1))
    return med, 0.5 * (prev + cur)


@njit(cache=True, nogil=True)
def _merge_in(win: np.ndarray, n: int, new: np.ndarray, m: int) -> int:
    """Merge the sorted new[:m] into the sorted win[:n] (room for n + m), from the back;
    the new length. Branch-free steps (which side moves is a select): the order of two
    runs of readings is a coin toss that a branch would mispredict."""
    i = n - 1
    j = m - 1
    w = n + m - 1
    while j >= 0:
        a = win[i] if i >= 0 else -np.inf
        b = new[j]
        take = a > b
        win[w] = a if take else b
        i -= 1 if take else 0
        j -= 0 if take else 1
        w -= 1
    return n + m


@njit(cache=True, nogil=True)
def _robust_ref(buf: np.ndarray, n: int, floor: float) -> tuple[float, float]:
    """(median, 1.4826 MAD + floor) of the sorted buf[:n]; NaN for both below 3 values."""
    if n < 3:
        return np.nan, np.nan
    med, mad = _sorted_median_mad(buf, n)
    return med, 1.4826 * mad + floor


@njit(cache=True, nogil=True)
def _z_block(values: np.ndarray, j: int, a: int, b: int, med: float, scale: float, out: np.ndarray,
             median_out: np.ndarray) -> None:
    xs = values[j, a:b]  # slices: indices provably >= 0, so no wraparound check (which makes gathers)
    o = out[j, a:b]
    mo = median_out[j, a:b]
    for i in range(b - a):
        x = xs[i]
        mo[i] = med if x == x else np.nan
        o[i] = (x - med) / scale if x == x else np.nan


@njit(cache=True, nogil=True, parallel=True)
def trailing_robust_z(
    values: np.ndarray,  # float64 [meters, days]
    window: int,  # days of own history
    step: int,  # days per block sharing one reference
    min_ref: int,  # fewest reference values; with fewer behind, the first `window` days are used
    floor: float,  # least robust scale (a feature that never moved must move this much)
    out: np.ndarray,  # float64 [meters, days] out: (value - median) / (1.4826 MAD + floor)
    median_out: np.ndarray,  # float64 [meters, days] out: the reference median
) -> None:
    """Each meter-day against the same meter's own past: the robust z-score of its value.

    Days go in blocks of `step` days; every day of the block starting on day s is compared
    with the median and MAD of the meter's values on days s - window .. s - 1 (one median
    per block, not per day: a week's reference is the month before it). A block with fewer
    than `min_ref` values behind it (the first week) is compared with the first `window`
    days of the view, itself included: the start-up rule. NaN values are skipped; fewer
    than 3 reference values give NaN.

    Speed: the reference days are kept sorted as the window slides (a block merges in its
    days, sorted, and drops those that left the window), so a median is read, not sorted
    for, and the MAD comes from merging the deviations below and above it, which are
    already in order. The start-up reference is the window of a later block when one holds
    exactly the first `window` days (it does on a month), so it is not sorted again."""
    n_rows, n_days = values.shape
    size = max(window, n_days, 1)
    w0 = min(window, n_days)
    chunk = 64  # rows per task: one set of buffers each
    for c in prange((n_rows + chunk - 1) // chunk):
        win = np.empty(size)  # the window's values, days [lo, hi), NaN skipped, sorted
        first = np.empty(size)  # the start-up reference: days [0, w0), sorted
        batch = np.empty(size)
        short_block = np.zeros((n_days + step - 1) // step + 1, dtype=np.bool_)
        for j in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            n = 0
            n_first = -1  # not known yet
            first_med = first_scale = np.nan  # its reference, when the window held exactly it and was scored
            first_known = False
            lo = 0
            hi = 0
            short = False
            for s in range(0, n_days, step):
                new_lo = max(0, s - window)
                if new_lo >= hi:  # no overlap with the window before: start again
                    n = 0
                    lo = hi = new_lo
                for k in range(lo, new_lo):
                    v = values[j, k]
                    if v == v:
                        n = _sorted_remove(win, n, v)
                m = 0  # the block's new values, NaN skipped, then sorted
                for k in range(hi, s):
                    v = values[j, k]
                    batch[m] = v
                    m += v == v
                if m == 7:  # a whole week (REF_STEP in twin.theft)
                    _sort7(batch)
                else:
                    sorted_n = 0
                    for k in range(m):
                        sorted_n = _sorted_insert(batch, sorted_n, batch[k])
                n = _merge_in(win, n, batch, m)
                lo = new_lo
                hi = s
                at_first = lo == 0 and hi == w0 and n_first < 0
                if at_first:
                    n_first = n
                short_block[s // step] = n < min_ref
                if n < min_ref:
                    if at_first:
                        first[:n] = win[:n]
                    short = True  # scored below, against the start-up reference
                    continue
                med, scale = _robust_ref(win, n, floor)
                if at_first:  # the start-up reference: kept, not sorted or read again
                    first_med, first_scale = med, scale
                    first_known = True
                _z_block(values, j, s, min(s + step, n_days), med, scale, out, median_out)
            if not short:
                continue
            if n_first < 0:
                n_first = 0
                for k in range(w0):
                    v = values[j, k]
                    if v == v:
                        n_first = _sorted_insert(first, n_first, v)
            med, scale = (first_med, first_scale) if first_known else _robust_ref(first, n_first, floor)
            for s in range(0, n_days, step):
                if short_block[s // step]:
                    _z_block(values, j, s, min(s + step, n_days), med, scale, out, median_out)


@njit(cache=True, nogil=True)
def _median_select(buf: np.ndarray, n: int) -> float:
    """Median of buf[:n], n >= 1, reordering it (quickselect; the same value as sorting)."""
    h = n // 2
    upper = select(buf[:n], h)
    if n % 2:
        return upper
    lower = buf[0]
    for i in range(1, h):  # after the select, the next order statistic down is the largest of buf[:h]
        lower = max(lower, buf[i])
    return 0.5 * (lower + upper)


@njit(cache=True, nogil=True, parallel=True)
def group_median_mad(
    values: np.ndarray,  # float64 [meters, days]
    group_ptr: np.ndarray,  # int64 [groups + 1]: CSR offsets into group_rows
    group_rows: np.ndarray,  # int64 [members]: rows of `values` in each group
    median_out: np.ndarray,  # float64 [meters, days] out: median of the meter's group that day (NaN skipped)
    mad_out: np.ndarray,  # float64 [meters, days] out: its median absolute deviation (left as it is without with_mad)
    with_mad: bool = True,  # False: the medians only (a peer median), mad_out untouched
) -> None:
    """Per meter-day, the median and MAD over the meters of its group that day; rows in no
    group stay as they are (fill them before)."""
    n_days = values.shape[1]
    for g in prange(group_ptr.shape[0] - 1):
        a = group_ptr[g]
        b = group_ptr[g + 1]
        buf = np.empty(b - a)
        dev = np.empty(b - a)
        for d in range(n_days):
            n = 0
            for k in range(a, b):
                v = values[group_rows[k], d]
                if v == v:
                    buf[n] = v
                    n += 1
            med = np.nan
            mad = np.nan
            if n:
                med = _median_select(buf, n)
                if with_mad:
                    for k in range(n):
                        dev[k] = abs(buf[k] - med)
                    mad = _median_select(dev, n)
            for k in range(a, b):
                median_out[group_rows[k], d] = med
            if with_mad:
                for k in range(a, b):
                    mad_out[group_rows[k], d] = mad


__all__ = ["BAL_CORR", "CV", "FEATURES", "LAG1", "PROFILE_CORR", "TOTAL", "ZERO_H", "ZERO_KWH",
           "balance_corr", "balance_day_fits", "balance_residual", "balance_sums", "clean_residual",
           "group_median_mad", "meter_day_features", "regular_days", "trailing_robust_z"]
