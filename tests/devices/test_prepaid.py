"""Simulated prepaid meters (meter billing) and residents' top-ups."""

from __future__ import annotations

import numpy as np
import pytest

from devices.sim.prepaid import DEFAULT_PRICE_FEN, meter_price_fen
from devices.sim.world import World
from scenarios.schema import Residents

POOR = Residents(opening_yuan=(1.0, 3.0), topup_below_yuan=(0.5, 1.0), topup_delay_hours=20.0,
                 topup_yuan=(10.0, 20.0))


def test_meter_price_comes_from_the_tariff_table():
    """A meter deducts at price_yuan, else the first tier price, else the mean band price."""
    assert meter_price_fen({"price_yuan": 0.6}) == 60.0
    assert meter_price_fen({"prices_yuan": [0.4983, 0.5483]}) == pytest.approx(49.83)
    assert meter_price_fen({"bands": [{"price_yuan": 1.0}, {"price_yuan": 0.5}]}) == 75.0
    assert meter_price_fen(None) == DEFAULT_PRICE_FEN


def test_credit_runs_out_trips_the_relay_and_a_topup_restores_it(scenario_factory):
    """A meter deducts what it measures; at zero credit it trips its relay and the flat
    draws nothing; the resident's top-up closes it again; every step is an event."""
    world = World(scenario_factory(residents=POOR, buildings=1), seed=4, days=4)
    days = []
    world.run(days.append)
    true = np.concatenate([d.true for d in days])
    events = world.events
    trips = [e for e in events if e.event == "relay" and e.value == "open"]
    topups = [e for e in events if e.event == "topup"]
    assert trips and topups
    first = trips[0]
    col = world.column_of[first.twin]
    back = next((e for e in events if e.twin == first.twin and e.event == "relay" and e.value == "closed"
                 and e.utc > first.utc), None)
    a = (first.utc - world.start_utc) // world.interval_s
    b = (back.utc - world.start_utc) // world.interval_s if back else true.shape[0] - 1
    assert np.all(true[a + 1:b, col] == 0)  # cut off: nothing drawn
    assert any(e.utc <= (back.utc if back else 1 << 62) and e.twin == first.twin for e in topups)
    meters = world.prepaid
    assert meters is not None
    row = meters.ids.index(first.twin)
    spent = true[:, col].sum() * meters.price_fen[row]
    opening = meters.credit_fen[row] + spent - sum(int(e.value) for e in topups if e.twin == first.twin)
    assert 100 <= opening <= 300  # credit = opening - spent + top-ups, to the fen
    view = world.state.twin(first.twin)
    assert view.reported["credit_fen"] == int(np.floor(meters.credit_fen[row]))


def test_residents_are_reproducible(scenario_factory):
    """Same seed, same top-ups at the same times."""
    scenario = scenario_factory(residents=POOR, buildings=1)
    runs = []
    for _ in range(2):
        world = World(scenario, seed=9, days=2)
        world.run(lambda day: None)
        runs.append([(e.utc, e.twin, e.event, e.value) for e in world.events])
    assert runs[0] == runs[1] and runs[0]
