"""The load analytics live: a platform ticked forward keeps a snapshot whose figures are
plain numpy sums of its history files, raises `energy_loss` on the master meter of the
building where a flat's meter is bypassed (and on no other), clears it when the theft
ends, raises nothing on a clean run, and serves the snapshot at /api/analytics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest

from control.analytics_live import KIND, LOSS_MIN, SEVERITY, USUAL_MIN_DAYS, loss_verdicts
from control.api.app import create_app
from control.auth import Role
from control.runtime import Platform
from twin.alarms import Alarm
from twin.history import open_history
from twin.kernels.load import EnergyBalance

SCENARIO = """\
[site]
id = "LA"
timezone = "Asia/Shanghai"

[tariffs.power]
kind = "flat"
price_yuan = 0.5

[tariffs.water]
kind = "flat"
utility = "water"
price_yuan = 4.0

[[buildings]]
ids = "B01..B02"
floors = 3
rooms_per_floor = 4
vacant_share = 0.0
electric = { tariff = "power" }
water = { tariff = "water" }
master = { electric = true, water = true, loss_pct = 2.0, fixed_loss_w = 120 }
"""
# a meter bypassed for the sixth day: the flat's load goes on, its meter sees a fifth of it
BYPASS = """
[[inject]]
twin = "B01-02-03.em"
kind = "bypass"
start = "5d"
end = "6d"
share = 0.8
"""
START = datetime(2026, 3, 2)  # a Monday, site-local midnight
SLOTS = 96  # 15-minute intervals a day (Asia/Shanghai has no DST)


def run_days(platform: Platform, days: float) -> None:
    end = platform.world.now_s + days * 86400
    while platform.world.now_s < end:
        platform._tick(min(platform.world.now_s + 900, end))


def build(tmp, text: str) -> Platform:
    path = tmp / "analytics.toml"
    path.write_text(text)
    return Platform(str(path), tmp / "data", start=START)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean platform six days and a bit in: five whole days usual, the sixth judged."""
    p = build(tmp_path_factory.mktemp("analytics-clean"), SCENARIO)
    run_days(p, 6.05)
    p.history.flush()
    yield p
    p.close()


def loss_alarms(platform: Platform) -> dict[str | None, Alarm]:
    return {a.twin: a for a in platform.alarms.open_alarms() if a.kind == KIND}


def test_the_snapshot_is_numpy_sums_of_the_history(clean):
    """Over the snapshot's window (six whole local days), B01's electric master against the
    sum of the meters it feeds is, day by day, the numpy sum of the history's readings
    (missing as 0); the month's total, peak demand, its time and load factor are those of
    the building's sub-meters summed at each interval; its typical weekday is the sum of
    each sub-meter's mean weekday slot."""
    snap = clean.analytics.snapshot
    assert snap is not None and snap.days == tuple(f"2026-03-0{d}" for d in range(2, 8))
    history = open_history(clean.data / "history")
    assert snap.window_end <= history.end
    matrix = history.read(snap.window_start, snap.window_end).astype(np.float64)
    columns = history.topology.columns
    n_days = len(snap.days)
    assert matrix.shape[1] == n_days * SLOTS
    by_day = np.nan_to_num(matrix).reshape(len(columns), n_days, SLOTS).sum(axis=2)
    master = history.topology.index_of("B01.mm")
    fed = [i for i, c in enumerate(columns) if c.master == "B01.mm"]
    assert len(fed) == 12
    loss = by_day[master] - by_day[fed].sum(axis=0)
    m = snap.balance.masters.index("B01.mm")
    np.testing.assert_allclose(snap.balance.loss_kwh[m], loss, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(snap.balance.loss_pct[m], 100 * loss / by_day[master], rtol=1e-9)

    subs = [i for i, c in enumerate(columns) if c.building == "B01" and c.utility == "electric" and c.role == "sub"]
    building = np.nansum(matrix[subs], axis=0)
    figures = next(b for b in snap.buildings if (b.building, b.utility) == ("B01", "electric"))
    assert figures.master == "B01.mm" and figures.month == "2026-03" and figures.month_days == n_days
    assert figures.month_kwh == pytest.approx(building.sum(), rel=1e-6)
    peak = int(np.argmax(building))
    assert figures.peak_kw == pytest.approx(building[peak] / 0.25, rel=1e-6)
    assert figures.peak_utc == snap.window_start + peak * 900
    assert figures.load_factor == pytest.approx(building.mean() / building[peak], rel=1e-5)
    assert np.isnan(figures.last_year_kwh)  # the history does not reach back a year

    weekday = [d for d in range(n_days) if datetime.fromisoformat(snap.days[d]).weekday() < 5]
    per_day = matrix[subs].reshape(len(subs), n_days, SLOTS)[:, weekday]
    typical = np.nanmean(per_day, axis=1).sum(axis=0)
    g = snap.profiles.labels.index("B01 electric")
    np.testing.assert_allclose(snap.profiles.mean[g, 0], typical, rtol=1e-5)
    assert not snap.balance.loss_pct.flags.writeable  # the snapshot is not to be changed


def test_a_clean_run_raises_no_loss_alarm(clean):
    """Six days with no fault or theft: the task ran each day, judged every master on its
    last day (five usual days each) and raised nothing."""
    task = next(t for t in clean.tasks if t.name == "load analytics")
    assert task.runs > 0 and task.last_error is None
    assert clean.analytics.runs == 6 and clean.analytics.raised == 0
    verdicts = clean.analytics.snapshot.verdicts
    assert len(verdicts) == 4 and all(v.over is False and v.usual_days == 5 for v in verdicts)
    assert not loss_alarms(clean)


def test_a_bypass_raises_energy_loss_on_its_master_then_clears(tmp_path):
    """A flat's meter bypassed on the sixth day: once that day is whole, its building's
    electric master (and no other master) holds one energy_loss alarm whose evidence names
    the day, the loss against its usual and the figures; when the next day is clean again,
    the alarm is cleared."""
    p = build(tmp_path, SCENARIO + BYPASS)
    try:
        run_days(p, 6.05)
        alarms = loss_alarms(p)
        assert set(alarms) == {"B01.mm"}, sorted(alarms)
        alarm = alarms["B01.mm"]
        ev = alarm.evidence
        assert alarm.severity == SEVERITY and ev["day"] == "2026-03-07" and ev["usual_days"] == 5
        assert ev["loss_pct"] - ev["usual_pct"] > ev["margin_pct"]
        assert ev["loss"] - ev["usual_pct"] / 100 * ev["master"] > LOSS_MIN["electric"]
        assert ev["evidence"].startswith("B01 electric loss ") and "on 2026-03-07, usual " in ev["evidence"]
        assert "over the 5 days before" in ev["evidence"]
        run_days(p, 1.0)
        assert not loss_alarms(p)
        stored = [(a.kind, a.twin, a.state.value) for a in p.store.load_alarms() if a.kind == KIND]
        assert stored == [(KIND, "B01.mm", "cleared")]
        assert p.analytics.raised == 1 and p.analytics.cleared == 1
    finally:
        p.close()


def _balance(pct: list[float], master: list[float], missing: list[int] | None = None) -> EnergyBalance:
    master_kwh = np.array([master])
    loss = master_kwh * np.array([pct]) / 100
    return EnergyBalance(["B01.mm"], ["B01"], ["electric"], [["B01-01-01.em"]], [str(d) for d in range(len(pct))],
                         master_kwh, master_kwh - loss, loss, np.array([pct], dtype=float),
                         np.array([missing or [0] * len(pct)]))


def test_the_loss_rule():
    """The last day is judged against the median of the earlier days with every reading:
    above by more than the margin (0.5 points, or four robust standard deviations when the
    days swing more) and by more than the minimum energy, it is over; a day with a missing
    reading, or too few usual days, is not judged."""
    steady = [2.0, 2.1, 1.9, 2.0]
    assert loss_verdicts(_balance([*steady, 2.6], [1000] * 5))[0].over is True  # +0.6 points, 6 kWh
    assert loss_verdicts(_balance([*steady, 2.4], [1000] * 5))[0].over is False  # +0.4 points
    assert loss_verdicts(_balance([*steady, 3.0], [100] * 5))[0].over is False  # +1 point but 1 kWh
    swinging = [2.0, 4.0, 1.0, 3.0]  # median 2.5, MAD 1.0: the margin is 5.9 points
    verdict = loss_verdicts(_balance([*swinging, 7.0], [1000] * 5))[0]
    assert verdict.margin_pct == pytest.approx(4 * 1.4826) and verdict.over is False
    assert loss_verdicts(_balance([*steady, 9.0], [1000] * 5, [0, 0, 0, 0, 3]))[0].over is None
    few = [2.0] * (USUAL_MIN_DAYS - 1)
    assert loss_verdicts(_balance([*few, 9.0], [1000] * USUAL_MIN_DAYS))[0].over is None
    # a day missing readings is left out of the usual too
    assert loss_verdicts(_balance([*steady, 9.0, 2.7], [1000] * 6, [0, 0, 0, 0, 5, 0]))[0].usual_days == 4


def ask(platform: Platform, *paths: str) -> list[httpx.Response]:
    key = platform.auth.create_key("analytics", Role.VIEWER)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(platform))
        async with httpx.AsyncClient(transport=transport, base_url="http://metertwin",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(go())


def test_the_api_serves_the_snapshot(clean):
    """/api/analytics/buildings has a row per building and utility with the snapshot's
    loss, month and peak figures; a building's detail has its masters' last N days of loss
    and its typical days; an unknown building is 404 naming it."""
    snap = clean.analytics.snapshot
    listing, detail, unknown, too_many = ask(clean, "/api/analytics/buildings", "/api/analytics/buildings/B01?days=3",
                                             "/api/analytics/buildings/B77", "/api/analytics/buildings/B01?days=0")
    assert listing.status_code == 200 and detail.status_code == 200
    body = listing.json()
    assert body["status"] == "computed" and body["computed_at"] == snap.computed_at
    assert body["window"] == {"start_utc": snap.window_start, "end_utc": snap.window_end, "first_day": "2026-03-02",
                              "last_day": "2026-03-07", "days": 6}
    rows = {(r["building"], r["utility"]): r for r in body["buildings"]}
    assert set(rows) == {(b, u) for b in ("B01", "B02") for u in ("electric", "water")}
    row = rows[("B01", "electric")]
    m = snap.balance.masters.index("B01.mm")
    verdict = snap.verdicts[m]
    assert row["master"] == "B01.mm" and row["loss_day"] == "2026-03-07" and row["over"] is False
    assert row["loss"] == pytest.approx(snap.balance.loss_kwh[m, -1], abs=1e-3)
    assert row["loss_pct"] == pytest.approx(verdict.loss_pct, abs=0.01)
    assert row["usual_pct"] == pytest.approx(verdict.usual_pct, abs=0.01)
    figures = next(b for b in snap.buildings if (b.building, b.utility) == ("B01", "electric"))
    assert row["month_total"] == pytest.approx(figures.month_kwh, abs=1e-3)
    assert row["peak_kw"] == pytest.approx(figures.peak_kw, abs=1e-3) and row["last_year_total"] is None
    assert row["peak_utc"] == datetime.fromtimestamp(figures.peak_utc, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert row["peak_local"].endswith("+08:00") and rows[("B01", "water")]["unit"] == "m3"

    one = detail.json()
    assert one["building"] == "B01" and {b["master"] for b in one["balance"]} == {"B01.mm", "B01.mw"}
    electric = next(b for b in one["balance"] if b["master"] == "B01.mm")
    assert [d["day"] for d in electric["days"]] == ["2026-03-05", "2026-03-06", "2026-03-07"]
    np.testing.assert_allclose([d["loss"] for d in electric["days"]], snap.balance.loss_kwh[m, -3:], atol=1e-3)
    profile = next(p for p in one["profiles"] if p["utility"] == "electric")
    assert profile["slot_minutes"] == 15 and len(profile["weekday"]) == SLOTS and profile["meters"] == 12
    g = snap.profiles.labels.index("B01 electric")
    np.testing.assert_allclose(profile["weekday"], snap.profiles.mean[g, 0], atol=1e-4)

    assert unknown.status_code == 404 and "B77" in unknown.json()["detail"]
    assert too_many.status_code == 422


def test_before_the_first_day_the_api_says_not_computed_yet(tmp_path):
    """A platform that has not completed a day has no snapshot: both routes answer with
    status "not computed yet" and nothing else, and the unknown building is still 404."""
    p = build(tmp_path, SCENARIO)
    try:
        run_days(p, 0.5)
        assert p.analytics.snapshot is None
        listing, detail, unknown = ask(p, "/api/analytics/buildings", "/api/analytics/buildings/B02",
                                       "/api/analytics/buildings/B77")
        assert listing.json()["status"] == "not computed yet" and listing.json()["buildings"] == []
        assert detail.status_code == 200 and detail.json()["balance"] == [] and detail.json()["window"] is None
        assert unknown.status_code == 404
    finally:
        p.close()


def test_last_year_is_the_same_dates_a_year_before(tmp_path):
    """The month's figure a year back sums each building's sub-meters over the same local
    dates of last year as read from the history (rolled up or not); a span the history does
    not reach back to is NaN."""
    from datetime import date
    from zoneinfo import ZoneInfo

    from control.analytics_live import last_year_totals
    from twin.history import Column, History, HistoryWriter, Topology
    from twin.kernels.load import site_index

    tz = "Asia/Shanghai"
    columns = [Column("B01.mm", "electric_meter", "electric", "kWh", "B01", role="master"),
               Column("B01-01-01.em", "electric_meter", "electric", "kWh", "B01", 1, master="B01.mm"),
               Column("B01-01-02.em", "electric_meter", "electric", "kWh", "B01", 1, master="B01.mm")]
    topology = Topology("LY", tz, 3600, columns)
    rng = np.random.default_rng(3)
    blocks = {year: rng.gamma(2.0, 0.5, size=(24 * 7, 3)).astype(np.float32) for year in (2025, 2026)}
    blocks[2025][5, 1] = np.nan  # a missing reading counts as 0
    with HistoryWriter(tmp_path / "h", topology) as writer:
        for year, block in blocks.items():
            writer.append(int(datetime(year, 3, 1, tzinfo=ZoneInfo(tz)).timestamp()), block)
    history = History(tmp_path / "h")
    index = site_index(topology)
    got = last_year_totals(history, index, date(2026, 3, 2), date(2026, 3, 5), tz)
    assert index.group_labels == ["B01 electric"]
    assert got[0] == pytest.approx(np.nansum(blocks[2025][24:24 * 5, 1:].astype(np.float64)), rel=1e-6)
    assert np.isnan(last_year_totals(history, index, date(2026, 2, 27), date(2026, 3, 5), tz)[0])
