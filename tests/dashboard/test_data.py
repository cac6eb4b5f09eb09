"""What the dashboard's pages aggregate on the server: room states (worst first), the room
grid's layout and figure, energy by period beside last year. Against a real platform built
in-process from a small scenario (no server, no browser)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from control.policies import AccountPolicyState
from control.runtime import Platform
from dashboard import data

SCENARIO = """\
[site]
id = "G1"
name = "Grid test"

[tariffs.power]
kind = "flat"
price_yuan = 0.5

[[buildings]]
ids = "B01..B03"
floors = 4
rooms_per_floor = 3
electric = { tariff = "power" }
water = { valve = true }

[residents]
opening_yuan = [300, 300]
billing = "platform"
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    (tmp / "grid.toml").write_text(SCENARIO)
    made = Platform(str(tmp / "grid.toml"), tmp / "data", start=datetime(2026, 3, 2, 9))
    made.world.advance_to(2 * 3600)
    yield made
    made.close()


def _set(platform: Platform, twin: str, face_field: str, value: int) -> None:
    kind, row = platform.state.locate(twin)
    platform.state.tables[kind].faces["reported"][face_field][row] = value


def test_room_grid_places_every_room_once(platform):
    """Every room has its own cell; buildings sit side by side with a gap, floors are rows
    from the ground up; the figure colours exactly the rooms and nothing else."""
    index = data.RoomIndex.build(platform)
    assert len(index.ids) == 36
    cells = set(zip(index.x.tolist(), index.y.tolist(), strict=True))
    assert len(cells) == 36
    first = index.ids.index("B01-01-01")
    assert (index.x[first], index.y[first]) == (0, 0)
    assert index.y[index.ids.index("B01-04-01")] == 3  # the fourth floor is the fourth row
    assert index.x[index.ids.index("B01-01-03")] + 2 == index.x[index.ids.index("B02-01-01")]  # one empty column
    state, balance = data.room_states(platform, index)
    figure = data.grid_figure(index, state, balance)
    z = np.array(figure["data"][0]["z"], dtype=float)
    assert z.size <= data.MAX_POINTS
    assert np.count_nonzero(~np.isnan(z)) == 36
    assert {b for b, _, _ in index.labels} == {"B01", "B02", "B03"}
    one = data.RoomIndex.build(platform, "B02")
    assert one.ids[0] == "B02-01-01" and len(one.ids) == 12
    with pytest.raises(KeyError, match="no building"):
        data.RoomIndex.build(platform, "B09")


def test_room_states_worst_first(platform):
    """A room shows the worst of what holds: offline over cut off over alarm over arrears
    over low balance over normal."""
    index = data.RoomIndex.build(platform, "B03")
    state, _ = data.room_states(platform, index)
    assert set(state.tolist()) == {data.NORMAL}
    now = platform.now()
    platform.policy.states["A-B03-01-01"] = AccountPolicyState(level=2)
    platform.ledger.deduct("A-B03-01-02", 40000, "electric", at=now)  # 300 yuan opening, 400 charged
    platform.alarms.raise_("command_failed", twin="B03-01-03.em", at=now)
    platform.alarms.raise_("low_balance_1", account="A-B03-02-03", at=now)  # has a state of its own
    _set(platform, "B03-02-01.em", "relay_closed", 0)
    _set(platform, "B03-02-02.vl", "open", 0)
    platform.alarms.raise_("command_failed", twin="B03-03-01.em", at=now)
    _set(platform, "B03-03-01.em", "relay_closed", 0)  # cut off and alarmed: cut off
    _set(platform, "B03-03-02.wm", "online", 0)
    _set(platform, "B03-03-02.em", "relay_closed", 0)  # offline and cut off: offline
    state, balance = data.room_states(platform, index)
    shown = {room: data.STATES[s] for room, s in zip(index.ids, state.tolist(), strict=True)}
    assert shown["B03-01-01"] == "low balance"
    assert shown["B03-01-02"] == "arrears" and balance[index.ids.index("B03-01-02")] < 0
    assert shown["B03-01-03"] == "alarm"
    assert shown["B03-02-01"] == "cut off" and shown["B03-02-02"] == "cut off"
    assert shown["B03-02-03"] == "normal"
    assert shown["B03-03-01"] == "cut off"
    assert shown["B03-03-02"] == "offline"
    assert data.state_counts(state)["normal"] == 12 - 7


def test_energy_by_period_puts_last_year_beside():
    """Days roll up into months and years; each period carries the same period a year
    earlier, or None when the history does not hold it."""
    tz = ZoneInfo("Asia/Shanghai")
    days = [(datetime(2025, 3, 1, tzinfo=tz) + timedelta(days=i), 10.0, 1.0) for i in range(400)]
    months = {r["period"]: r for r in data.energy_by_period(days, "month")}
    assert months["2025-03"]["energy_kwh"] == 310.0 and months["2025-03"]["energy_kwh_last_year"] is None
    assert months["2026-03"]["energy_kwh"] == 310.0 and months["2026-03"]["energy_kwh_last_year"] == 310.0
    assert months["2026-04"]["energy_kwh"] == 40.0 and months["2026-04"]["energy_kwh_last_year"] == 300.0
    assert months["2026-03"]["water_m3_last_year"] == 31.0
    years = data.energy_by_period(days, "year")
    assert [(r["period"], r["energy_kwh"]) for r in years] == [("2025", 3060.0), ("2026", 940.0)]
    assert years[1]["energy_kwh_last_year"] == 3060.0
    one_day = data.energy_by_period(days, "day")
    assert len(one_day) == 400 and one_day[-1]["energy_kwh_last_year"] == 10.0


def test_downsample_keeps_short_series_and_caps_long_ones():
    """A day of intervals passes whole; a long series comes down to the limit by means."""
    t = np.arange(96)
    v = np.arange(96, dtype=float)
    assert data.downsample(t, v)[1] is v
    t2, v2 = data.downsample(np.arange(10_000), np.ones(10_000), limit=1000)
    assert len(t2) == 1000 and np.all(v2 == 1.0)


def _callback_body(client, prefix: str, inputs: list[dict], state: list[dict]) -> dict:
    deps = client.get("/_dash-dependencies").get_json()
    dep = next(d for d in deps if d["output"].startswith(prefix))
    outputs = [{"id": o.split(".")[0], "property": o.split(".")[1].split("@")[0]}
               for o in dep["output"].strip(".").split("...")]
    return {"output": dep["output"], "outputs": outputs if len(outputs) > 1 else outputs[0], "inputs": inputs,
            "state": state,
            "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"]}


@pytest.mark.parametrize("guard", [True, False], ids=["with the sign-in guard", "callbacks alone"])
def test_every_control_callback_refuses_a_viewer(platform, guard):
    """Each callback that acts answers 403 to a viewer's session and changes nothing, even
    with the sign-in guard taken away (the role is checked inside the callback too)."""
    from dashboard.app import create_dash

    app, _ = create_dash(platform)
    if not guard:
        app.server.before_request_funcs.clear()
    client = app.server.test_client()
    with client.session_transaction() as session:
        session["user"], session["role"] = "victor", 1
    alarm, _ = platform.alarms.raise_("command_failed", twin="B01-02-01.em" if guard else "B01-02-02.em",
                                      at=platform.now())
    bodies = [
        _callback_body(client, "..control-result.children", [{"id": "btn-confirm", "property": "n_clicks", "value": 1}],
                       [{"id": "pending-action", "property": "data", "value": {"action": "relay_open"}},
                        {"id": "twin-id", "property": "data", "value": "B01-01-01.em"}]),
        _callback_body(client, "alarm-ack-result.children",
                       [{"id": {"type": "ack", "alarm": alarm.id}, "property": "n_clicks", "value": 1}], []),
        _callback_body(client, "..task-create-result.children", [{"id": "task-create", "property": "n_clicks",
                                                                  "value": 1}],
                       [{"id": i, "property": "value", "value": v} for i, v in (
                           ("task-name", "t"), ("task-action", "relay_open"), ("task-building", "B01"),
                           ("task-floor", 1), ("task-twins", ""), ("task-at", ""), ("task-repeat", None))]),
        _callback_body(client, "sim-result.children", [{"id": "sim-inject", "property": "n_clicks", "value": 1},
                                                       {"id": "sim-set-speed", "property": "n_clicks", "value": None}],
                       [{"id": i, "property": "value", "value": v} for i, v in (
                           ("sim-twin", "B01-01-01.em"), ("sim-kind", "h1"), ("sim-hours", 1), ("sim-speed-in", 5))]),
    ]
    bodies[1]["inputs"] = [[bodies[1]["inputs"][0]]]  # a pattern-matching input comes as a list
    bodies[1]["changedPropIds"] = [f'{{"alarm":{alarm.id},"type":"ack"}}.n_clicks']
    injections = len(platform.world.injections)
    for body in bodies:
        answer = client.post("/_dash-update-component", json=body)
        assert answer.status_code == 403, (body["output"], answer.status_code, answer.get_data(as_text=True)[:300])
    assert platform.commands.recent(10, "B01-01-01.em") == []
    assert platform.alarms.get(alarm.id).state.value == "raised"
    assert platform.batch.list() == [] and len(platform.world.injections) == injections
    with client.session_transaction() as session:  # the same request from an operator is carried out
        session["user"], session["role"] = "olga", 2
    assert client.post("/_dash-update-component", json=bodies[1]).status_code == 200
    assert platform.alarms.get(alarm.id).state.value == "acknowledged"


def test_income_today_leaves_opening_balances_out(platform):
    """The overview's income today is what residents paid today (top-ups and bill
    payments), as the income report counts it: the opening balances the platform recorded
    when it opened the accounts are the residents' own money, not income."""
    from control.reports import income

    ledger = platform.ledger
    midnight = data.local_midnight(platform)
    openings = ledger.db.execute("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM transfers WHERE kind = 'topup' "
                                 "AND ref LIKE 'opening:%' AND at >= ?", (midnight,)).fetchone()
    assert openings[0] > 0 and openings[1] > 0  # the scenario's residents opened today with money
    today = datetime.fromtimestamp(platform.now(), tz=platform.world.tz).strftime("%Y-%m-%d")

    def reported() -> int:
        rows = income(ledger, platform.scenario.site.timezone, "day")
        return next((r.get("paid_in_fen", 0) for r in rows if r["period"] == today), 0)

    before = data.overview(platform)["income_fen_today"]
    paid = ledger.db.execute("SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE kind IN ('topup', 'bill_payment') "
                             "AND NOT ref LIKE 'opening:%' AND at >= ?", (midnight,)).fetchone()[0]
    assert before == paid == reported()
    account = next(iter(ledger.balances()))
    ledger.top_up("test-income-1", account, 1234, at=platform.now())
    after = data.overview(platform)["income_fen_today"]
    assert after == before + 1234 == reported()
