"""Live billing: per-interval accrual equals billing the same readings in one go; ticks
post to the ledger; the available balance is posted minus accrued."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from control.billing import LiveBilling
from devices.sim.world import World
from scenarios.loader import load_scenario_text
from twin.kernels.billing import bill_fleet
from twin.ledger import Ledger
from twin.tariffs import price_tables

SCENARIO = """\
[site]
id = "LB"

[tariffs.power]
kind = "tiered"
period = "month"
thresholds_kwh = [8]
prices_yuan = [0.5, 0.8]

[tariffs.water]
kind = "flat"
utility = "water"
price_yuan = 4.0

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
electric = { tariff = "power" }
water = { tariff = "water" }
"""


def test_interval_accrual_equals_billing_the_whole_run(tmp_path):
    """Charging each interval as it closes, with tier counters carried and reset at the
    month's start, accrues what billing the whole run at once charges; a tick posts it."""
    scenario = load_scenario_text(SCENARIO)
    world = World(scenario, days=3, live=True, start=datetime(2026, 1, 30))
    ledger = Ledger(tmp_path / "ledger.sqlite")
    billing = LiveBilling(scenario, world.column_of, ledger, world.interval_s)
    rows: list[np.ndarray] = []
    starts: list[int] = []

    def on_interval(start: int, reported: np.ndarray) -> None:
        billing.on_interval(start, reported)
        rows.append(reported.copy())
        starts.append(start)

    world.on_interval = on_interval
    world.run(lambda day: None)
    matrix = np.stack(rows)[:, billing.columns].T  # [meters, intervals]
    tables = price_tables(billing.tariffs, starts[0], len(starts), world.interval_s, "Asia/Shanghai")
    whole = bill_fleet(matrix, billing.tariff_of, np.zeros(len(billing.meters)), tables)
    expected: dict[str, float] = {}
    for meter, fen in zip(billing.meters, whole["charge_fen"], strict=True):
        expected[meter.account] = expected.get(meter.account, 0.0) + fen
    accrued = {a: sum(v for (acc, _), v in billing.accrued.items() if acc == a) for a in billing.accounts}
    for account, fen in expected.items():
        assert accrued[account] == pytest.approx(fen, rel=1e-9)
    assert whole["tier_units"][:, 1].sum() > 0  # the run crossed the 8 kWh tier somewhere
    ledger.top_up("opening-1", "A-B01-01-01", 10_000, at=0.0)
    before = billing.available_fen("A-B01-01-01")
    assert before == 10_000 - int(np.floor(accrued["A-B01-01-01"] + 0.5))
    assert billing.post(now=1.0) == 2 * len(billing.accounts)
    assert abs(billing.available_fen("A-B01-01-01") - before) <= 1
    ledger.check()
