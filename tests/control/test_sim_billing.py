"""A simulated year of 1,000 prepaid meters starting at zero credit, billed by the
platform: cut-offs happen, never in protected hours or for keep-supply accounts;
emergency credit is used and recovered at the next top-up; arrears clear the access flag
and payment sets it again."""

from __future__ import annotations

from datetime import datetime

from control.sim_billing import SimBilling
from devices.sim.world import World
from scenarios.loader import load_scenario_text

YEAR = """\
[site]
id = "Y1"

[tariffs.power]
kind = "tiered"
period = "month"
thresholds_kwh = [180, 350]
prices_yuan = [0.4983, 0.5483, 0.7983]

[tariffs.water]
kind = "flat"
utility = "water"
price_yuan = 4.0

[[buildings]]
ids = "B01..B10"
floors = 25
rooms_per_floor = 4
electric = { tariff = "power" }
water = { tariff = "water", valve = true }

[residents]
billing = "platform"
opening_yuan = [0, 0]
topup_below_yuan = [0, 20]
topup_delay_hours = 30
topup_yuan = [50, 100, 200]
"""


def test_a_year_of_a_thousand_meters_at_zero_credit(tmp_path, capsys):
    """The must-show figures of prepaid billing over a simulated year (printed)."""
    scenario = load_scenario_text(YEAR)
    world = World(scenario, days=365, step_s=900, start=datetime(2026, 1, 1), seed=7)
    accounts = [a.id for a in scenario.site.accounts]
    assert len([t for t in scenario.site.twins if t.id.endswith(".em")]) == 1000
    keep = {a: world.start_utc + 400 * 86400 for a in accounts[:5]}  # on the keep-supply list all year
    billed = SimBilling(world, tmp_path / "ledger.sqlite", keep_supply=keep)
    world.run(lambda day: None)
    billed.close()
    f = billed.figures
    assert f.cutoffs > 0 and f.restores > 0 and f.emergency_uses > 0
    assert f.cutoffs_protected == 0 and f.cutoffs_keep_supply == 0
    assert f.emergency_topups > 0 and f.emergency_recovered == f.emergency_topups
    assert f.access_cleared > 0 and f.access_restored > 0 and f.arrears_without_flag_cleared == 0
    cut_events = [e for e in world.events if e.source == "policy" and e.value in ("open", "closed")
                  and e.event == "relay"]
    assert {e.twin.split(".")[0] for e in cut_events}.isdisjoint({a[2:] for a in keep})
    assert f.revenue_fen["electric"] > 0 and f.topups > 0
    with capsys.disabled():
        print(f"\nprepaid year, 1,000 meters at zero credit: {f.cutoffs} cut-offs, {f.restores} restores, "
              f"0 in protected hours, 0 on keep-supply; emergency credit used {f.emergency_uses} times, "
              f"recovered at {f.emergency_recovered}/{f.emergency_topups} top-ups; access cleared "
              f"{f.access_cleared}, set again {f.access_restored}; {f.topups} top-ups "
              f"({f.topup_fen / 100:,.0f} yuan); revenue {f.revenue_fen['electric'] / 100:,.0f} yuan electric, "
              f"{f.revenue_fen['water'] / 100:,.0f} yuan water")
