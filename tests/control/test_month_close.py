"""Month close in the live platform: fee items, apportionment (公摊) and postpaid bills,
checked against figures computed here from the readings."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import pytest

from control.api.app import create_app
from control.auth import Role
from control.runtime import Platform
from scenarios.loader import ScenarioError, load_scenario_text
from twin.ledger import round_half_up

SCENARIO = """\
[site]
id = "F1"

[tariffs.flat]
kind = "flat"
price_yuan = 0.5

[[fee_items]]
name = "property fee"
basis = "area"
yuan_per_m2_month = 1.8

[[fee_items]]
name = "key deposit"
period = "once"
yuan = 50
charge = "bill"

[[apportion]]
name = "corridor"
source = "B01.sc-corridor"
basis = "area"
price_yuan = 0.6

[[apportion]]
name = "line loss"
source = "B01.mm"
basis = "usage"
price_yuan = 0.5
charge = "bill"

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
room_area_m2 = [70, 130]
electric = { tariff = "flat" }
master = { electric = true, loss_pct = 3.0 }

[[buildings.shared]]
name = "corridor"
circuit = "lighting"
power_kw = 0.8
schedule = "always"

[[rooms]]
id = "B01-02-02"
electric = { prepaid = false }
"""
TZ = ZoneInfo("Asia/Shanghai")
POSTPAID = "A-B01-02-02"


def test_january_closes_once_with_fees_shares_and_a_postpaid_bill(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text(SCENARIO)
    p = Platform(str(path), tmp_path / "data", start=datetime(2026, 1, 30))
    jan_end = datetime(2026, 2, 1, tzinfo=TZ).timestamp()
    sums: dict[str, float] = defaultdict(float)  # January's readings, summed here
    cols = p.world.column_of
    feeds = [t.id for t in p.scenario.site.twins if t.master == "B01.mm"]
    inner = p.world.on_interval

    def watch(start_utc, reported):
        if start_utc < jan_end:
            sums["corridor"] += float(reported[cols["B01.sc-corridor"]])
            sums["gap"] += float(reported[cols["B01.mm"]]) - sum(float(reported[cols[t]]) for t in feeds)
            for t in p.scenario.site.twins:
                if t.account and t.id in cols:
                    sums[t.account] += float(reported[cols[t.id]])
        inner(start_utc, reported)

    p.world.on_interval = watch
    while p.world.now_s < 3.5 * 86400:
        p._tick(p.world.now_s + 900)
    assert [c.month for c in p.closed_months] == ["2026-01"]
    ledger = p.ledger

    def refs(ref):
        return [(d, c, a) for d, c, a in ledger.db.execute(
            "SELECT debit, credit, amount FROM transfers WHERE ref = ? ORDER BY id", (ref,))]

    fees = refs("fees:2026-01")
    area = {"A-B01-01-01": 70, "A-B01-01-02": 130, "A-B01-02-01": 70, "A-B01-02-02": 130}
    assert sorted(fees) == sorted(
        [(f"resident:{a}", "revenue:fee:property fee", round_half_up(180 * m2)) for a, m2 in area.items()]
        + [(f"receivable:{a}", "revenue:fee:key deposit", 5000) for a in area])
    corridor = refs("apportion:2026-01")
    shares = {d.split(":", 1)[1]: amount for d, c, amount in corridor if c == "revenue:fee:corridor"}
    total = round_half_up(sums["corridor"] * 60)
    assert total > 0 and sum(shares.values()) == total
    for account, m2 in area.items():  # by floor area, none more than a fen from its exact share
        assert abs(shares[account] - total * m2 / 400) < 1
    loss = {d.split(":", 1)[1]: amount for d, c, amount in corridor if c == "revenue:fee:line loss"}
    assert sums["gap"] > 0 and sum(loss.values()) == round_half_up(sums["gap"] * 50)
    use = {a: sums[a] for a in area}
    for account in area:
        assert abs(loss[account] - sum(loss.values()) * use[account] / sum(use.values())) < 1
    assert all(d.startswith("receivable:") for d, c, _ in corridor if c == "revenue:fee:line loss")
    bill = refs("bill:2026-01")  # the postpaid account's January usage at 0.5 yuan/kWh, moved to its receivable
    assert len(bill) == 1 and bill[0][:2] == (f"receivable:{POSTPAID}", f"resident:{POSTPAID}")
    assert abs(bill[0][2] - sums[POSTPAID] * 50) <= 1
    owed = dict(ledger.arrears())
    assert owed[POSTPAID] == bill[0][2] + 5000 + loss[POSTPAID]
    p.month_close.close("2026-01", p.now())  # closing again charges nothing twice
    assert len(refs("fees:2026-01")) == 8 and len(refs("bill:2026-01")) == 1
    ledger.check()
    # over the API: the arrears list, then the shop pays its bills (once, whatever the retries)
    asyncio.run(_pay_over_http(p, owed[POSTPAID]))
    ledger.check()
    p.close()


async def _pay_over_http(p: Platform, owed: int) -> None:
    key = p.auth.create_key("finance", Role.parse("operator"))
    transport = httpx.ASGITransport(app=create_app(p))
    async with httpx.AsyncClient(transport=transport, base_url="http://metertwin",
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        listed = (await client.get("/api/arrears")).json()
        assert {r["account"]: r["owed_fen"] for r in listed}[POSTPAID] == owed
        body = {"payment_id": "bank-1", "amount_fen": owed}
        for _ in range(2):
            paid = await client.post(f"/api/accounts/{POSTPAID}/bill-payments", json=body)
            assert paid.status_code == 201 and paid.json()["owed_fen"] == 0
        assert POSTPAID not in {r["account"] for r in (await client.get("/api/arrears")).json()}
        other = await client.post(f"/api/accounts/{POSTPAID}/bill-payments", json={**body, "amount_fen": 1})
        assert other.status_code == 409 and "bank-1" in other.json()["detail"]


def test_a_bad_apportionment_names_the_entry_and_field(tmp_path):
    bad = SCENARIO.replace('source = "B01.sc-corridor"', 'source = "B01.sc-nothing"')
    with pytest.raises(ScenarioError, match=r"apportion\[0\]\.source.*no twin 'B01.sc-nothing'") as err:
        load_scenario_text(bad)
    assert err.value.line == bad.splitlines().index('source = "B01.sc-nothing"') + 1
    with pytest.raises(ScenarioError, match=r"fee_items\[1\]\.charge"):
        load_scenario_text(SCENARIO.replace('charge = "bill"', 'charge = "card"', 1))


def test_postpaid_rooms_make_postpaid_accounts():
    site = load_scenario_text(SCENARIO).site
    assert {a.id: a.prepaid for a in site.accounts} == {"A-B01-01-01": True, "A-B01-01-02": True,
                                                       "A-B01-02-01": True, POSTPAID: False}
