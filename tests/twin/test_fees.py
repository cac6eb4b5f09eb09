"""Fee items, bills and the arrears list, and apportionment (公摊) exact to the fen."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twin.fees import FeeError, apportion, fees_due, parse_fee_items
from twin.ledger import Ledger
from twin.model import Account, Building, Floor, Room, Site


def site() -> Site:
    s = Site("F1")
    b = Building("B01")
    floor = Floor(1, [Room("B01-01-01", "B01", 1, 89.5, account="A-1"), Room("B01-01-02", "B01", 1, 120.0,
                                                                               account="A-2"),
                      Room("B01-01-03", "B01", 1, 60.0, account="A-2")])
    b.floors.append(floor)
    s.buildings.append(b)
    s.accounts = [Account("A-1", rooms=["B01-01-01"]), Account("A-2", rooms=["B01-01-02", "B01-01-03"])]
    return s


def test_fee_items_by_area_fixed_and_once():
    """Property fee 1.8 yuan/m2: 89.5 m2 -> 161.10 yuan; two flats of 120 + 60 m2 under one
    account -> 324.00; a fixed 300 yuan parking fee monthly; a one-off only in the first month."""
    items = parse_fee_items([
        {"name": "property", "basis": "area", "yuan_per_m2_month": 1.8},
        {"name": "parking", "basis": "fixed", "yuan_month": 300, "charge": "bill"},
        {"name": "deposit", "basis": "fixed", "period": "once", "yuan": 500},
    ])
    due = {(a, i.name): fen for a, i, fen in fees_due(site(), items)}
    assert due == {("A-1", "property"): 16110, ("A-2", "property"): 32400, ("A-1", "parking"): 30000,
                   ("A-2", "parking"): 30000}
    first = {(a, i.name) for a, i, _ in fees_due(site(), items, first_month=True)}
    assert ("A-1", "deposit") in first
    with pytest.raises(FeeError, match=r"fee_items\[0\].yuan_per_m2_month"):
        parse_fee_items([{"name": "x", "basis": "area", "yuan_month": 3}])


def test_billed_fees_make_arrears_until_paid(tmp_path):
    """A fee charged as a bill leaves the prepaid balance alone and puts the account on
    the arrears list until a payment (idempotent) clears it."""
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.top_up("p", "A-1", 1000, at=1.0)
    ledger.charge_fee("A-1", "parking", 30000, at=2.0, billed=True)
    assert ledger.balance("A-1") == 1000 and ledger.arrears() == [("A-1", 30000)]
    ledger.pay_bill("bank-1", "A-1", 30000, at=3.0)
    ledger.pay_bill("bank-1", "A-1", 30000, at=4.0)  # a replay pays once
    assert ledger.arrears() == []
    ledger.check()


@given(total=st.integers(0, 10**9), weights=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1,
                                                       max_size=40).filter(lambda w: sum(w) > 0))
def test_apportionment_adds_up_exactly(total, weights):
    """Shares add up to the total to the fen, and each is within one fen of its exact share."""
    named = {f"A-{i}": w for i, w in enumerate(weights)}
    shares = apportion(total, named)
    assert sum(shares.values()) == total
    whole = sum(weights)
    for account, w in named.items():
        assert abs(shares[account] - total * w / whole) <= 1.0 + 1e-6 * total / max(whole, 1)


def test_apportionment_worked_example():
    """100 fen by floor area 89, 89, 120: exact 29.87, 29.87, 40.27 -> 30, 30, 40 (the
    leftover fen go to the largest remainders, ties to the first)."""
    assert apportion(100, {"A": 89, "B": 89, "C": 120}) == {"A": 30, "B": 30, "C": 40}
    with pytest.raises(ValueError, match="all zero"):
        apportion(5, {"A": 0.0})
