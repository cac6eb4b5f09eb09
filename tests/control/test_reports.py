"""Reports: income per site-local period and orders, from the ledger."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from zoneinfo import ZoneInfo

from control.reports import income, orders, to_csv
from twin.ledger import Ledger

TZ = "Asia/Shanghai"


def at(*args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo(TZ)).timestamp()


def test_income_by_local_day_and_month_and_orders(tmp_path):
    """A top-up at 23:30 and one at 00:30 local fall on two days (though the same UTC
    day); charges count as revenue by utility, fees by item; refunds apart; orders list
    top-ups, refunds and fees newest first, and filter by account."""
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.top_up("p1", "A-1", 10000, at=at(2026, 3, 1, 23, 30))
    ledger.top_up("p2", "A-2", 5000, at=at(2026, 3, 2, 0, 30))
    ledger.post_charges({"A-1": 1234.4, "A-2": 99.6}, "electric", at=at(2026, 3, 2, 1, 0))
    ledger.charge_fee("A-1", "property", 16110, at=at(2026, 3, 2, 2, 0))
    ledger.refund("A-2", 1000, at=at(2026, 3, 2, 3, 0))
    days = {row["period"]: row for row in income(ledger, TZ, "day")}
    assert days["2026-03-01"]["paid_in_fen"] == 10000
    assert days["2026-03-02"]["paid_in_fen"] == 5000
    assert days["2026-03-02"]["revenue_electric_fen"] == 1234 + 100
    assert days["2026-03-02"]["revenue_fee_property_fen"] == 16110
    assert days["2026-03-02"]["refunded_fen"] == 1000
    month = income(ledger, TZ, "month")
    assert [r["period"] for r in month] == ["2026-03"] and month[0]["paid_in_fen"] == 15000
    listed = orders(ledger, TZ)
    assert [o["kind"] for o in listed] == ["refund", "fee", "topup", "topup"]
    assert [o["account"] for o in orders(ledger, TZ, account="A-1")] == ["A-1", "A-1"]
    table = list(csv.DictReader(io.StringIO(to_csv(income(ledger, TZ, "day")))))
    assert table[0]["period"] == "2026-03-01" and table[0]["refunded_fen"] == "0"
