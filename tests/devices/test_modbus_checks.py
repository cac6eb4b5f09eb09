"""The collector's counter checks on a register that moves in steps: the simulated world
adds a whole interval's energy at once, a whole-kWh register adds one unit at a time."""

from __future__ import annotations

from devices.modbus.checks import Checks
from devices.modbus.maps import load_map

INTERVAL_S = 900.0
POLL_S = 48.0  # platform seconds between polls (2 wall seconds at 24x)


def energy_point():
    """The shared-circuit meter's energy counter (30 kW at most, 0.01 kWh a step)."""
    return next(p for p in load_map("metertwin-sc1").points if p.name == "energy_total")


def test_a_step_after_many_unchanged_polls_is_measured_from_the_first_of_them():
    """A garage circuit drawing 4 kW reads the same for a whole interval, then one kWh more:
    the kWh took the whole interval, not the last poll's 48 s, and is not refused."""
    point, checks = energy_point(), Checks()
    polls = [i * POLL_S for i in range(int(INTERVAL_S // POLL_S) + 1)]
    assert all(checks.problem("B07.sc-garage", point, 250.0, ts) is None for ts in polls)
    assert checks.problem("B07.sc-garage", point, 251.0, polls[-1] + POLL_S) is None
    assert checks.reference("B07.sc-garage", point.name).ts == polls[-1] + POLL_S


def test_a_step_beyond_the_rate_since_the_value_was_first_seen_is_still_refused():
    """The allowance grows with the time since the value was first read, and no more: a
    step the rating cannot cover over that time is refused, and keeps the old reference."""
    point, checks = energy_point(), Checks(grace_s=60.0)
    assert checks.problem("B07.sc-garage", point, 250.0, 0.0) is None
    assert checks.problem("B07.sc-garage", point, 250.0, INTERVAL_S) is None
    hours = (INTERVAL_S + POLL_S + 60.0) / 3600
    too_far = 250.0 + point.max_rate_per_h * hours + 1.0
    assert checks.problem("B07.sc-garage", point, too_far, INTERVAL_S + POLL_S) is not None
    assert checks.reference("B07.sc-garage", point.name).ts == 0.0
