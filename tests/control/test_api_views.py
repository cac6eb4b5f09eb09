"""The API's views of a live platform, checked against the platform's own parts: history
buckets against plain numpy sums of the history files, the room grid and twin statuses
against the world's state after a trip and an injected outage, tariffs against the
scenario, and the clock's speed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest

from control.api.app import create_app
from control.auth import Role
from control.runtime import Platform
from twin.history import open_history

SCENARIO = """\
[site]
id = "V1"
name = "Views test"

[tariffs.res-power]
kind = "time_of_use"
bands = [{ name = "peak", price_yuan = 0.94, hours = ["08:00-22:00"] },
         { name = "valley", price_yuan = 0.31, hours = ["22:00-08:00"] }]

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
electric = { tariff = "res-power" }
water = { valve = true }
master = { electric = true, water = true }

[[buildings]]
id = "B02"
floors = 1
rooms_per_floor = 2
electric = {}

[[inject]]
twin = "B02-01-02.em"
kind = "offline"
start = "0d"
"""
START = datetime(2026, 3, 2)
DAYS = 2


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A platform two simulated days in, its history on disk."""
    tmp = tmp_path_factory.mktemp("api-views")
    (tmp / "views.toml").write_text(SCENARIO)
    p = Platform(str(tmp / "views.toml"), tmp / "data", start=START)
    p._tick(DAYS * 86400.0)
    p.history.flush()
    yield p
    p.close()


def ask(platform: Platform, role: Role, *calls: tuple[str, str, dict | None]) -> list[httpx.Response]:
    """Send (method, path, json body) calls with a fresh key of `role`, in order."""
    key = platform.auth.create_key("views", role)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(platform))
        async with httpx.AsyncClient(transport=transport, base_url="http://metertwin",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            return [await client.request(method, path, json=body) for method, path, body in calls]

    return asyncio.run(go())


def test_a_twins_day_bucketed_matches_the_history(platform):
    """A day at 15 minutes asked in 24 points is 24 hourly sums of the history's own
    readings; in 7 points, buckets of 14 intervals with a short last one; the totals are
    the day's total either way, and a range past the history's end is null and missing."""
    history = open_history(platform.data / "history")
    t1 = history.end
    t0 = t1 - 86400
    raw = history.read(t0, t1, ["B01-01-01.em"])[0].astype(np.float64)
    assert raw.size == 96 and not np.isnan(raw).any()
    hourly, sevens, beyond = (r.json() for r in ask(
        platform, Role.VIEWER,
        ("GET", f"/api/twins/B01-01-01.em/history?start={t0}&end={t1}&points=24", None),
        ("GET", f"/api/twins/B01-01-01.em/history?start={t0}&end={t1}&points=7", None),
        ("GET", f"/api/twins/B01-01-01.em/history?start={t1 - 3600}&end={t1 + 3600}&points=8", None)))
    assert hourly["bucket_s"] == 3600 and hourly["times"] == list(range(t0, t1, 3600))
    np.testing.assert_allclose(hourly["values"], raw.reshape(24, 4).sum(axis=1), rtol=1e-6)
    assert hourly["missing"] == [0] * 24 and hourly["unit"] == "kWh"
    assert sevens["bucket_s"] == 14 * 900 and len(sevens["values"]) == 7
    np.testing.assert_allclose(sevens["values"][-1], raw[84:].sum(), rtol=1e-6)
    np.testing.assert_allclose(sum(sevens["values"]), raw.sum(), rtol=1e-6)
    assert beyond["values"][4:] == [None] * 4 and beyond["missing"] == [0] * 4 + [1] * 4
    np.testing.assert_allclose(beyond["values"][:4], raw[-4:], rtol=1e-6)


def test_a_buildings_history_sums_its_meters(platform):
    """A building's series is the sum of its sub meters of the utility; role=master is its
    master meter alone; the default range is the last day of the history."""
    history = open_history(platform.data / "history")
    t1 = history.end
    subs = [c.id for c in history.topology.columns if c.building == "B01" and c.utility == "water"
            and c.role == "sub"]
    assert len(subs) == 4
    raw = history.read(t1 - 86400, t1, subs).astype(np.float64).sum(axis=0)
    master = history.read(t1 - 86400, t1, ["B01.mw"])[0].astype(np.float64)
    water, feed = (r.json() for r in ask(
        platform, Role.VIEWER, ("GET", "/api/buildings/B01/history?utility=water&points=4", None),
        ("GET", "/api/buildings/B01/history?utility=water&role=master&points=4", None)))
    assert water["meters"] == 4 and water["unit"] == "m3" and water["times"][0] == t1 - 86400
    np.testing.assert_allclose(water["values"], raw.reshape(4, 24).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(feed["values"], master.reshape(4, 24).sum(axis=1), rtol=1e-5)
    none, past = ask(platform, Role.VIEWER, ("GET", "/api/buildings/B02/history?utility=water", None),
                     ("GET", "/api/buildings/B01/history?start=2026-03-02T00:00&end=2026-03-01T00:00", None))
    assert none.status_code == 400 and "no sub water meter" in none.json()["detail"]
    assert past.status_code == 400 and "must come after start" in past.json()["detail"]


def test_the_room_grid_follows_the_world(platform):
    """The room grid of a building shows every floor and room; a trip confirmed by the
    world turns its room to cut_off, and the injected outage shows as offline, in the
    grid, in the twin list filtered by status, and in the building's counts."""
    made, = ask(platform, Role.OPERATOR, ("POST", "/api/commands", {"twin": "B01-02-01.em", "action": "relay_open"}))
    assert made.status_code == 201, made.text
    platform._tick(platform.world.now_s + 1800)
    grid, b02, cut, offline, room = (r.json() for r in ask(
        platform, Role.VIEWER, ("GET", "/api/buildings/B01", None), ("GET", "/api/buildings/B02", None),
        ("GET", "/api/twins?status=cut_off", None), ("GET", "/api/rooms?status=offline", None),
        ("GET", "/api/rooms/B01-02-01", None)))
    assert [f["number"] for f in grid["floor_list"]] == [1, 2]
    statuses = {r["id"]: r["status"] for f in grid["floor_list"] for r in f["rooms"]}
    assert statuses == {"B01-01-01": "normal", "B01-01-02": "normal", "B01-02-01": "cut_off", "B01-02-02": "normal"}
    assert grid["status"] == {"normal": 3, "cut_off": 1}
    assert [t["id"] for t in cut["items"]] == ["B01-02-01.em"] and cut["total"] == 1
    assert [r["id"] for r in offline["items"]] == ["B02-01-02"] and b02["status"] == {"normal": 1, "offline": 1}
    meter = next(t for t in room["twin_states"] if t["id"] == "B01-02-01.em")
    assert meter["reported"]["relay_closed"] == 0 and room["status"] == "cut_off"


def test_site_tariffs_and_clock(platform):
    """The site's counts, the scenario's tariff with its bands' hours, and a speed change
    the clock follows; a viewer may read the clock but not set it."""
    site, tariffs, one, unknown, slow, denied = ask(
        platform, Role.OPERATOR, ("GET", "/api/site", None), ("GET", "/api/tariffs", None),
        ("GET", "/api/tariffs/res-power", None), ("GET", "/api/tariffs/nope", None),
        ("PUT", "/api/simulation/speed", {"speed": 0}), ("PUT", "/api/simulation/speed", {"speed": -5}))
    assert site.json()["rooms"] == 6 and site.json()["twins"]["valve"] == 4
    assert [t["name"] for t in tariffs.json()] == ["res-power"]
    bands = one.json()["versions"][0]["bands"]
    assert [(b["name"], b["hours"]) for b in bands] == [("peak", ["08:00-22:00"]),
                                                       ("valley", ["22:00-24:00", "00:00-08:00"])]
    assert unknown.status_code == 404 and "res-power" in unknown.json()["detail"]
    assert slow.status_code == 200 and platform.speed == 0 and slow.json()["speed"] == 0
    assert denied.status_code == 422
    held = platform.clock.sim_s()
    assert platform.clock.sim_s() == held
    viewer, = ask(platform, Role.VIEWER, ("PUT", "/api/simulation/speed", {"speed": 60}))
    assert viewer.status_code == 403 and "needs operator" in viewer.json()["detail"]


def test_a_prepaid_account_run_dry_shows_as_arrears(tmp_path):
    """Platform billing: an account refunded to zero goes below zero as it uses energy;
    its meters show arrears (or cut_off, once the policy trips them), the account's
    available balance is negative, and the others stay normal."""
    (tmp_path / "prepaid.toml").write_text(SCENARIO.split("[[buildings]]\nid = \"B02\"")[0]
                                           + '[residents]\nbilling = "platform"\nopening_yuan = [200, 300]\n')
    p = Platform(str(tmp_path / "prepaid.toml"), tmp_path / "data", start=datetime(2026, 3, 2, 9))
    try:
        p._tick(3600.0)
        balance = p.ledger.balance("A-B01-01-01")
        refund, = ask(p, Role.OPERATOR, ("POST", "/api/accounts/A-B01-01-01/refunds",
                                         {"amount_fen": balance, "reason": "moving out"}))
        assert refund.status_code == 201 and refund.json()["balance_fen"] == 0, refund.text
        p._tick(4 * 3600.0)
        account, water, rooms = (r.json() for r in ask(
            p, Role.VIEWER, ("GET", "/api/accounts/A-B01-01-01", None), ("GET", "/api/twins/B01-01-01.wm", None),
            ("GET", "/api/rooms?building=B01", None)))
        assert account["available_fen"] < 0
        page, one = (r.json() for r in ask(p, Role.VIEWER, ("GET", "/api/accounts?building=B01", None),
                                           ("GET", "/api/accounts/A-B01-02-02", None)))
        assert page["total"] == 4 and page["items"][0] == account and page["items"][-1] == one
        assert water["status"] == "arrears"
        statuses = {r["id"]: r["status"] for r in rooms["items"]}
        assert statuses.pop("B01-01-01") in ("arrears", "cut_off")
        assert set(statuses.values()) == {"normal"}
    finally:
        p.close()


def test_overview_and_the_sites_history(platform):
    """The overview counts the meters and the injected outage, and today (begun at the
    platform's local midnight, not yet in a history written a day at a time) holds no
    readings yet; the site's series is the sum of its buildings'."""
    over, site, b01, b02 = (r.json() for r in ask(
        platform, Role.VIEWER, ("GET", "/api/overview", None), ("GET", "/api/site/history?points=6", None),
        ("GET", "/api/buildings/B01/history?points=6", None), ("GET", "/api/buildings/B02/history?points=6", None)))
    assert over["meters"] == 4 + 2 + 4 + 2 and over["meters_online"] == over["meters"] - 1
    assert over["twins_by_status"]["offline"] == 1 and sum(over["rooms_by_status"].values()) == 6
    assert over["today"]["start"].startswith("2026-03-04T00:00") and over["today"]["until"] is None
    assert over["today"]["electric_kwh"] is None and over["today"]["paid_in_fen"] == 0
    assert site["meters"] == b01["meters"] + b02["meters"] == 6 and site["times"] == b01["times"]
    np.testing.assert_allclose(site["values"], np.add(b01["values"], b02["values"]), rtol=1e-6)


def test_consumption_by_day_beside_last_year(platform):
    """Days of a building's electricity are the sums of its sub meters over each local day
    (checked against the history's own readings); last year is not in the history, so its
    figures and the change are null; a month sums the same readings; CSV has the rows."""
    history = open_history(platform.data / "history")
    t_end = history.end
    subs = [c.id for c in history.topology.columns if c.building == "B01" and c.utility == "electric"
            and c.role == "sub"]
    raw = history.read(t_end - 2 * 86400, t_end, subs).astype(np.float64).sum(axis=0)
    days, month, text, bad = ask(
        platform, Role.VIEWER, ("GET", "/api/reports/consumption?building=B01&start=2026-03-02&end=2026-03-03", None),
        ("GET", "/api/reports/consumption?period=month&building=B01&start=2026-03-01&end=2026-03-31", None),
        ("GET", "/api/reports/consumption?building=B01&start=2026-03-02&end=2026-03-03&format=csv", None),
        ("GET", "/api/reports/consumption?start=2026-03-05&end=2026-03-01", None))
    rows = days.json()
    assert [r["period"] for r in rows] == ["2026-03-02", "2026-03-03"]
    np.testing.assert_allclose([r["units"] for r in rows], [raw[:96].sum(), raw[96:].sum()], rtol=1e-6)
    assert [r["missing"] for r in rows] == [0, 0]
    assert rows[0]["last_year_period"] == "2025-03-02" and rows[0]["last_year_units"] is None
    assert rows[0]["change_pct"] is None
    (march,) = month.json()
    np.testing.assert_allclose(march["units"], raw.sum(), rtol=1e-6)
    assert march["missing"] == (31 - 2) * 96 * len(subs)
    assert text.headers["content-type"].startswith("text/csv") and text.text.count("\n") == 3
    assert bad.status_code == 400 and "before start" in bad.json()["detail"]


def test_a_meters_day_by_band(platform):
    """A meter's day splits its readings at the band edges (peak 08-22 local at 94 fen,
    valley at 31), the total rounded once; an untariffed water meter has no money."""
    history = open_history(platform.data / "history")
    t0 = int(datetime(2026, 3, 3, tzinfo=platform.world.tz).timestamp())
    raw = history.read(t0, t0 + 86400, ["B01-01-01.em"])[0].astype(np.float64)
    peak, valley = raw[32:88].sum(), raw[:32].sum() + raw[88:].sum()
    day, water, valve = (r.json() for r in ask(
        platform, Role.VIEWER, ("GET", "/api/twins/B01-01-01.em/day?day=2026-03-03", None),
        ("GET", "/api/twins/B01-01-01.wm/day?day=2026-03-03", None), ("GET", "/api/twins/B01-01-01.vl/day", None)))
    bands = {b["name"]: b for b in day["bands"]}
    np.testing.assert_allclose([bands["peak"]["units"], bands["valley"]["units"]], [peak, valley], rtol=1e-6)
    np.testing.assert_allclose([bands["peak"]["fen"], bands["valley"]["fen"]], [94 * peak, 31 * valley], rtol=1e-6)
    assert day["fen"] == int(np.floor(94 * peak + 31 * valley + 0.5)) and day["surcharge_fen"] == 0
    assert day["missing"] == 0 and day["until"].startswith("2026-03-04T00:00")
    assert water["tariff"] is None and water["fen"] is None and water["units"] > 0
    assert "keeps no interval history" in valve["detail"]


def test_tier_surcharges_split_an_interval_at_a_threshold():
    """Use that crosses a threshold inside an interval pays each tier's surcharge on its
    own part: from 150 with tiers at 180 and 300 (surcharges 0, 5, 30), 100 then 100 pay
    70 x 5, then 50 x 5 + 50 x 30."""
    from control.api.cost import _surcharges

    thresholds = np.array([180.0, 300.0, np.inf, np.inf, np.inf])
    surcharges = np.array([0.0, 5.0, 30.0, 30.0, 30.0, 30.0])
    assert _surcharges(np.array([100.0, 100.0]), 150.0, thresholds, surcharges) == 70 * 5 + 50 * 5 + 50 * 30
    assert _surcharges(np.array([10.0]), 0.0, thresholds, surcharges) == 0.0


def test_history_sums_across_raw_and_rolled_up_months(tmp_path):
    """A 5-minute history whose January is kept only as roll-ups: a January range asked at
    5-minute detail widens to 15-minute buckets (the finest level kept) with the same sums;
    a range across the roll-up and the raw February sums both, missing readings counted."""
    from control.api.history import bucket_sums
    from twin.history import Column, HistoryWriter, Topology

    topology = Topology("R1", "UTC", 300, [Column("a.em", "electric_meter", "electric", "kWh"),
                                           Column("b.em", "electric_meter", "electric", "kWh")])
    jan, feb = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()), int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    rows = (feb - jan) // 300 + 10 * 288
    block = np.tile(np.array([[1.0, 2.0]], dtype=np.float32), (rows, 1))
    block[12:24, 1] = np.nan  # an hour of b missing, 01:00 to 02:00 on 1 January
    writer = HistoryWriter(tmp_path / "h", topology, raw_days=1)
    writer.append(jan, block)  # a month past the raw days is rolled up as the writer goes
    writer.roll_up(feb + 10 * 86400)
    writer.close()
    history = open_history(tmp_path / "h")
    assert history.months() == ["2026-02"] and history.rolled_up_months() == ["2026-01"]
    t0, t1, bucket_s, times, sums, missing = bucket_sums(history, [0, 1], jan + 300, jan + 3 * 3600 + 300, 1000)
    assert (t0, t1, bucket_s) == (jan, jan + 3 * 3600 + 900, 900) and len(times) == 13
    assert sums.sum() == 13 * 3 * 3.0 - 12 * 2.0 and missing.sum() == 12
    t0, t1, bucket_s, times, sums, missing = bucket_sums(history, [0, 1], feb - 86400, feb + 86400, 2)
    assert bucket_s == 86400 and sums.tolist() == [288 * 3.0, 288 * 3.0] and missing.tolist() == [0, 0]


def test_an_injection_started_live_is_recorded_for_replay(platform):
    """An operator injects a leak into a water meter: it is in the world from the current
    interval, listed as live, and its write is in the store (a restart replays it); a
    kind the twin cannot take is 400 and leaves no write, an unknown twin 404, a viewer 403."""
    before = platform.store.db.execute("SELECT COUNT(*) FROM world_writes").fetchone()[0]
    made, wrong, nowhere = ask(
        platform, Role.OPERATOR,
        ("POST", "/api/simulation/injections", {"twin": "B01-02-02.wm", "kind": "leak", "duration_s": 86400}),
        ("POST", "/api/simulation/injections", {"twin": "B01-02-02.em", "kind": "leak", "duration_s": 3600}),
        ("POST", "/api/simulation/injections", {"twin": "B09-01-01.wm", "kind": "leak", "duration_s": 3600}))
    assert made.status_code == 201, made.text
    leak = made.json()
    assert leak["live"] and leak["kind"] == "leak" and leak["end"] - leak["start"] >= 86400
    assert leak["start"] <= platform.now() < leak["end"] and leak["params"]["flow_lph"] > 0
    assert wrong.status_code == 400 and "cannot be injected into B01-02-02.em" in wrong.json()["detail"]
    assert nowhere.status_code == 404 and "B09-01-01.wm" in nowhere.json()["detail"]
    rows = platform.store.db.execute("SELECT twin, field, value FROM world_writes").fetchall()
    assert len(rows) == before + 1 and tuple(rows[-1]) == ("B01-02-02.wm", "inject:leak", 86400)
    listed, denied = ask(platform, Role.VIEWER, ("GET", "/api/simulation/injections?live=true", None),
                         ("POST", "/api/simulation/injections", {"twin": "B01-02-02.wm", "kind": "leak",
                                                                 "duration_s": 60}))
    assert listed.json() == [leak]
    assert denied.status_code == 403 and "needs operator" in denied.json()["detail"]
