"""Meter billing in the live platform: residents pay the platform, credit is pushed to the
meter, the platform reconciles its own figure against the meter's."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from control.commands import CommandError, CommandState
from control.runtime import Platform
from twin.kernels.billing import reconcile

SCENARIO = """\
[site]
id = "M1"

[tariffs.flat]
kind = "flat"
price_yuan = 2.0

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 3
electric = { tariff = "flat" }

[[inject]]
twin = "B01-01-01.em"
kind = "offline"
start = "1d"
end = "2d"

[residents]
billing = "meter"
opening_yuan = [3, 6]
topup_below_yuan = [2, 4]
topup_delay_hours = 0.5
topup_yuan = [10, 20]
"""
STALE = "B01-02-03.em"  # its price table says 3 yuan, the site's tariff 2


def run_days(platform: Platform, days: float) -> None:
    end = platform.world.now_s + days * 86400
    while platform.world.now_s < end:
        platform._tick(min(platform.world.now_s + 900, end))


@pytest.fixture
def platform(tmp_path):
    path = tmp_path / "meter.toml"
    path.write_text(SCENARIO)
    p = Platform(str(path), tmp_path / "data", start=datetime(2026, 3, 2))
    meters = p.world.prepaid
    meters.price_fen[meters.row_of[STALE]] *= 1.5
    yield p
    p.close()


def test_top_ups_are_pushed_confirmed_and_reconciled(platform):
    """Every resident payment lands in the ledger once and reaches the meter once (its
    purchase total equals the platform's target); a push to an offline meter fails, is
    resent when it is back, and confirms; the meter with a stale price table raises a
    mismatch alarm with both figures, the others stay quiet."""
    run_days(platform, 4)
    mb = platform.meter_billing
    assert mb is not None
    pushes = [c for c in platform.commands.recent(1000) if c.action == "credit_push"]
    assert len(pushes) > 10
    assert all(c.state in (CommandState.CONFIRMED, CommandState.EXPIRED, CommandState.FAILED) or c.open
               for c in pushes)
    state = platform.world.state
    for twin, target in mb.purchased.items():  # every meter holds what was paid for it, once
        assert int(state.twin(twin).reported["purchased_fen"]) == target, twin
        paid = sum(f for t, f in platform.ledger.db.execute(
            "SELECT t.ref, p.amount FROM payments p JOIN transfers t ON t.id = p.transfer WHERE p.account = ?",
            (mb.account_of[twin],)))
        assert paid == target, twin
    offline = [c for c in pushes if c.twin == "B01-01-01.em"]
    assert any(c.state is CommandState.FAILED for c in offline), "a push to the offline meter should fail"
    assert any(c.requested_by == "platform: resend" for c in offline)
    assert offline[0].state is CommandState.CONFIRMED  # newest first: the last push arrived
    alarms = {a.twin: a for a in platform.alarms.open_alarms() if a.kind == "meter_balance_mismatch"}
    assert set(alarms) == {STALE}
    evidence = alarms[STALE].evidence
    assert evidence["gap_fen"] < 0 and evidence["meter_fen"] - evidence["expected_fen"] == evidence["gap_fen"]


def test_a_credit_push_needs_a_value(platform):
    """credit_push carries the new purchase total; relay actions carry none."""
    with pytest.raises(CommandError, match="takes a value"):
        platform.commands.create("B01-01-02.em", "credit_push", by="t", source="operator", now=platform.now())
    with pytest.raises(CommandError, match="takes no value"):
        platform.commands.create("B01-01-02.em", "relay_open", by="t", source="operator", now=platform.now(), value=1)


def test_reconcile_kernel_matches_numpy():
    """The Numba kernel against the formula in plain numpy, NaN rows never over."""
    rng = np.random.default_rng(4)
    n = 1000
    purchased = rng.integers(0, 100_000, n).astype(np.float64)
    charged = rng.uniform(0, 50_000, n)
    credit = np.floor(purchased - charged + rng.normal(0, 800, n))
    charged[::97] = np.nan
    expected, gap, over = np.empty(n), np.empty(n), np.zeros(n, dtype=np.bool_)
    reconcile(purchased, credit, charged, 500.0, 0.02, expected, gap, over)
    ok = ~np.isnan(charged)
    np.testing.assert_allclose(expected[ok], (purchased - charged)[ok])
    np.testing.assert_allclose(gap[ok], (credit - (purchased - charged))[ok])
    np.testing.assert_array_equal(over[ok], (np.abs(gap) > 500 + 0.02 * np.abs(charged))[ok])
    assert not over[~ok].any() and 0 < over.sum() < n


def test_a_restart_neither_loses_nor_repeats_a_push(tmp_path):
    """After a restart (the world replayed from its recorded writes) every meter holds
    exactly what was paid for it, and the ledger holds every payment once."""
    path = tmp_path / "meter.toml"
    path.write_text(SCENARIO)
    first = Platform(str(path), tmp_path / "data", start=datetime(2026, 3, 2))
    run_days(first, 2.3)
    first.save()
    first.close()
    again = Platform(str(path), tmp_path / "data")
    run_days(again, 1)
    mb = again.meter_billing
    assert mb is not None and len(mb.purchased) == 6
    for twin, target in mb.purchased.items():
        assert int(again.world.state.twin(twin).reported["purchased_fen"]) == target, twin
        paid = again.ledger.db.execute("SELECT SUM(amount) FROM payments WHERE account = ?",
                                       (mb.account_of[twin],)).fetchone()[0]
        assert paid == target, twin
    again.close()
