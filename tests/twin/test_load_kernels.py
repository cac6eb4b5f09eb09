"""Load analytics kernels (twin/kernels/load.py) against plain Python and numpy references
written here: a zoneinfo call per interval for the calendar, nansum and nanmax per group
for the figures. Random matrices with NaN, ties and negative readings, and simulated
histories read back through the history format, at 15 minutes, hourly and daily, in a zone
without DST (Asia/Shanghai) and one with it (Europe/Berlin)."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from devices.sim.world import World
from scenarios.loader import load_scenario
from scenarios.schema import RandomInjections
from twin.history import Column, HistoryWriter, Topology, open_history
from twin.kernels import load
from twin.tariffs import parse_tariff, price_tables

ROOT = Path(__file__).resolve().parents[2]
TOU = {"kind": "time_of_use",
       "bands": [{"name": "sharp", "price_yuan": 1.1, "hours": ["19:00-21:00"], "months": [7, 8, 12, 1]},
                 {"name": "peak", "price_yuan": 0.94, "hours": ["08:00-11:30", "18:30-23:00"]},
                 {"name": "flat", "price_yuan": 0.63, "hours": ["07:00-08:00", "11:30-18:30"]},
                 {"name": "valley", "price_yuan": 0.31, "hours": ["23:00-07:00"]}]}


def utc(tz: str, *args: int) -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp())  # type: ignore[arg-type, misc]


# -- references ----------------------------------------------------------------------------


def ref_calendar(start: int, n: int, interval_s: int, tz: str) -> tuple[list[date], np.ndarray]:
    """Local date and slot of each interval, one zoneinfo call per interval."""
    zone = ZoneInfo(tz)
    dates, slots = [], np.zeros(n, dtype=np.int64)
    for i in range(n):
        t = start + i * interval_s
        local = datetime.fromtimestamp(t + (43200 if interval_s == 86400 else 0), zone)
        dates.append(local.date())
        if interval_s < 86400:
            wall = datetime.fromtimestamp(t, zone)
            slots[i] = (wall.hour * 60 + wall.minute) // (interval_s // 60)
    return dates, slots


def key_of(d: date, kind: str) -> object:
    return {"day": d, "week": d.isocalendar()[:2], "month": (d.year, d.month), "year": d.year}[kind]


def ref_groups(dates: list[date], kind: str) -> list[np.ndarray]:
    """Interval indexes of each period, in order."""
    keys = [key_of(d, kind) for d in dates]
    order = list(dict.fromkeys(keys))
    return [np.array([i for i, k in enumerate(keys) if k == key]) for key in order]


def ref_summary(matrix: np.ndarray, groups: list[np.ndarray]) -> dict[str, np.ndarray]:
    shape = (matrix.shape[0], len(groups))
    out: dict[str, np.ndarray] = {
        "totals": np.zeros(shape), "missing": np.zeros(shape, dtype=np.int64),
        "peak": np.full(shape, np.nan, dtype=np.float32), "at": np.full(shape, -1), "lf": np.full(shape, np.nan)}
    for p, idx in enumerate(groups):
        for r in range(shape[0]):
            values = matrix[r, idx].astype(np.float64)
            present = values[~np.isnan(values)]
            out["totals"][r, p] = present.sum()
            out["missing"][r, p] = np.isnan(values).sum()
            if present.size:
                top = present.max()
                out["peak"][r, p] = top
                out["at"][r, p] = idx[np.flatnonzero(values == top)[0]]
                if top > 0:
                    out["lf"][r, p] = present.mean() / top
    return out


def check_summary(summary: load.PeriodSummary, ref: dict[str, np.ndarray], start: int, interval_s: int) -> None:
    np.testing.assert_allclose(summary.totals, ref["totals"], rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(summary.missing, ref["missing"])
    np.testing.assert_array_equal(summary.peak_kwh, ref["peak"])
    np.testing.assert_array_equal(summary.peak_at, ref["at"])
    np.testing.assert_array_equal(summary.peak_utc, np.where(ref["at"] >= 0, start + ref["at"] * interval_s, -1))
    np.testing.assert_allclose(summary.peak_kw, ref["peak"].astype(np.float64) * 3600 / interval_s)
    np.testing.assert_allclose(summary.load_factor, ref["lf"], rtol=1e-9)


def ref_profile(matrix: np.ndarray, dates: list[date], slots: np.ndarray, n_slots: int) -> np.ndarray:
    out = np.full((matrix.shape[0], 2, n_slots), np.nan)
    weekend = np.array([d.weekday() >= 5 for d in dates])
    for w in (0, 1):
        for s in range(n_slots):
            idx = np.flatnonzero((weekend == bool(w)) & (slots == s))
            for r in range(matrix.shape[0]):
                values = matrix[r, idx].astype(np.float64)
                if (~np.isnan(values)).any():
                    out[r, w, s] = np.nanmean(values)
    return out


def random_matrix(seed: int, m: int, n: int) -> np.ndarray:
    """Readings on a 0.01 grid (so peaks tie), ~5% missing, a few negative, whole missing
    days and a meter running backwards all day."""
    rng = np.random.default_rng(seed)
    matrix = np.round(rng.gamma(0.6, 0.2, (m, n)), 2).astype(np.float32)
    matrix[rng.random((m, n)) < 0.05] = np.nan
    matrix[rng.random((m, n)) < 0.01] *= -1
    if n > 40:
        matrix[0, 5:40] = np.nan
        matrix[1, :] = -np.abs(matrix[1, :])
    matrix[2, :] = np.nan
    matrix[3, :4] = [-0.0, 0.0, -0.0, np.nan]  # a tie of signed zeros: the first wins
    matrix[3, 4:n // 2] = np.where(np.isnan(matrix[3, 4:n // 2]), np.nan, -np.abs(matrix[3, 4:n // 2]))
    return matrix


def site_topology(tz: str, interval_s: int) -> Topology:
    """Two buildings, electric and water masters, sub-meters, an elevator, a shared circuit."""
    cols = []
    for b in ("B01", "B02"):
        cols += [Column(f"{b}.mm", "electric_meter", "electric", "kWh", b, role="master"),
                 Column(f"{b}.mw", "water_meter", "water", "m3", b, role="master"),
                 Column(f"{b}.el1", "elevator", "electric", "kWh", b, master=f"{b}.mm"),
                 Column(f"{b}.sc", "shared_circuit", "electric", "kWh", b, master=f"{b}.mm")]
        for r in range(3):
            cols += [Column(f"{b}-{r}.em", "electric_meter", "electric", "kWh", b, 1, f"{b}-{r}", master=f"{b}.mm"),
                     Column(f"{b}-{r}.wm", "water_meter", "water", "m3", b, 1, f"{b}-{r}", master=f"{b}.mw")]
    cols.append(Column("X.em", "electric_meter", "electric", "kWh", None))  # no building, no master
    return Topology("T", tz, interval_s, cols)


CASES = [  # zone, local start, interval, intervals: partial first days, DST both ways
    ("Asia/Shanghai", (2026, 1, 1, 5, 15), 900, 96 * 9),
    ("Europe/Berlin", (2026, 3, 26, 22, 0), 900, 96 * 6),
    ("Europe/Berlin", (2026, 10, 23, 0, 0), 900, 96 * 5),
    ("Europe/Berlin", (2026, 10, 22, 7, 0), 3600, 24 * 9),
    ("Asia/Shanghai", (2026, 2, 20, 0, 0), 3600, 24 * 20),
    ("Asia/Shanghai", (2025, 12, 20, 8, 0), 86400, 50),
    ("Europe/Berlin", (2026, 3, 20, 1, 0), 86400, 20),
]


def case_id(case: tuple) -> str:
    return f"{case[0].split('/')[1]}-{case[2]}s-{case[1][1]}.{case[1][2]}"


# -- the calendar --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_calendar_matches_zoneinfo_per_interval(case):
    """Each interval falls in the local day holding its start (a daily reading: its
    midpoint), days are contiguous runs, slots are the local wall clock, weeks start on
    Monday, and each period says how many intervals it holds and would hold whole."""
    tz, local, interval_s, n = case
    start = utc(tz, *local)
    cal = load.local_calendar(start, n, interval_s, tz)
    dates, slots = ref_calendar(start, n, interval_s, tz)
    day_of = np.repeat(np.arange(len(cal.days)), np.diff(cal.day_bounds))
    assert [cal.days[d] for d in day_of] == dates
    np.testing.assert_array_equal(cal.slot, slots)
    for kind in load.PERIODS:
        groups = ref_groups(dates, kind)
        periods = cal.periods[kind]
        assert len(periods) == len(groups)
        np.testing.assert_array_equal(periods.intervals, [len(g) for g in groups])
        assert periods.labels[0] == {"day": dates[0].isoformat(), "week": dates[0].strftime("%G-W%V"),
                                     "month": dates[0].strftime("%Y-%m"), "year": str(dates[0].year)}[kind]
    zone = ZoneInfo(tz)
    for d, day in enumerate(cal.days):
        midnight = datetime.combine(day, datetime.min.time(), zone)
        after = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)
        whole = (after.timestamp() - midnight.timestamp()) // interval_s if interval_s < 86400 else 1
        assert cal.periods["day"].expected[d] == whole
        assert cal.weekend[d] == (day.weekday() >= 5)


def test_dst_days_have_23_and_25_hours():
    """Europe/Berlin: 2026-03-29 holds 92 quarter hours, 2026-10-25 holds 100; the
    repeated hour takes its wall-clock slots twice and the skipped one none; a
    Shanghai day always holds 96."""
    spring = load.local_calendar(utc("Europe/Berlin", 2026, 3, 28), 96 * 3 - 4, 900, "Europe/Berlin")
    assert spring.days[1] == date(2026, 3, 29)
    assert list(np.diff(spring.day_bounds)) == [96, 92, 96]
    assert list(spring.periods["day"].expected) == [96, 92, 96]
    assert not spring.day_regular[1] and spring.day_regular[0]
    day = spring.slot[spring.day_bounds[1]:spring.day_bounds[2]]
    assert 8 not in day and 11 not in day and 12 in day  # 02:00-02:59 never happens
    autumn = load.local_calendar(utc("Europe/Berlin", 2026, 10, 25), 100, 900, "Europe/Berlin")
    assert len(autumn.days) == 1 and autumn.periods["day"].expected[0] == 100
    assert np.bincount(autumn.slot)[8:12].tolist() == [2, 2, 2, 2]
    assert autumn.periods["month"].expected[0] == 31 * 96 + 4
    shanghai = load.local_calendar(utc("Asia/Shanghai", 2026, 3, 28), 96 * 3, 900, "Asia/Shanghai")
    assert list(np.diff(shanghai.day_bounds)) == [96, 96, 96] and shanghai.day_regular.all()


def test_weeks_start_on_monday_and_span_years():
    """ISO weeks: 2026-01-01 (a Thursday) is in 2026-W01 with 2025-12-29; the next Monday
    opens W02; covered says whether the window holds a whole week."""
    cal = load.local_calendar(utc("Asia/Shanghai", 2025, 12, 29), 14 * 24, 3600, "Asia/Shanghai")
    weeks = cal.periods["week"]
    assert weeks.labels == ["2026-W01", "2026-W02"]
    assert weeks.covered.tolist() == [True, True]
    assert cal.periods["year"].labels == ["2025", "2026"]
    assert cal.periods["month"].labels == ["2025-12", "2026-01"]
    assert cal.periods["month"].covered.tolist() == [False, False]


# -- kernels on random matrices ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_totals_peaks_and_load_factor_match_the_reference(case):
    """Per meter and local day, week, month and year: total with missing as 0, missing
    count, peak reading (the first on ties), its time, peak demand and load factor."""
    tz, local, interval_s, n = case
    start = utc(tz, *local)
    matrix = random_matrix(n, 7, n)
    cal = load.local_calendar(start, n, interval_s, tz)
    days = load.day_summary(matrix, cal)
    dates, _ = ref_calendar(start, n, interval_s, tz)
    for kind in load.PERIODS:
        check_summary(load.period_summary(days, cal, kind), ref_summary(matrix, ref_groups(dates, kind)), start,
                      interval_s)
    again = load.daily_totals(matrix, start, interval_s, tz)
    np.testing.assert_array_equal(again.totals, days.totals)


def test_daily_resolution_peak_is_the_day_and_load_factor_one():
    """With one reading a day, a day's peak is its energy over 24 h and its load factor 1;
    a month's peak is its highest day."""
    start = utc("UTC", 2026, 1, 1)
    matrix = np.abs(random_matrix(3, 4, 31))
    matrix[2] = 1.0
    cal = load.local_calendar(start, 31, 86400, "Asia/Shanghai")
    days = load.day_summary(matrix, cal)
    ok = ~np.isnan(matrix) & (matrix > 0)
    np.testing.assert_allclose(days.peak_kw[ok], matrix[ok] / 24.0, rtol=1e-6)
    np.testing.assert_allclose(days.load_factor[ok], 1.0)
    month = load.period_summary(days, cal, "month")
    np.testing.assert_array_equal(month.peak_kwh[:, 0], np.nanmax(matrix, axis=1))
    assert month.peak_utc[2, 0] == start and month.load_factor[2, 0] == 1.0


@pytest.mark.parametrize("case", CASES[:5], ids=case_id)
def test_band_split_matches_the_reference(case):
    """Energy per meter, day and band (price_tables' band at each interval's start), one
    tariff for all or a row per meter; the days add up to the month; bands add up to the
    day's total."""
    tz, local, interval_s, n = case
    start = utc(tz, *local)
    matrix = random_matrix(n + 1, 6, n)
    cal = load.local_calendar(start, n, interval_s, tz)
    tables = price_tables([parse_tariff("tou", TOU), parse_tariff("flat", {"kind": "flat", "price_yuan": 0.5})],
                          start, n, interval_s, tz)
    tariff_of = np.array([0, 1, 0, 0, 1, 0])
    split = load.band_totals(matrix, cal, tables.band, tariff_of, band_names=tables.band_names[0])
    assert split.band_names == ["sharp", "peak", "flat", "valley"]
    dates, _ = ref_calendar(start, n, interval_s, tz)
    for p, idx in enumerate(ref_groups(dates, "day")):
        for r in range(6):
            for b in range(4):
                sel = idx[tables.band[tariff_of[r], idx] == b]
                assert split.kwh[r, p, b] == pytest.approx(np.nansum(matrix[r, sel].astype(np.float64)), abs=1e-9)
    days = load.day_summary(matrix, cal)
    np.testing.assert_allclose(split.kwh.sum(axis=2), days.totals, atol=1e-9)
    month = load.band_totals(matrix, cal, tables.band[0], kind="month")
    np.testing.assert_allclose(month.kwh.sum(axis=1), load.band_totals(matrix, cal, tables.band[0]).kwh.sum(axis=1))


def test_band_split_with_more_than_four_bands():
    """Six bands (two loops of four band lanes over each day) still match the reference."""
    start, n = utc("Asia/Shanghai", 2026, 5, 1), 96 * 3
    matrix = random_matrix(9, 5, n)
    band = np.random.default_rng(1).integers(0, 6, n).astype(np.int8)
    cal = load.local_calendar(start, n, 900, "Asia/Shanghai")
    split = load.band_totals(matrix, cal, band)
    assert split.kwh.shape == (5, 3, 6) and split.band_names[5] == "band5"
    for d in range(3):
        idx = np.arange(d * 96, (d + 1) * 96)
        for b in range(6):
            np.testing.assert_allclose(split.kwh[:, d, b], np.nansum(matrix[:, idx[band[idx] == b]], axis=1,
                                                                      dtype=np.float64), atol=1e-9)


def test_band_split_keeps_an_infinite_reading_in_its_band():
    """An infinite reading makes its own band's total infinite and leaves the other bands'
    totals of that day as they were (0 * inf, the product of a reading and another band's
    mask, does not leak in)."""
    start, n = utc("Asia/Shanghai", 2026, 5, 1), 96 * 2
    matrix = random_matrix(4, 5, n)
    band = (np.arange(n) // 10 % 4).astype(np.int8)
    cal = load.local_calendar(start, n, 900, "Asia/Shanghai")
    finite = load.band_totals(matrix, cal, band).kwh
    matrix[4, 25] = np.inf  # band 2, day 0
    split = load.band_totals(matrix, cal, band).kwh
    assert split[4, 0, 2] == np.inf
    rest = np.ones(split.shape, dtype=bool)
    rest[4, 0, 2] = False
    np.testing.assert_array_equal(split[rest], finite[rest])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_one_pass_gives_the_three_results_bit_for_bit(case):
    """day_band_profile's one pass gives day_summary's, band_totals' and typical_profile's
    arrays exactly (so they match the references above too): a tariff row per meter, at
    every resolution, over DST days."""
    tz, local, interval_s, n = case
    start = utc(tz, *local)
    matrix = random_matrix(n + 3, 7, n)
    cal = load.local_calendar(start, n, interval_s, tz)
    tables = price_tables([parse_tariff("tou", TOU), parse_tariff("flat", {"kind": "flat", "price_yuan": 0.5})],
                          start, n, interval_s, tz)
    tariff_of = np.array([0, 1, 0, 0, 1, 0, 1])
    labels = [f"m{i}" for i in range(7)]
    for kind in ("day", "month"):
        days, split, profile = load.day_band_profile(matrix, cal, tables.band, tariff_of, kind,
                                                     tables.band_names[0], labels)
        alone = load.day_summary(matrix, cal)
        for field in ("totals", "missing", "peak_kwh", "peak_at"):
            np.testing.assert_array_equal(getattr(days, field), getattr(alone, field))
        assert days.periods is cal.periods["day"]
        split_alone = load.band_totals(matrix, cal, tables.band, tariff_of, kind, tables.band_names[0])
        np.testing.assert_array_equal(split.kwh, split_alone.kwh)
        assert split.band_names == split_alone.band_names and split.periods is split_alone.periods
        profile_alone = load.typical_profile(matrix, cal, labels)
        np.testing.assert_array_equal(profile.mean, profile_alone.mean)
        assert profile.labels == labels and profile.slot_minutes == profile_alone.slot_minutes


def test_one_pass_with_more_than_four_bands():
    """Six bands: the one pass's split is band_totals', which matches the reference."""
    start, n = utc("Asia/Shanghai", 2026, 5, 1), 96 * 3
    matrix = random_matrix(9, 5, n)
    band = np.random.default_rng(2).integers(0, 6, n).astype(np.int8)
    cal = load.local_calendar(start, n, 900, "Asia/Shanghai")
    _, split, _ = load.day_band_profile(matrix, cal, band)
    np.testing.assert_array_equal(split.kwh, load.band_totals(matrix, cal, band).kwh)
    assert split.kwh.shape == (5, 3, 6)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_typical_profile_matches_the_reference(case):
    """Mean reading by local slot of day, weekdays and weekends apart, missing left out;
    per building the sum of its sub-meters' means."""
    tz, local, interval_s, n = case
    start = utc(tz, *local)
    topology = site_topology(tz, interval_s)
    matrix = random_matrix(n + 2, len(topology.columns), n)
    cal = load.local_calendar(start, n, interval_s, tz)
    profile = load.typical_profile(matrix, cal, topology.ids)
    dates, slots = ref_calendar(start, n, interval_s, tz)
    ref = ref_profile(matrix, dates, slots, cal.n_slots)
    np.testing.assert_allclose(profile.mean, ref, rtol=1e-6, atol=1e-7)
    assert profile.slot_minutes == (interval_s // 60 if interval_s < 86400 else 1440)
    buildings = load.building_profiles(profile, topology)
    assert buildings.labels == ["B01 electric", "B01 water", "B02 electric", "B02 water"]
    for g, label in enumerate(buildings.labels):
        b, utility = label.split()
        rows = [i for i, c in enumerate(topology.columns) if c.building == b and c.utility == utility
                and c.role == "sub"]
        np.testing.assert_allclose(buildings.mean[g], np.nansum(ref[rows], axis=0), rtol=1e-5, atol=1e-6)
        assert buildings.meters is not None
        np.testing.assert_array_equal(buildings.meters[g], (~np.isnan(ref[rows])).sum(axis=0))


@pytest.mark.parametrize("interval_s", [3600, 86400])
@pytest.mark.parametrize("tz", ["Asia/Shanghai", "Europe/Berlin"])
def test_month_against_same_month_last_year(tz, interval_s):
    """Each month the window holds whole against the same month a year before; NaN where
    the history does not reach back or holds only part of a month; per building too."""
    start = utc(tz, 2025, 1, 10) if interval_s < 86400 else utc("UTC", 2025, 1, 10)
    end = utc(tz, 2026, 3, 20) if interval_s < 86400 else utc("UTC", 2026, 3, 20)
    n = (end - start) // interval_s
    topology = site_topology(tz, interval_s)
    matrix = np.abs(random_matrix(5, len(topology.columns), n))
    cal = load.local_calendar(start, n, interval_s, tz)
    days = load.day_summary(matrix, cal)
    yoy = load.year_on_year(days, cal, topology)
    dates, _ = ref_calendar(start, n, interval_s, tz)
    groups = ref_groups(dates, "month")
    totals = ref_summary(matrix, groups)["totals"]
    zone = ZoneInfo(tz)
    months = [(dates[g[0]].year, dates[g[0]].month) for g in groups]

    def whole(y: int, m: int) -> int:
        first, after = datetime(y, m, 1, tzinfo=zone), datetime(y + m // 12, m % 12 + 1, 1, tzinfo=zone)
        return (after - first).days if interval_s == 86400 else int(after.timestamp() - first.timestamp()) // 3600

    assert yoy.months == [f"{y}-{m:02d}" for y, m in months]
    for p, ((y, m), idx) in enumerate(zip(months, groups, strict=True)):
        this = totals[:, p] if len(idx) == whole(y, m) else np.full(totals.shape[0], np.nan)
        np.testing.assert_allclose(yoy.this_year[:, p], this, rtol=1e-12)
        back = months.index((y - 1, m)) if (y - 1, m) in months else -1
        if back < 0 or len(groups[back]) != whole(y - 1, m):
            assert np.isnan(yoy.last_year[:, p]).all(), yoy.months[p]
            continue
        np.testing.assert_allclose(yoy.last_year[:, p], totals[:, back], rtol=1e-12)
        ok = yoy.last_year[:, p] > 0
        np.testing.assert_allclose(yoy.change_pct[ok, p], 100 * (this[ok] / totals[ok, back] - 1), rtol=1e-9)
    # January and February 2026 compare; January 2025 is partial, March 2026 in progress
    assert not np.isnan(yoy.change_pct[3, yoy.months.index("2026-02")])
    assert np.isnan(yoy.this_year[:, 0]).all() and np.isnan(yoy.this_year[:, -1]).all()
    assert np.isnan(yoy.last_year[:, yoy.months.index("2026-01")]).all()
    per_building = load.year_on_year(days, cal, topology, by_building=True)
    assert per_building.labels[0] == "B01 electric"
    feb = yoy.months.index("2026-02")
    rows = [i for i, c in enumerate(topology.columns) if c.building == "B01" and c.utility == "electric"
            and c.role == "sub"]
    assert per_building.this_year[0, feb] == pytest.approx(yoy.this_year[rows, feb].sum(), rel=1e-12)
    assert per_building.last_year[0, feb] == pytest.approx(yoy.last_year[rows, feb].sum(), rel=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_energy_balance_matches_the_reference(case):
    """Per master and local day: the master's energy, the sum of every twin whose master
    it is, loss in kWh and percent, and the missing readings on both sides."""
    tz, local, interval_s, n = case
    start = utc(tz, *local)
    topology = site_topology(tz, interval_s)
    matrix = np.abs(random_matrix(n + 3, len(topology.columns), n))
    cal = load.local_calendar(start, n, interval_s, tz)
    balance = load.energy_balance(matrix, topology, cal)
    assert balance.masters == ["B01.mm", "B01.mw", "B02.mm", "B02.mw"]
    assert balance.feeds[0] == ["B01.el1", "B01.sc", "B01-0.em", "B01-1.em", "B01-2.em"]
    dates, _ = ref_calendar(start, n, interval_s, tz)
    ref = ref_summary(matrix, ref_groups(dates, "day"))
    for g, master in enumerate(balance.masters):
        j = topology.index_of(master)
        fed = [topology.index_of(f) for f in balance.feeds[g]]
        np.testing.assert_allclose(balance.master_kwh[g], ref["totals"][j], rtol=1e-12)
        np.testing.assert_allclose(balance.fed_kwh[g], ref["totals"][fed].sum(axis=0), rtol=1e-12)
        loss = ref["totals"][j] - ref["totals"][fed].sum(axis=0)
        np.testing.assert_allclose(balance.loss_kwh[g], loss, rtol=1e-9, atol=1e-9)
        master_kwh = ref["totals"][j]
        pct = np.where(master_kwh > 0, 100 * loss / np.where(master_kwh > 0, master_kwh, 1), np.nan)
        np.testing.assert_allclose(balance.loss_pct[g], pct, rtol=1e-9)
        np.testing.assert_array_equal(balance.missing[g], ref["missing"][j] + ref["missing"][fed].sum(axis=0))
    again = load.energy_balance(load.day_summary(matrix, cal), load.site_index(topology))
    np.testing.assert_array_equal(again.loss_kwh, balance.loss_kwh)


def test_wrong_shapes_are_refused():
    """A matrix that does not match the calendar, or a band array of another length, is
    refused with a message naming both sizes."""
    cal = load.local_calendar(utc("Asia/Shanghai", 2026, 1, 1), 96, 900, "Asia/Shanghai")
    with pytest.raises(ValueError, match="96 intervals"):
        load.day_summary(np.zeros((3, 95), np.float32), cal)
    with pytest.raises(ValueError, match="band covers 90"):
        load.band_totals(np.zeros((3, 96), np.float32), cal, np.zeros(90, np.int8))
    with pytest.raises(ValueError, match="band covers 90"):
        load.day_band_profile(np.zeros((3, 96), np.float32), cal, np.zeros(90, np.int8))
    with pytest.raises(ValueError, match="tariff_of must give each of 3 twins"):
        load.day_band_profile(np.zeros((3, 96), np.float32), cal, np.zeros((2, 96), np.int8), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="divide a day"):
        load.local_calendar(0, 10, 7 * 60, "Asia/Shanghai")
    with pytest.raises(ValueError, match="needs its calendar"):
        load.energy_balance(np.zeros((3, 96), np.float32), site_topology("Asia/Shanghai", 900))


# -- simulated histories -------------------------------------------------------------------


def write_history(directory: Path, scenario, days: float, start: datetime, seed: int = 3):  # type: ignore[no-untyped-def]
    world = World(scenario, seed=seed, days=days, start=start)
    topology = Topology.from_twins(scenario.site.id, scenario.site.timezone, world.interval_s, scenario.site.twins)
    with HistoryWriter(directory, topology) as writer:
        world.run(lambda day: writer.append(day.first_utc, day.reported))
    return open_history(directory)


def check_history(history) -> load.EnergyBalance:  # type: ignore[no-untyped-def]
    """Every kernel on the whole history against the references; returns the balance."""
    start, end = history.start, history.end
    matrix = history.read(start, end)
    cal = load.calendar_of_history(history, start, end)
    topology = history.topology
    dates, slots = ref_calendar(start, matrix.shape[1], history.interval_s, topology.timezone)
    days = load.day_summary(matrix, cal)
    for kind in ("day", "week", "month"):
        check_summary(load.period_summary(days, cal, kind), ref_summary(matrix, ref_groups(dates, kind)), start,
                      history.interval_s)
    profile = load.typical_profile(matrix, cal, topology.ids)
    np.testing.assert_allclose(profile.mean, ref_profile(matrix, dates, slots, cal.n_slots), rtol=1e-5, atol=1e-7)
    if history.interval_s < 86400:
        tables = price_tables([parse_tariff("tou", TOU)], start, matrix.shape[1], history.interval_s,
                              topology.timezone)
        split = load.band_totals(matrix, cal, tables.band)
        np.testing.assert_allclose(split.kwh.sum(axis=2), days.totals, rtol=1e-9, atol=1e-9)
    balance = load.energy_balance(days, topology)
    ref = ref_summary(matrix, ref_groups(dates, "day"))["totals"]
    for g, master in enumerate(balance.masters):
        fed = [topology.index_of(f) for f in balance.feeds[g]]
        assert fed, master
        np.testing.assert_allclose(balance.loss_kwh[g], ref[topology.index_of(master)] - ref[fed].sum(axis=0),
                                   rtol=1e-9, atol=1e-6)
    return balance


def test_demo_community_two_days(tmp_path):
    """The demo community, two days at 15 minutes with its injected thefts and faults:
    every kernel matches the references on the history read back from disk, and every
    master meter reads more than what it feeds (line loss, thefts, offline meters)."""
    scenario = load_scenario(str(ROOT / "scenarios" / "demo-community.toml"))
    history = write_history(tmp_path / "demo", scenario, 2, datetime(2026, 1, 5))
    balance = check_history(history)
    assert len(balance.masters) == 14 and len(balance.days) == 2
    assert (balance.loss_kwh > 0).all()
    electric = [g for g, u in enumerate(balance.utilities) if u == "electric"]
    assert (balance.loss_pct[electric] > 1).all() and (balance.loss_pct[electric] < 50).all()


@pytest.mark.parametrize("interval_s", [900, 3600, 86400])
def test_simulated_berlin_over_the_spring_dst_change(tmp_path, scenario_factory, interval_s):
    """A small site in Europe/Berlin across 2026-03-29 (23 hours) at 15 minutes, hourly
    and daily, with an offline meter and a theft: kernels match the references; without
    missing readings the master reads 0-15% above what it feeds."""
    randoms = [RandomInjections(("offline", "h1"), per_kind=1, first_day=0, last_day=1, min_days=0.5, max_days=1)]
    scenario = scenario_factory(randoms=randoms, buildings=1, floors=3, rooms=3)
    scenario.site.timezone = "Europe/Berlin"
    scenario = dataclasses.replace(scenario, interval_s=interval_s)
    start = datetime(2026, 3, 27, 1) if interval_s == 86400 else datetime(2026, 3, 27)
    history = write_history(tmp_path / "berlin", scenario, 4, start)
    balance = check_history(history)
    if interval_s < 86400:
        # 4 x 24 elapsed hours from local midnight end at 01:00 on the 31st: the 29th has 23
        assert balance.days == ["2026-03-27", "2026-03-28", "2026-03-29", "2026-03-30", "2026-03-31"]
        cal = load.calendar_of_history(history, history.start, history.end)
        assert (np.diff(cal.day_bounds) * interval_s // 3600).tolist() == [24, 24, 23, 24, 1]
    electric = balance.utilities.index("electric")
    clean = balance.missing[electric] == 0
    assert clean.any()
    assert ((balance.loss_pct[electric, clean] > 0) & (balance.loss_pct[electric, clean] < 15)).all()
