"""Theft kernels against plain-numpy references, and the theft score on small hand-built
histories (a building with one flat stealing, a daily view without masters)."""

from __future__ import annotations

import numpy as np
import pytest

from twin.detect import DetectView, downsample_daily
from twin.history import Column, Topology
from twin.kernels import theft as k
from twin.kernels import theft_features as kf
from twin.kernels.load import local_calendar
from twin.theft import THRESHOLD, theft_features, theft_scores, trailing_run

START = 1767196800  # 2025-12-31T16:00Z = 2026-01-01 00:00 Asia/Shanghai


def _matrix(rng: np.random.Generator, cols: int, days: int, per_day: int) -> np.ndarray:
    m = rng.gamma(2.0, 0.1, size=(cols, days * per_day)).astype(np.float32)
    m[rng.random(m.shape) < 0.03] = np.nan
    m[rng.random(m.shape) < 0.03] = 0.0
    return m


def test_balance_sums_fits_and_residual_match_numpy() -> None:
    """balance_sums is the NaN-as-0 sum of each master's feeds; balance_day_fits is the
    least-squares line of each master-day; balance_residual is (master - a) / (1 + c) - fed."""
    rng = np.random.default_rng(1)
    m = _matrix(rng, 7, 3, 24)
    ptr = np.array([0, 2, 5], dtype=np.int64)
    cols = np.array([1, 3, 0, 2, 6], dtype=np.int64)
    fed = np.empty((2, m.shape[1]))
    k.balance_sums(m, ptr, cols, fed)
    for g in range(2):
        assert np.allclose(fed[g], np.nansum(m[cols[ptr[g]:ptr[g + 1]]].astype(np.float64), axis=0))
    master = 0.05 + 1.03 * fed + rng.normal(0, 0.01, fed.shape)
    master[0, 5] = np.nan
    bounds = np.array([0, 24, 48, 72], dtype=np.int64)
    fits = np.empty((2, 3, 3))
    k.balance_day_fits(master, fed, bounds, fits)
    for g in range(2):
        for d in range(3):
            x, y = fed[g, bounds[d]:bounds[d + 1]], master[g, bounds[d]:bounds[d + 1]]
            ok = np.isfinite(y)
            slope, a = np.polyfit(x[ok], y[ok], 1)
            rms = np.sqrt(np.mean((y[ok] - a - slope * x[ok]) ** 2))
            assert np.allclose(fits[g, d], [a, slope - 1.0, rms], atol=1e-9)
    out = np.empty_like(fed)
    k.balance_residual(master, fed, np.array([0.05, 0.02]), np.array([0.03, 0.01]), out)
    ref = (master - np.array([[0.05], [0.02]])) / np.array([[1.03], [1.01]]) - fed
    assert np.allclose(out, ref, equal_nan=True)


def test_clean_residual_takes_out_the_suspects_moves() -> None:
    """On the (master, day) pairs given, the residual loses the least-squares fit of its
    first differences on the suspects' (numpy lstsq on the differences as reference); the
    other days are untouched."""
    rng = np.random.default_rng(6)
    m = _matrix(rng, 4, 3, 24)
    m[np.isnan(m)] = 0.1
    other = rng.normal(0, 0.05, size=72)
    res = (0.7 * m[1] - 0.3 * m[2] + other)[None, :].astype(np.float64)
    out = res.copy()
    k.clean_residual(m, res, np.array([0, 24, 48, 72], dtype=np.int64), np.array([[0, 1]], dtype=np.int64),
                     np.array([0, 2], dtype=np.int64), np.array([1, 2], dtype=np.int64), out)
    day = slice(24, 48)
    diffs = np.diff(m[[1, 2], 23:48].astype(np.float64), axis=1).T
    beta, *_ = np.linalg.lstsq(diffs, np.diff(res[0, 23:48]), rcond=None)
    assert np.allclose(out[0, day], res[0, day] - beta @ m[[1, 2], day].astype(np.float64), atol=1e-6)
    assert np.array_equal(out[0, :24], res[0, :24]) and np.array_equal(out[0, 48:], res[0, 48:])


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else np.nan


def _reference_features(m: np.ndarray, meters: np.ndarray, rrow: np.ndarray, res: np.ndarray, per_day: int,
                        window: int, interval_h: float) -> np.ndarray:
    """The kernel's features, written plainly (regular days: slot = index in the day)."""
    n_days = m.shape[1] // per_day
    out = np.full((6, meters.size, n_days), np.nan)
    q_of = np.arange(per_day) * k.QUARTERS // per_day
    for j, c in enumerate(meters):
        days = m[c].astype(np.float64).reshape(n_days, per_day)
        qs = np.zeros((n_days, k.QUARTERS, 3))
        for d in range(n_days):
            x = days[d]
            ok = np.isfinite(x)
            out[k.TOTAL, j, d] = np.nansum(x)
            run = longest = 0
            for v in x:
                run = run + 1 if (np.isfinite(v) and v <= k.ZERO_KWH) else 0
                longest = max(longest, run)
            out[k.ZERO_H, j, d] = longest * interval_h
            xs = x[ok]
            mean = xs.mean()
            var = xs.var()
            out[k.CV, j, d] = np.sqrt(var) / mean
            pairs = [(x[t - 1] - mean) * (x[t] - mean) for t in range(1, per_day) if ok[t - 1] and ok[t]]
            out[k.LAG1, j, d] = np.mean(pairs) / var
            if rrow[j] >= 0:
                flat = m[c].astype(np.float64)
                r = res[rrow[j]]
                for t in range(max(d * per_day, 1), (d + 1) * per_day):
                    if np.isfinite(flat[t - 1]) and np.isfinite(flat[t]):
                        dx, dr = flat[t] - flat[t - 1], r[t] - r[t - 1]
                        qs[d, q_of[t - d * per_day]] += [dx * dr, dx * dx, dr * dr]
        for d in range(n_days):
            lo, hi = (max(0, d - window), d) if d >= 3 else (d + 1, min(n_days, d + 1 + window))
            prof = np.nanmean(days[lo:hi], axis=0)
            ok = np.isfinite(days[d]) & np.isfinite(prof)
            out[k.PROFILE_CORR, j, d] = _corr(days[d][ok], prof[ok])
            if rrow[j] >= 0:
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


def test_meter_day_features_match_a_plain_reference() -> None:
    """Every feature of meter_day_features and balance_corr equals the plain loop
    reference, NaN and zero readings included, at hourly data over 9 days."""
    rng = np.random.default_rng(2)
    per_day, n_days = 24, 9
    m = _matrix(rng, 5, n_days, per_day)
    m[2, 30:36] = 0.0  # a six-hour off run
    meters = np.array([0, 2, 3], dtype=np.int64)
    rrow = np.array([0, -1, 0], dtype=np.int64)
    res = rng.normal(0, 0.1, size=(1, m.shape[1]))
    cal = local_calendar(START, m.shape[1], 3600, "Asia/Shanghai")
    assert cal.day_regular.all() and len(cal.days) == n_days
    out = np.full((6, 3, n_days), np.nan)
    k.meter_day_features(m, meters, cal.day_bounds, cal.slot, cal.n_slots, 1.0, 4, out)
    k.balance_corr(m, meters, rrow, res, cal.day_bounds, cal.slot, cal.n_slots, out[k.BAL_CORR])
    ref = _reference_features(m, meters, rrow, res, per_day, 4, 1.0)
    assert np.allclose(out, ref, equal_nan=True, rtol=1e-9, atol=1e-12)
    assert out[k.ZERO_H, 1, 1] >= 6.0
    assert np.isnan(out[k.BAL_CORR, 1]).all()


def test_trailing_robust_z_matches_numpy() -> None:
    """Each meter-day against the median and MAD of its own `window` days before its block
    of `step` days; the first block (too little behind it) against the first `window` days."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=(4, 20))
    v[1, 7] = np.nan
    v[2, 0:3] = np.nan
    window, step, min_ref, floor = 6, 4, 3, 0.1
    out, med = np.empty_like(v), np.empty_like(v)
    k.trailing_robust_z(v, window, step, min_ref, floor, out, med)
    for j in range(4):
        for d in range(20):
            if np.isnan(v[j, d]):
                assert np.isnan(out[j, d]) and np.isnan(med[j, d])
                continue
            s = d - d % step
            r = v[j, max(0, s - window):s]
            r = r[np.isfinite(r)]
            if r.size < min_ref:
                r = v[j, :window]
                r = r[np.isfinite(r)]
            mad = np.median(np.abs(r - np.median(r)))
            assert out[j, d] == pytest.approx((v[j, d] - np.median(r)) / (1.4826 * mad + floor))
            assert med[j, d] == pytest.approx(np.median(r))


def test_group_median_mad_matches_numpy() -> None:
    """Per group and day, the NaN-skipping median and MAD over the group's meters."""
    rng = np.random.default_rng(8)
    v = rng.normal(size=(9, 5))
    v[2, 1] = np.nan
    group = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1])
    order = np.argsort(group, kind="stable").astype(np.int64)
    ptr = np.array([0, 3, 6, 9], dtype=np.int64)
    med, mad = np.empty_like(v), np.empty_like(v)
    k.group_median_mad(v, ptr, order, med, mad)
    for g in range(3):
        rows = group == g
        m = np.nanmedian(v[rows], axis=0)
        assert np.allclose(med[rows], m[None, :])
        assert np.allclose(mad[rows], np.nanmedian(np.abs(v[rows] - m), axis=0)[None, :])


def test_trailing_run_is_the_best_run_ending_each_day() -> None:
    """trailing_run gives max over k of sum of the last k days / sqrt(k), NaN days kept NaN."""
    rng = np.random.default_rng(4)
    z = rng.normal(size=(3, 12))
    z[0, 4] = np.nan
    got = trailing_run(z, 3)
    filled = np.nan_to_num(z)
    for j in range(3):
        for d in range(12):
            if np.isnan(z[j, d]):
                assert np.isnan(got[j, d])
                continue
            best = max(filled[j, d - n + 1:d + 1].sum() / np.sqrt(n) for n in range(1, 4) if d - n + 1 >= 0)
            assert got[j, d] == pytest.approx(max(best, z[j, d]))


def _building(days: int = 21, flats: int = 12, thief: int = 3, onset: int = 14, factor: float = 0.4,
              seed: int = 5) -> tuple[DetectView, np.ndarray]:
    """A building at 15 minutes: a master, `flats` flats with their own random appliance
    use, one shared circuit; flat `thief` reports `factor` of its load from day `onset`."""
    rng = np.random.default_rng(seed)
    per_day = 96
    n = days * per_day
    hour = (np.arange(n) % per_day) / 4.0
    shape = 0.3 + 0.7 * np.exp(-((hour - 20.0) ** 2) / 8.0) + 0.4 * np.exp(-((hour - 8.0) ** 2) / 4.0)
    true = np.empty((flats, n))
    for f in range(flats):
        level = rng.lognormal(0.0, 0.25, size=days).repeat(per_day)
        spikes = rng.gamma(0.6, 0.25, size=n)
        true[f] = 0.05 * shape * level + spikes * shape * 0.3
    reported = true.copy()
    cut = onset * per_day
    reported[thief, cut:] *= factor
    shared = np.full(n, 0.2)
    master = 0.03 + 1.02 * (true.sum(axis=0) + shared)
    matrix = np.vstack([master, reported, shared]).astype(np.float32)
    cols = [Column("B1.mm", "electric_meter", "electric", "kWh", building="B1", role="master")]
    cols += [Column(f"B1-{f:02d}.em", "electric_meter", "electric", "kWh", building="B1", room=f"B1-{f:02d}",
                    master="B1.mm") for f in range(flats)]
    cols += [Column("B1.sc", "shared_circuit", "electric", "kWh", building="B1", master="B1.mm")]
    topology = Topology("T", "Asia/Shanghai", 900, cols)
    calendar = local_calendar(START, n, 900, "Asia/Shanghai")
    truth = np.zeros((len(cols), days), dtype=np.bool_)
    truth[1 + thief, onset:] = True
    return DetectView(matrix, topology, calendar), truth


def test_theft_score_names_the_flat_that_under_reports() -> None:
    """One flat of twelve reports 40% of its load from day 14: every day from then it scores
    highest in the building and above the threshold, no other flat is flagged, and the
    master and the shared circuit are not scored."""
    view, truth = _building()
    scores = theft_scores(view)["theft"]
    s = scores.scores
    assert np.isnan(s[0]).all() and np.isnan(s[-1]).all()
    thief = 1 + 3
    for d in range(14, 21):
        assert np.nanargmax(s[:, d]) == thief
        assert s[thief, d] >= THRESHOLD
    others = np.delete(s[1:-1], 3, axis=0)
    assert not (others >= THRESHOLD).any()
    assert "unexplained" in scores.explain(thief, 16) or "below" in scores.explain(thief, 16)


def test_daily_view_without_masters_still_scores_from_totals() -> None:
    """Downsampled to one reading a day without the master, the flat's fall in its day
    totals (40% of its usual) still ranks it first on the days after onset."""
    view, _ = _building(factor=0.3)
    daily = downsample_daily(view, drop_masters=True)
    f = theft_features(daily)
    assert daily.topology.interval_s == 86400
    assert np.isnan(f.raw[k.CV]).all() and np.isnan(f.raw[k.BAL_CORR]).all()
    s = theft_scores(daily)["theft"].scores
    thief = 3  # the master is gone: flats are columns 0..11
    for d in range(15, 18):
        assert np.nanargmax(s[:, d]) == thief


def test_h5_flat_day_and_h6_reversed_day_are_seen() -> None:
    """A flat whose day is replaced by its mean (h5) or reversed (h6) from day 14 scores
    above the threshold though its totals are unchanged: h5 every day, h6 for its first
    four days (after that the reversed days fill the meter's own history, the limit of a
    trailing baseline that twin/theft.py states)."""
    view, _ = _building(factor=1.0)
    m = view.matrix
    per_day = 96
    for d in range(14, 21):
        day = slice(d * per_day, (d + 1) * per_day)
        m[2, day] = m[2, day].mean()
        m[5, day] = m[5, day][::-1]
    s = theft_scores(view)["theft"].scores
    assert (s[2, 14:] >= THRESHOLD).all()
    assert (s[5, 14:18] >= THRESHOLD).all()


def _reference_block_z(m: np.ndarray, meters: np.ndarray, rrow: np.ndarray, res: np.ndarray, per_day: int,
                       n_blocks: int) -> np.ndarray:
    """balance_block_z written plainly: per block, without its most contrary pair, the
    Fisher z of the first differences' correlation times sqrt(pairs - 3), then the best sum
    of the day's last 1, 2, 4 ... blocks over the square root of their number; and the
    onset evidence of the last block (the most contrary pair, when the reading fell as the
    residual rose and the block's other pairs correlate positively: its share of the
    block's dr^2 times the ratio of the smaller to the larger move). Returns [2, meters, days]."""
    n_days = m.shape[1] // per_day
    out = np.full((2, meters.size, n_days), np.nan)
    for j, c in enumerate(meters):
        if rrow[j] < 0:
            continue
        x = np.diff(m[c].astype(np.float64), prepend=np.nan)
        r = np.diff(res[rrow[j]], prepend=np.nan)
        for d in range(n_days):
            z = []
            for b in range(n_blocks):
                t = slice(d * per_day + b * per_day // n_blocks, d * per_day + (b + 1) * per_day // n_blocks)
                ok = np.isfinite(x[t]) & np.isfinite(r[t])
                xs, rs = x[t][ok], r[t][ok]
                worst = int(np.argmin(xs * rs))
                onset = 0.0
                if xs[worst] < 0 < rs[worst]:
                    onset = rs[worst] ** 2 / (rs * rs).sum() * np.sqrt(
                        min(xs[worst] ** 2, rs[worst] ** 2) / max(xs[worst] ** 2, rs[worst] ** 2))
                if xs[worst] * rs[worst] < 0:  # the block's most contrary pair is left out
                    xs, rs = np.delete(xs, worst), np.delete(rs, worst)
                sxx, srr = (xs * xs).sum(), (rs * rs).sum()
                if xs.size <= 3 or sxx <= 0 or srr <= 0:
                    z.append(0.0)
                    continue
                rho = np.clip((xs * rs).sum() / np.sqrt(sxx * srr), -kf.R_CLIP, kf.R_CLIP)
                z.append(np.arctanh(rho) * np.sqrt(xs.size - 3))
            out[1, j, d] = onset if z[-1] > 0 else 0.0  # the last block's, when its other moves agree
            out[0, j, d] = max(sum(z[n_blocks - n:]) / np.sqrt(n) for n in (1, 2, 4, 8) if n <= n_blocks)
    return out


@pytest.mark.parametrize("per_day", [96, 24])
def test_balance_block_z_matches_a_plain_reference(per_day: int) -> None:
    """balance_block_z equals the plain reference at 15 minutes (8 blocks) and hourly (2
    blocks), NaN and zero readings included; a meter without a master is NaN."""
    rng = np.random.default_rng(11)
    n_days = 4
    m = _matrix(rng, 5, n_days, per_day)
    meters = np.array([0, 2, 3], dtype=np.int64)
    rrow = np.array([0, -1, 1], dtype=np.int64)
    res = rng.normal(0, 0.1, size=(2, m.shape[1]))
    res[1] += 0.8 * np.nan_to_num(m[3])  # meter 3 under-reports into residual row 1
    res[0, 40] = np.nan
    cal = local_calendar(START, m.shape[1], 86400 // per_day, "Asia/Shanghai")
    n_blocks = kf.blocks_per_day(cal.n_slots)
    assert n_blocks == {96: 8, 24: 2}[per_day]
    out = np.empty((2, 3, n_days))
    kf.balance_block_z(m, meters, rrow, res, cal.day_bounds, kf.block_of_interval(cal.slot, cal.n_slots, n_blocks),
                       n_blocks, out[0], out[1])
    ref = _reference_block_z(m, meters, rrow, res, per_day, n_blocks)
    assert np.allclose(out, ref, equal_nan=True, rtol=1e-9, atol=1e-12)
    assert np.isnan(out[:, 1]).all()
    assert (out[0, 2] > out[0, 0]).all()
    assert ((out[1, [0, 2]] >= 0) & (out[1, [0, 2]] <= 1)).all()


def test_blocks_per_day_keeps_enough_pairs() -> None:
    """Blocks hold at least MIN_PAIRS_PER_BLOCK readings each, at most MAX_BLOCKS a day;
    one reading a day has none."""
    assert [kf.blocks_per_day(n) for n in (1, 12, 24, 48, 96, 288)] == [0, 1, 2, 4, 8, 8]


def test_row_day_totals_match_numpy() -> None:
    """Each row's sum per day; a day with a missing reading has no total (NaN)."""
    rng = np.random.default_rng(12)
    m = _matrix(rng, 4, 3, 24)
    rows = np.array([3, 1], dtype=np.int64)
    bounds = np.array([0, 24, 48, 72], dtype=np.int64)
    out = np.empty((2, 3))
    kf.row_day_totals(m, rows, bounds, out)
    ref = m[rows].astype(np.float64).reshape(2, 3, 24).sum(axis=2)
    assert np.allclose(out, ref, equal_nan=True)


@pytest.mark.parametrize(("start_h", "factor"), [(21, 0.4), (0, 0.2)])
def test_the_first_day_of_a_theft_is_localised(start_h: int, factor: float) -> None:
    """A flat that starts under-reporting at 21:00, or at midnight hiding 80% (its reading
    falls as the residual rises: the one pair against the pattern), has the highest balance
    value of its building on that first day, well clear of the honest flats."""
    view, _ = _building(factor=factor)
    honest, _ = _building(factor=1.0)
    first, cut = 14 * 96, 14 * 96 + start_h * 4
    view.matrix[4, first:cut] = honest.matrix[4, first:cut]
    bal = theft_features(view).raw[k.BAL_CORR, :, 14]
    assert np.argmax(bal) == 3
    assert bal[3] > 1.5 * np.sort(bal)[-2]


def _households_with_water(days: int = 28, flats: int = 10, seed: int = 9) -> tuple[DetectView, np.ndarray]:
    """Flats at 15 minutes with an electric and a water meter each; a household's day
    factor (how much it is at home) moves both. Returns the view and the electric columns."""
    rng = np.random.default_rng(seed)
    per_day = 96
    hour = (np.arange(per_day) / 4.0)
    shape = 0.3 + np.exp(-((hour - 20.0) ** 2) / 8.0)
    factor = rng.lognormal(0.0, 0.3, size=(flats, days))
    elec = (0.1 * factor[:, :, None] * shape * rng.gamma(4.0, 0.25, size=(flats, days, per_day))).reshape(flats, -1)
    water = (0.004 * factor[:, :, None] * shape * rng.gamma(4.0, 0.25, size=(flats, days, per_day))).reshape(flats, -1)
    cols = [Column(f"B1-{f:02d}.em", "electric_meter", "electric", "kWh", building="B1", room=f"B1-{f:02d}")
            for f in range(flats)]
    cols += [Column(f"B1-{f:02d}.wm", "water_meter", "water", "m3", building="B1", room=f"B1-{f:02d}")
             for f in range(flats)]
    matrix = np.vstack([elec, water]).astype(np.float32)
    view = DetectView(matrix, Topology("T", "Asia/Shanghai", 900, cols),
                      local_calendar(START, matrix.shape[1], 900, "Asia/Shanghai"))
    return view, np.arange(flats)


def test_the_rooms_water_excuses_days_away() -> None:
    """At one reading a day without masters: a household away for two days (electricity at
    30%, the fridge and standby; no water drawn) is not flagged, while a flat whose
    electricity reads 50% with its water as usual ranks first on those days."""
    view, _ = _households_with_water()
    days = slice(20 * 96, 22 * 96)
    view.matrix[2, days] *= 0.3  # away: electricity at standby ...
    view.matrix[12, days] = 0.0  # ... and no water
    view.matrix[5, days] *= 0.5  # theft: electricity only
    s = theft_scores(downsample_daily(view, drop_masters=True))["theft"].scores
    for d in (20, 21):
        assert np.nanargmax(s[:10, d]) == 5
        assert s[2, d] < THRESHOLD


def test_a_theft_that_starts_late_in_the_evening_is_seen_by_its_onset() -> None:
    """A flat that starts reporting 40% of its load at 23:30 (two readings of theft in the
    day): too few for a correlation, but its onset (its reading falls as the residual rises
    by about as much, and the block's other moves agree) gives it the building's highest
    score that day, with evidence saying so."""
    view, _ = _building(factor=0.4)
    honest, _ = _building(factor=1.0)
    first, cut = 14 * 96, 14 * 96 + 94
    view.matrix[4, first:cut] = honest.matrix[4, first:cut]
    f = theft_features(view)
    assert np.argmax(f.score[:, 14]) == 3 and f.source[3, 14] == 7
    assert "unexplained energy rose" in theft_scores(view)["theft"].explain(4, 14)
    assert f.z["onset"][3, 13] < 0.01  # the day before: nothing to speak of
