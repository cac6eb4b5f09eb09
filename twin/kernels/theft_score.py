"""Theft score kernels: the per meter-day arithmetic that turns the z-scores of
`twin.kernels.theft` into the theft score of `twin.theft`, fused into a few passes.

Each kernel is the numpy expression of `twin.theft` it replaces, bit for bit: the same
operations in the same order in float64, no fastmath. numpy's elementwise rules are kept
where they decide a result: `np.maximum` and `np.minimum` return NaN when either side is,
and the second argument on a tie (`_maximum`, `_minimum`); `np.fmax` ignores a NaN;
`np.clip` keeps a value that is not strictly outside its bounds; `np.nan_to_num` makes NaN
0 and an infinity the largest finite float; a comparison with NaN is false. Arrays are
float64 [meters, days] unless said; meters are split across threads.

- `trailing_run`: the best run of days ending each day (`twin.theft.trailing_run`);
- `drop_run`: DROP from the day total's z, its building's median, the master's loss and
  the relay cuts, then its trailing run;
- `pattern_terms`: ZERO, CV_LOW, LAG and SHAPE finished, and the largest pattern z;
- `balance_score`: BAL's z against its neighbours and its run, the joint term, the onset
  term, and the score with the term that gave it;
- `fit_medians`: per master, the median line fit of its cleanest quarter of days;
- `nan_to_num`: np.nan_to_num in one pass (the masters' residual before its day sums).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_BIG = np.finfo(np.float64).max  # np.nan_to_num's stand-in for an infinity


@njit(cache=True, nogil=True)
def _maximum(a: float, b: float) -> float:
    """np.maximum of two floats: NaN if either is, else the larger, `b` on a tie."""
    return a if (a > b or a != a) else b


@njit(cache=True, nogil=True)
def _minimum(a: float, b: float) -> float:
    """np.minimum of two floats: NaN if either is, else the smaller, `b` on a tie."""
    return a if (a < b or a != a) else b


@njit(cache=True, nogil=True)
def _fmax(a: float, b: float) -> float:
    """np.fmax of two floats: the larger, a NaN ignored (NaN only if both are)."""
    return a if (a >= b or b != b) else b


@njit(cache=True, nogil=True)
def _nan_to_num(x: float) -> float:
    """np.nan_to_num of a float: NaN as 0, an infinity as the largest finite float."""
    if x != x:
        return 0.0
    if x > _BIG:
        return _BIG
    if x < -_BIG:
        return -_BIG
    return x


@njit(cache=True, nogil=True)
def _run_row(z: np.ndarray, days: int, out: np.ndarray) -> None:
    """trailing_run of one row into `out`, which may be `z` itself: days are done last to
    first, so a day's run reads the days before it before they are overwritten. The sum of
    a run adds the days back from the last one, as the numpy version's shifted adds do."""
    n_days = z.shape[0]
    longest = min(days, n_days)
    for d in range(n_days - 1, -1, -1):
        x = z[d]
        filled = _nan_to_num(x)
        best = filled
        acc = filled
        for n in range(1, min(longest, d + 1)):
            acc = acc + _nan_to_num(z[d - n])
            best = _maximum(best, acc / math.sqrt(n + 1))
        out[d] = np.nan if x != x else best


@njit(cache=True, nogil=True, parallel=True)
def trailing_run(
    z: np.ndarray,  # float64 [meters, days]
    days: int,  # longest run
    out: np.ndarray,  # float64 [meters, days] out
) -> None:
    """Per meter-day, the largest over k = 1..days of sum(z[d - k + 1 .. d]) / sqrt(k):
    NaN days count as 0 inside a run; a NaN day itself stays NaN."""
    for j in prange(z.shape[0]):
        _run_row(z[j], days, out[j])


@njit(cache=True, nogil=True, parallel=True)
def drop_run(
    drop: np.ndarray,  # float64 [meters, days]: the day total's z, higher lower than usual
    peer: np.ndarray,  # float64 [meters, days]: median `drop` of the meter's group that day (NaN none)
    total: np.ndarray,  # float64 [meters, days]: the day total (kWh), at least 0
    base: np.ndarray,  # float64 [meters, days]: exp of the log total the meter's past expects
    loss: np.ndarray,  # float64 [meters, days]: the master's unexplained energy that day (NaN none)
    cut: np.ndarray,  # bool [meters, days]: supply cut some time that day
    eps: float,  # kWh added to a total before its log (DROP_EPS_KWH)
    cap: float,  # most one day's DROP counts (Z_CAP)
    days: int,  # longest run (RUN_DAYS)
    out: np.ndarray,  # float64 [meters, days] out: z["drop"]
) -> None:
    """DROP per meter-day, then its trailing run. Less the group's median (when there is
    one), capped at `cap`; with a master, a positive DROP is scaled by the share of the
    deficit (`base - eps - total`, when positive) the master's loss explains, clipped to
    [0, 1]; a day with the supply cut counts at most 0."""
    n_days = drop.shape[1]
    for j in prange(drop.shape[0]):
        row = out[j]
        for d in range(n_days):
            p = peer[j, d]
            v = _minimum(drop[j, d] - (p if np.isfinite(p) else 0.0), cap)
            lost = loss[j, d]
            if np.isfinite(lost):
                deficit = base[j, d] - eps - total[j, d]
                share = lost / deficit if deficit > 0 else 1.0
                share = 0.0 if share < 0.0 else (1.0 if share > 1.0 else share)  # np.clip
                v = v * (share if v > 0 else 1.0)
            if cut[j, d]:
                v = _minimum(v, 0.0)
            row[d] = v
        _run_row(row, days, row)


@njit(cache=True, nogil=True, parallel=True)
def pattern_terms(
    zero: np.ndarray,  # float64 [meters, days] in/out: ZERO's z; out: at most 0 on a day cut
    cv: np.ndarray,  # float64 [meters, days]: CV's z (CV_HIGH)
    raw_cv: np.ndarray,  # float64 [meters, days]: CV itself
    lag: np.ndarray,  # float64 [meters, days] in/out: LAG1's z; out: negated (LAG)
    shape: np.ndarray,  # float64 [meters, days] in/out: PROFILE_CORR's z; out: negated (SHAPE)
    cut: np.ndarray,  # bool [meters, days]: supply cut some time that day
    flat_cv: float,  # CV below which a day is flat (FLAT_CV)
    flat_score: float,  # CV_LOW of a flat day (FLAT_SCORE)
    cv_low: np.ndarray,  # float64 [meters, days] out: CV_LOW, flat_score on a flat day else -cv
    pattern: np.ndarray,  # float64 [meters, days] out: fmax of ZERO, CV_HIGH, CV_LOW, LAG, SHAPE
) -> None:
    """The pattern terms but DROP, finished in place, and the largest of them per meter-day
    (NaN terms ignored, folded left to right as np.fmax.reduce does)."""
    n_days = zero.shape[1]
    for j in prange(zero.shape[0]):
        for d in range(n_days):
            z0 = zero[j, d]
            if cut[j, d]:
                z0 = _minimum(z0, 0.0)
                zero[j, d] = z0
            c = cv[j, d]
            low = flat_score if raw_cv[j, d] < flat_cv else -c
            cv_low[j, d] = low
            lg = -lag[j, d]
            lag[j, d] = lg
            sh = -shape[j, d]
            shape[j, d] = sh
            pattern[j, d] = _fmax(_fmax(_fmax(_fmax(z0, c), low), lg), sh)


@njit(cache=True, nogil=True)
def _pick(term: float, i: int, best: float, src: int) -> tuple[float, int]:
    """The term and its index when it beats the best so far (NaN never does; a tie keeps
    the earlier), else the best so far."""
    better = term > best
    return (term if better else best), (i if better else src)


@njit(cache=True, nogil=True, parallel=True)
def balance_score(
    bal: np.ndarray,  # float64 [meters, days]: BAL_CORR
    med: np.ndarray,  # float64 [meters, days]: median BAL_CORR of the meter's group that day
    mad: np.ndarray,  # float64 [meters, days]: its MAD
    floor: float,  # added in quadrature to the group's scale (FLOORS["bal"])
    cap: float,  # most one day's BAL counts (BAL_CAP)
    days: int,  # longest run (RUN_DAYS)
    weights: np.ndarray,  # float64 [6]: weight of each pattern term, in PATTERN order
    drop: np.ndarray,  # float64 [meters, days]: z["drop"]
    zero: np.ndarray,  # float64 [meters, days]: z["zero"]
    cv_high: np.ndarray,  # float64 [meters, days]: z["cv_high"]
    cv_low: np.ndarray,  # float64 [meters, days]: z["cv_low"]
    lag: np.ndarray,  # float64 [meters, days]: z["lag"]
    shape: np.ndarray,  # float64 [meters, days]: z["shape"]
    onset: np.ndarray,  # float64 [meters, days]: onset evidence (NaN none)
    onset_weight: float,  # ONSET_WEIGHT
    z_bal: np.ndarray,  # float64 [meters, days] out: trailing run of min((bal - med) / hypot(1.4826 mad, floor), cap)
    z_onset: np.ndarray,  # float64 [meters, days] out: onset_weight * onset
    score: np.ndarray,  # float64 [meters, days] out: the largest term (NaN when none is a number)
    source: np.ndarray,  # int64 [meters, days] out: its index (PATTERN, then 6 joint, 7 onset; -1 none)
) -> None:
    """BAL's z against its neighbours and its run, then per meter-day the score: the largest
    of the weighted pattern terms, the joint term `(BAL + max(DROP, 0)) / sqrt(2)` where
    BAL > 0 (DROP NaN as 0), and the weighted onset; the first term wins a tie."""
    n_days = bal.shape[1]
    n_rows = bal.shape[0]
    root2 = math.sqrt(2.0)
    chunk = 256  # rows per task: a group's meters share one MAD a day, so its scale is reused
    for c in prange((n_rows + chunk - 1) // chunk):
        last_mad = np.full(n_days, np.nan)  # never equal: the first row works it out
        last_scale = np.empty(n_days)
        for j in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            zb = z_bal[j]
            for d in range(n_days):
                m = mad[j, d]
                if m != last_mad[d]:  # an equal MAD has the same scale (hypot ignores a zero's sign)
                    last_mad[d] = m
                    last_scale[d] = math.hypot(1.4826 * m, floor)
                zb[d] = _minimum((bal[j, d] - med[j, d]) / last_scale[d], cap)
            _run_row(zb, days, zb)
            for d in range(n_days):
                b = zb[d]
                joint = (b + _maximum(_nan_to_num(drop[j, d]), 0.0)) / root2 if b > 0 else np.nan
                late = onset_weight * onset[j, d]
                z_onset[j, d] = late
                best, src = _pick(weights[0] * drop[j, d], 0, -np.inf, -1)
                best, src = _pick(weights[1] * zero[j, d], 1, best, src)
                best, src = _pick(weights[2] * cv_high[j, d], 2, best, src)
                best, src = _pick(weights[3] * cv_low[j, d], 3, best, src)
                best, src = _pick(weights[4] * lag[j, d], 4, best, src)
                best, src = _pick(weights[5] * shape[j, d], 5, best, src)
                best, src = _pick(joint, 6, best, src)
                best, src = _pick(late, 7, best, src)
                score[j, d] = best if src >= 0 else np.nan
                source[j, d] = src


@njit(cache=True, nogil=True, parallel=True)
def nan_to_num(
    values: np.ndarray,  # float64 [rows, n]
    out: np.ndarray,  # float64 [rows, n] out
) -> None:
    """np.nan_to_num of values: NaN as 0, an infinity as the largest finite float."""
    for j in prange(values.shape[0]):
        for t in range(values.shape[1]):
            out[j, t] = _nan_to_num(values[j, t])


@njit(cache=True, nogil=True)
def _median(values: np.ndarray) -> float:
    """np.median of values (sorted in place): NaN if one is, else the mean of the middle one
    or two, summed from 0.0 as np.mean does (a median of -0.0 is 0.0)."""
    n = values.shape[0]
    values.sort()  # NaN sorts last
    if values[n - 1] != values[n - 1]:
        return np.nan
    h = n // 2
    if n % 2:
        return (0.0 + values[h]) / 1.0
    return (0.0 + values[h - 1] + values[h]) / 2.0


@njit(cache=True, nogil=True)
def fit_medians(
    fits: np.ndarray,  # float64 [masters, days, 3]: balance_day_fits (a, c, rms), NaN rms unfitted
    quantile: float,  # the share of the days kept, cleanest first (0.25)
    a_out: np.ndarray,  # float64 [masters] out: median a over the days kept (NaN: no day fitted)
    c_out: np.ndarray,  # float64 [masters] out: median c over the days kept
) -> None:
    """Per master, the median fit of its cleanest days: the days whose rms is at or below
    the `quantile` of the fitted days' rms (np.quantile's default linear interpolation)."""
    n_masters, n_days, _ = fits.shape
    rms = np.empty(n_days)
    kept_a = np.empty(n_days)
    kept_c = np.empty(n_days)
    for g in range(n_masters):
        n = 0
        for d in range(n_days):
            r = fits[g, d, 2]
            if np.isfinite(r):
                rms[n] = r
                n += 1
        a_out[g] = np.nan
        c_out[g] = np.nan
        if n == 0:
            continue
        ranked = np.sort(rms[:n])
        at = (n - 1) * quantile  # np.quantile, method "linear"
        if at >= n - 1:
            q = ranked[n - 1]
        else:
            lo = math.floor(at)
            t = at - lo
            below = ranked[int(lo)]
            above = ranked[int(lo) + 1]
            step = above - below
            q = above - step * (1 - t) if t >= 0.5 else below + step * t
        m = 0
        for d in range(n_days):
            r = fits[g, d, 2]
            if np.isfinite(r) and r <= q:
                kept_a[m] = fits[g, d, 0]
                kept_c[m] = fits[g, d, 1]
                m += 1
        if m:  # always: the least rms is at or below the quantile
            a_out[g] = _median(kept_a[:m])
            c_out[g] = _median(kept_c[:m])


__all__ = ["balance_score", "drop_run", "fit_medians", "nan_to_num", "pattern_terms", "trailing_run"]
