"""The theft kernels' fast paths against plain loops: DST days (a slot missing or repeated,
the scalar path) beside regular ones (the vectorised path) at 15 minutes and hourly, the
sliding sorted window of trailing_robust_z over many window/step settings, quickselect
medians over groups of every size, and balance_block_z's meters scored side by side
(lanes) against a plain loop per meter."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.kernels import theft as k
from twin.kernels import theft_features as kf
from twin.kernels.load import local_calendar

BERLIN = "Europe/Berlin"


def _readings(rng: np.random.Generator, cols: int, n: int) -> np.ndarray:
    m = rng.gamma(0.8, 0.2, size=(cols, n)).astype(np.float32)
    m[rng.random(m.shape) < 0.03] = np.nan
    m[rng.random(m.shape) < 0.05] = 0.0
    m[0, 100:130] = 0.0  # a long off run
    m[1, 40:60] = np.nan  # a gap across readings
    m[2, :] = 0.25  # flat: no spread, no autocorrelation
    return m


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3:
        return np.nan
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else np.nan


def _reference(m: np.ndarray, meters: np.ndarray, rrow: np.ndarray, res: np.ndarray, bounds: np.ndarray,
               slot: np.ndarray, n_slots: int, window: int, interval_h: float) -> np.ndarray:
    """meter_day_features and balance_corr as plain loops over each day's intervals and
    their slots (any day: a DST day has a slot missing or twice)."""
    n_days = bounds.size - 1
    out = np.full((6, meters.size, n_days), np.nan)
    for j, c in enumerate(meters):
        x = m[c].astype(np.float64)
        sums = np.zeros((n_days, n_slots))
        counts = np.zeros((n_days, n_slots))
        qs = np.zeros((n_days, k.QUARTERS, 3))
        for d in range(n_days):
            day = x[bounds[d]:bounds[d + 1]]
            ok = np.isfinite(day)
            out[k.TOTAL, j, d] = day[ok].sum()
            run = longest = 0
            for v in day:
                run = run + 1 if (np.isfinite(v) and v <= k.ZERO_KWH) else 0
                longest = max(longest, run)
            out[k.ZERO_H, j, d] = longest * interval_h
            for t in range(bounds[d], bounds[d + 1]):
                if np.isfinite(x[t]):
                    sums[d, slot[t]] += x[t]
                    counts[d, slot[t]] += 1
            if n_slots > 1 and ok.sum() >= 3:
                mean, var = day[ok].mean(), day[ok].var()
                out[k.CV, j, d] = np.sqrt(var) / mean if mean > 0 else np.nan
                pairs = [(day[t - 1] - mean) * (day[t] - mean) for t in range(1, day.size) if ok[t - 1] and ok[t]]
                if var > 1e-12 and pairs:
                    out[k.LAG1, j, d] = np.mean(pairs) / var
            if rrow[j] >= 0 and n_slots > 1:
                r = res[rrow[j]]
                for t in range(max(bounds[d], 1), bounds[d + 1]):
                    if np.isfinite([x[t - 1], x[t], r[t - 1], r[t]]).all():
                        dx, dr = x[t] - x[t - 1], r[t] - r[t - 1]
                        qs[d, slot[t] * k.QUARTERS // n_slots] += [dx * dr, dx * dx, dr * dr]
        for d in range(n_days):
            lo, hi = (max(0, d - window), d) if d >= 3 else (d + 1, min(n_days, d + 1 + window))
            if n_slots > 1 and hi > lo:
                with np.errstate(invalid="ignore", divide="ignore"):
                    prof = sums[lo:hi].sum(axis=0) / counts[lo:hi].sum(axis=0)
                day = x[bounds[d]:bounds[d + 1]]
                ref = prof[slot[bounds[d]:bounds[d + 1]]]
                ok = np.isfinite(day) & np.isfinite(ref)
                out[k.PROFILE_CORR, j, d] = _corr(day[ok], ref[ok])
            if rrow[j] >= 0 and n_slots > 1:
                best = np.nan
                for q_end in range(k.QUARTERS):
                    s = np.zeros(3)
                    for back in range(k.QUARTERS):
                        qq, dd = q_end - back, d
                        if qq < 0:
                            qq, dd = qq + k.QUARTERS, d - 1
                        if dd >= 0:
                            s += qs[dd, qq]
                    if s[1] > 0 and s[2] > 0:
                        best = np.nanmax([best, s[0] / np.sqrt(s[1] * s[2])])
                out[k.BAL_CORR, j, d] = best
    return out


@pytest.mark.parametrize(("month", "interval_s"), [(3, 900), (10, 900), (3, 3600), (7, 900)])
def test_features_on_dst_and_regular_days_match_plain_loops(month: int, interval_s: int) -> None:
    """meter_day_features and balance_corr equal the plain loops on a window holding a DST
    day (23 or 25 hours: the scalar path) and regular days (the vectorised path), with
    missing readings, zeros, off runs and a flat meter."""
    per_day = 86400 // interval_s
    n_days = 12
    start = int(datetime(2026, month, 20, tzinfo=ZoneInfo(BERLIN)).timestamp())
    cal = local_calendar(start, n_days * per_day, interval_s, BERLIN)
    regular = k.regular_days(cal.day_bounds, cal.slot, cal.n_slots)
    full = np.diff(cal.day_bounds) == per_day
    assert np.array_equal(regular, cal.day_regular & full)  # whole days whose slots run 0, 1, ...
    assert regular[:-1].all() == (month == 7)
    rng = np.random.default_rng(month + interval_s)
    m = _readings(rng, 6, cal.n_intervals)
    meters = np.array([0, 1, 2, 3, 5], dtype=np.int64)
    rrow = np.array([0, 0, -1, 1, 0], dtype=np.int64)
    res = rng.normal(0, 0.1, size=(2, cal.n_intervals))
    res[0, 10:14] = np.nan
    window = 5
    out = np.full((6, meters.size, len(cal.days)), np.nan)
    k.meter_day_features(m, meters, cal.day_bounds, cal.slot, cal.n_slots, cal.interval_h, window, out)
    k.balance_corr(m, meters, rrow, res, cal.day_bounds, cal.slot, cal.n_slots, out[k.BAL_CORR])
    ref = _reference(m, meters, rrow, res, cal.day_bounds, cal.slot, cal.n_slots, window, cal.interval_h)
    # a flat day's correlation with its flat mean day is 0 / 0: the kernel's one-pass sums leave
    # rounding there, not the exact 0 the centred reference gets (theft.py scores flat days by CV)
    ref[k.PROFILE_CORR, 2] = out[k.PROFILE_CORR, 2]
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.allclose(out, ref, equal_nan=True, rtol=1e-9, atol=1e-9)
    assert out[k.ZERO_H, 0].max() >= 30 * cal.interval_h * (interval_s == 900)
    assert np.isnan(out[k.LAG1, 2]).all()  # the flat meter


def _block_z_reference(m: np.ndarray, meters: np.ndarray, rrow: np.ndarray, res: np.ndarray, bounds: np.ndarray,
                       block: np.ndarray, n_blocks: int) -> np.ndarray:
    """balance_block_z as a plain loop per meter, day and block, any day (the block of each
    pair is block[t] of its later reading): [2, meters, days] of the best standardised sum
    of the day's last 1, 2, 4 ... Fisher z (most contrary pair left out) and the onset."""
    n_days = bounds.size - 1
    out = np.full((2, meters.size, n_days), np.nan)
    for j, c in enumerate(meters):
        if rrow[j] < 0:
            continue
        x = np.diff(m[c].astype(np.float64), prepend=np.nan)
        r = np.diff(res[rrow[j]], prepend=np.nan)
        for d in range(n_days):
            z, onset = [], 0.0
            for b in range(n_blocks):
                t = np.arange(bounds[d], bounds[d + 1])
                t = t[block[t] == b]
                ok = np.isfinite(x[t]) & np.isfinite(r[t])
                xs, rs = x[t][ok], r[t][ok]
                if xs.size and (xs * rs).min() < 0:
                    worst = int(np.argmin(xs * rs))  # the first of equals
                    if b == n_blocks - 1 and xs[worst] < 0 < rs[worst]:
                        onset = rs[worst] ** 2 / (rs * rs).sum() * np.sqrt(
                            min(xs[worst] ** 2, rs[worst] ** 2) / max(xs[worst] ** 2, rs[worst] ** 2))
                    xs, rs = np.delete(xs, worst), np.delete(rs, worst)
                sxx, srr = (xs * xs).sum(), (rs * rs).sum()
                if xs.size <= 3 or sxx <= 0 or srr <= 0:
                    z.append(0.0)
                    continue
                rho = np.clip((xs * rs).sum() / np.sqrt(sxx * srr), -kf.R_CLIP, kf.R_CLIP)
                z.append(np.arctanh(rho) * np.sqrt(xs.size - 3))
            out[1, j, d] = onset if z[-1] > 0 else 0.0
            out[0, j, d] = max(sum(z[n_blocks - n:]) / np.sqrt(n) for n in (1, 2, 4, 8) if n <= n_blocks)
    return out


def test_branch_free_log_is_within_one_ulp_of_numpy() -> None:
    """balance_block_z's own log (fdlibm's method, branch-free so it vectorises) is within
    one unit in the last place of numpy's over the ratios (1 + r) / (1 - r) it takes (|r|
    up to R_CLIP) and far beyond, powers of two and their neighbours included."""
    rng = np.random.default_rng(5)
    r = np.clip(rng.uniform(-1, 1, 3000), -kf.R_CLIP, kf.R_CLIP)
    x = np.concatenate([(1 + r) / (1 - r), np.exp(rng.uniform(-700, 700, 3000)), 2.0 ** np.arange(-20, 21),
                        np.nextafter(2.0 ** np.arange(-20, 21), 0), np.sqrt([0.5, 2.0]), [1.0, 1 + 1e-15, 1 - 1e-15]])
    got = np.array([kf._log(v) for v in x])
    ref = np.log(x)
    assert (np.abs(got - ref) <= np.spacing(np.abs(ref))).all()
    assert kf._log(1.0) == 0.0


@pytest.mark.parametrize(("month", "interval_s"), [(3, 900), (10, 900), (10, 3600), (7, 900)])
def test_balance_block_z_lanes_match_a_plain_loop(month: int, interval_s: int) -> None:
    """balance_block_z scores the meters of one master LANES at a time: with masters of
    more meters than LANES, of fewer, of exactly LANES, listed out of order and mixed with
    meters that have none, on whole days of BLOCK_PAIRS pairs a block (15 minutes and
    hourly: the unrolled path) and on DST days and the history's first day (one pair short:
    the general path), with missing readings and residuals, a meter that never reads and a
    meter that under-reports into its residual, every meter equals the plain loop."""
    per_day = 86400 // interval_s
    n_days = 6
    start = int(datetime(2026, month, 23, tzinfo=ZoneInfo(BERLIN)).timestamp())
    cal = local_calendar(start, n_days * per_day, interval_s, BERLIN)
    rng = np.random.default_rng(month * 7 + interval_s)
    sizes = (kf.LANES + 3, 2, kf.LANES, 1)  # meters per master
    m = _readings(rng, sum(sizes) + 4, cal.n_intervals)
    m[3, :] = np.nan  # never reads
    rrow = np.concatenate([np.full(n, g) for g, n in enumerate(sizes)] + [np.full(4, -1)]).astype(np.int64)
    order = rng.permutation(rrow.size)
    meters, rrow = order.astype(np.int64), rrow[order]  # column i is scored in row j with meters[j] == i
    res = rng.normal(0, 0.2, size=(len(sizes), cal.n_intervals))
    res[0, 50:53] = np.nan
    res[1, :] = 0.0  # a master that never moves: no evidence
    thief = int(np.flatnonzero(rrow == 2)[0])
    res[2] += 0.8 * np.nan_to_num(m[meters[thief]])
    n_blocks = kf.blocks_per_day(cal.n_slots)
    block = kf.block_of_interval(cal.slot, cal.n_slots, n_blocks)
    out = np.empty((2, meters.size, n_days))
    kf.balance_block_z(m, meters, rrow, res, cal.day_bounds, block, n_blocks, out[0], out[1])
    ref = _block_z_reference(m, meters, rrow, res, cal.day_bounds, block, n_blocks)
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.allclose(out, ref, equal_nan=True, rtol=1e-9, atol=1e-12)
    assert np.isnan(out[:, rrow < 0]).all() and np.isfinite(out[:, rrow >= 0]).all()
    peers = np.flatnonzero(rrow == 2)[1:]
    assert (out[0, thief] > np.median(out[0, peers], axis=0)).all()  # it moves with its master's residual
    assert (out[1, rrow >= 0] > 0).any() and ((out[1, rrow >= 0] >= 0) & (out[1, rrow >= 0] <= 1)).all()


def _robust_z_reference(v: np.ndarray, window: int, step: int, min_ref: int, floor: float) -> tuple:
    n_days = v.shape[1]
    out = np.full_like(v, np.nan)
    med = np.full_like(v, np.nan)
    for j in range(v.shape[0]):
        for d in range(n_days):
            if np.isnan(v[j, d]):
                continue
            s = d - d % step
            r = v[j, max(0, s - window):s]
            r = r[np.isfinite(r)]
            if r.size < min_ref:
                r = v[j, :min(window, n_days)]
                r = r[np.isfinite(r)]
            if r.size < 3:
                continue
            m = np.median(r)
            med[j, d] = m
            out[j, d] = (v[j, d] - m) / (1.4826 * np.median(np.abs(r - m)) + floor)
    return out, med


@pytest.mark.parametrize(("window", "step", "min_ref"), [(28, 7, 5), (6, 4, 3), (5, 7, 3), (10, 1, 4), (3, 2, 9),
                                                          (40, 7, 5), (1, 1, 1), (28, 30, 5)])
def test_trailing_robust_z_slides_its_sorted_window_exactly(window: int, step: int, min_ref: int) -> None:
    """The sliding sorted window gives numpy's median and MAD of the reference days for
    every window/step setting: windows that overlap, that jump past each other, that never
    fill; ties, repeated values and NaN days included."""
    rng = np.random.default_rng(window * 100 + step)
    v = rng.normal(size=(7, 30))
    v[1, rng.random(30) < 0.3] = np.nan
    v[2, :] = np.round(v[2, :])  # many ties
    v[3, :] = 1.5  # all the same: MAD 0
    v[4, :20] = np.nan  # a meter that starts late
    v[5, :] = np.nan
    out, med = np.empty_like(v), np.empty_like(v)
    k.trailing_robust_z(v, window, step, min_ref, 0.05, out, med)
    ref_out, ref_med = _robust_z_reference(v, window, step, min_ref, 0.05)
    assert np.array_equal(med, ref_med, equal_nan=True)
    assert np.allclose(out, ref_out, equal_nan=True, rtol=1e-12, atol=0)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 17, 98, 99, 150])
def test_group_median_mad_by_quickselect_matches_numpy(size: int) -> None:
    """Quickselect medians equal numpy's for groups of odd and even size, with ties and an
    all-NaN day."""
    rng = np.random.default_rng(size)
    v = np.round(rng.normal(size=(size * 2, 6)), 1)
    v[rng.random(v.shape) < 0.1] = np.nan
    v[:size, 5] = np.nan
    ptr = np.array([0, size, 2 * size], dtype=np.int64)
    order = rng.permutation(2 * size).astype(np.int64)
    med, mad = np.empty_like(v), np.empty_like(v)
    k.group_median_mad(v, ptr, order, med, mad)
    for g in range(2):
        rows = order[ptr[g]:ptr[g + 1]]
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning) if np.isnan(v[rows]).all(axis=0).any() \
                else _nothing():
            m = np.nanmedian(v[rows], axis=0)
            d = np.nanmedian(np.abs(v[rows] - m), axis=0)
        assert np.array_equal(med[rows], np.broadcast_to(m, (rows.size, 6)), equal_nan=True)
        assert np.array_equal(mad[rows], np.broadcast_to(d, (rows.size, 6)), equal_nan=True)
    only, untouched = np.empty_like(v), np.full_like(v, 7.0)  # the medians alone: the same, mad_out left as it was
    k.group_median_mad(v, ptr, order, only, untouched, False)
    assert np.array_equal(only, med, equal_nan=True)
    assert (untouched == 7.0).all()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([0.0, 1.0, 2.0])), min_size=1,
                max_size=60))
def test_sorted_median_mad_is_numpys_median_and_mad(xs: list[float]) -> None:
    """The median and MAD of a sorted window (the MAD bisected between the deviations above
    and below the median) equal numpy's, ties and even sizes included."""
    x = np.sort(np.array(xs))
    med, mad = k._sorted_median_mad(x, x.size)
    assert med == np.median(x)
    assert mad == np.median(np.abs(x - med))


def test_sort7_network_sorts_every_input() -> None:
    """The 7-value sorting network sorts all 2^7 zero-one inputs (so, by the zero-one
    principle, every input), and random ones with ties."""
    for bits in range(2**7):
        x = np.array([(bits >> i) & 1 for i in range(7)], dtype=np.float64)
        buf = x.copy()
        k._sort7(buf)
        assert np.array_equal(buf, np.sort(x)), bits
    rng = np.random.default_rng(7)
    for _ in range(200):
        x = np.round(rng.normal(size=7), 1)
        buf = np.concatenate([x, [99.0]])  # past the 7th: untouched
        k._sort7(buf)
        assert np.array_equal(buf[:7], np.sort(x)) and buf[7] == 99.0
