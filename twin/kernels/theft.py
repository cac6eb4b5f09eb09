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

TOTAL, ZERO_H, CV, LAG1, PROFILE_CORR, BAL_CORR = range(6)
FEATURES = ("total", "zero_hours", "cv", "lag1", "profile_corr", "balance_corr")
#: A reading at or below this (kWh per interval) counts as "off" for ZERO_H.
ZERO_KWH = 1e-4
QUARTERS = 4


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


@njit(cache=True, nogil=True, parallel=True, fastmath={"nsz", "arcp", "contract", "reassoc"})
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
    cache) against the mean day kept as running sums."""
    n_days = day_bounds.shape[0] - 1
    sub_daily = n_slots > 1
    for j in prange(meters.shape[0]):
        row = matrix[meters[j]]
        prof = np.zeros((n_days + 1, n_slots))  # cumulative day profiles (NaN as 0)
        seen = np.zeros((n_days + 1, n_slots))  # cumulative counts of readings
        ref = np.empty(n_slots)
        for d in range(n_days):
            a = day_bounds[d]
            b = day_bounds[d + 1]
            n = 0
            s1 = s2 = 0.0
            pn = 0  # pairs of consecutive readings: sums of x_prev, x, x_prev * x
            p0 = p1 = p01 = 0.0
            run = 0
            longest = 0
            cum = prof[d + 1]
            cnt = seen[d + 1]
            cum[:] = prof[d]
            cnt[:] = seen[d]
            x0 = np.float64(row[a - 1]) if a > 0 else np.nan
            for t in range(a, b):
                x = np.float64(row[t])
                if x == x:
                    n += 1
                    s1 += x
                    s2 += x * x
                    run = run + 1 if x <= ZERO_KWH else 0
                    longest = max(longest, run)
                    k = slot[t]
                    cum[k] += x
                    cnt[k] += 1.0
                    if x0 == x0 and t > a:
                        pn += 1
                        p0 += x0
                        p1 += x
                        p01 += x0 * x
                else:
                    run = 0
                x0 = x
            out[TOTAL, j, d] = s1
            out[ZERO_H, j, d] = longest * interval_h
            out[CV, j, d] = np.nan
            out[LAG1, j, d] = np.nan
            if sub_daily and n >= 3:
                mean = s1 / n
                var = s2 / n - mean * mean
                out[CV, j, d] = np.sqrt(max(var, 0.0)) / mean if mean > 0.0 else np.nan
                if var > 1e-12 and pn > 0:  # lag-1 covariance about the day's mean, from the pair sums
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
            if sub_daily and hi > lo:
                for k in range(n_slots):
                    c = seen[hi, k] - seen[lo, k]
                    ref[k] = (prof[hi, k] - prof[lo, k]) / c if c > 0.0 else np.nan
                m = 0
                sx = sy = sxx = syy = sxy = 0.0
                for t in range(day_bounds[d], day_bounds[d + 1]):
                    x = np.float64(row[t])
                    y = ref[slot[t]]
                    if x == x and y == y:
                        m += 1
                        sx += x
                        sy += y
                        sxx += x * x
                        syy += y * y
                        sxy += x * y
                if m >= 3:
                    out[PROFILE_CORR, j, d] = _corr(sxy - sx * sy / m, sxx - sx * sx / m, syy - sy * sy / m)


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
    quarters ending in a quarter of that day."""
    n_days = day_bounds.shape[0] - 1
    for j in prange(meters.shape[0]):
        rrow = residual_row[j]
        if n_slots <= 1 or rrow < 0:
            out[j, :] = np.nan
            continue
        row = matrix[meters[j]]
        res = residual[rrow]
        qs = np.zeros((n_days, QUARTERS, 3))  # per quarter: sum dx*dr, dx*dx, dr*dr
        for d in range(n_days):
            a = day_bounds[d]
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
def _median_sorting(buf: np.ndarray, n: int) -> float:
    """Median of buf[:n], sorting it in place (insertion sort: n is a few dozen here, and
    np.median would allocate a copy per call)."""
    for i in range(1, n):
        v = buf[i]
        m = i - 1
        while m >= 0 and buf[m] > v:
            buf[m + 1] = buf[m]
            m -= 1
        buf[m + 1] = v
    h = n // 2
    return buf[h] if n % 2 else 0.5 * (buf[h - 1] + buf[h])


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
    than 3 reference values give NaN."""
    n_days = values.shape[1]
    for j in prange(values.shape[0]):
        ref = np.empty(max(window, n_days, 1))
        dev = np.empty(max(window, n_days, 1))
        for s in range(0, n_days, step):
            n = 0
            for k in range(max(0, s - window), s):
                v = values[j, k]
                if v == v:
                    ref[n] = v
                    n += 1
            if n < min_ref:
                n = 0
                for k in range(min(window, n_days)):
                    v = values[j, k]
                    if v == v:
                        ref[n] = v
                        n += 1
            med = np.nan
            scale = np.nan
            if n >= 3:
                med = _median_sorting(ref, n)
                for k in range(n):
                    dev[k] = abs(ref[k] - med)
                scale = 1.4826 * _median_sorting(dev, n) + floor
            for d in range(s, min(s + step, n_days)):
                x = values[j, d]
                median_out[j, d] = med if x == x else np.nan
                out[j, d] = (x - med) / scale if x == x else np.nan


@njit(cache=True, nogil=True, parallel=True)
def group_median_mad(
    values: np.ndarray,  # float64 [meters, days]
    group_ptr: np.ndarray,  # int64 [groups + 1]: CSR offsets into group_rows
    group_rows: np.ndarray,  # int64 [members]: rows of `values` in each group
    median_out: np.ndarray,  # float64 [meters, days] out: median of the meter's group that day (NaN skipped)
    mad_out: np.ndarray,  # float64 [meters, days] out: its median absolute deviation
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
                med = _median_sorting(buf, n)
                for k in range(n):
                    dev[k] = abs(buf[k] - med)
                mad = _median_sorting(dev, n)
            for k in range(a, b):
                median_out[group_rows[k], d] = med
                mad_out[group_rows[k], d] = mad


__all__ = ["BAL_CORR", "CV", "FEATURES", "LAG1", "PROFILE_CORR", "TOTAL", "ZERO_H", "ZERO_KWH",
           "balance_corr", "balance_day_fits", "balance_residual", "balance_sums", "clean_residual",
           "group_median_mad", "meter_day_features", "trailing_robust_z"]
