"""Live injections: a fault or theft started on a running world, as the dashboard's
simulation page does."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from devices.sim.world import World


def _live(scenario_factory) -> tuple[World, list]:
    world = World(scenario_factory(buildings=1), days=2, live=True, start=datetime(2026, 3, 2))
    days: list = []
    world.begin(days.append)
    return world, days


def test_live_offline_silences_the_meter_until_its_window_ends(scenario_factory):
    """An offline fault injected live takes the meter offline now, hides its readings
    for its window, and lands in the ground truth; the meter comes back after."""
    world, _ = _live(scenario_factory)
    world.advance_to(6 * 3600 + 120)
    twin = "B01-01-01.em"
    world.write(twin, "inject:offline", 3 * 3600, "operator:alice")
    live = [i for i in world.injections if i.extra.get("live")]
    assert [(i.twin, i.kind) for i in live] == [(twin, "offline")]
    assert live[0].start_step * world.step_s == 6 * 3600  # the current interval's start
    world.advance_to(7 * 3600)
    assert world.state.twin(twin).reported["online"] == 0
    # silent: its last report is from before the window, while its neighbours report every step
    assert world.state.twin(twin).stamp("reported") <= world.start_utc + 6 * 3600 + 120
    assert world.state.twin("B01-01-02.em").stamp("reported") == world.start_utc + 7 * 3600
    col = world.column_of[twin]
    assert np.isnan(world.reported_day[24:28, col]).all()
    world.advance_to(10 * 3600)
    assert world.state.twin(twin).reported["online"] == 1
    assert any(r["twin"] == twin and r["kind"] == "offline" for r in world.ground_truth())
    assert any(e.twin == twin and e.event == "inject_start" and e.source == "operator:alice" for e in world.events)


def test_live_leak_adds_flow_and_replays_the_same(scenario_factory):
    """A leak injected live raises the meter's flow from the current interval; a second
    world given the same write at the same time reads the same, bit for bit."""
    readings = []
    for _ in range(2):
        world, _ = _live(scenario_factory)
        world.advance_to(2 * 3600)
        world.write("B01-01-01.wm", "inject:leak", 6 * 3600, "operator")
        world.advance_to(5 * 3600)
        readings.append(world.reported_day[:20].copy())
    col = world.column_of["B01-01-01.wm"]
    assert readings[0][8:18, col].min() >= 0.015 * 0.25 - 1e-6  # 15 l/h over 15 minutes, every interval
    np.testing.assert_array_equal(readings[0], readings[1])


def test_live_injection_refuses_what_does_not_apply(scenario_factory):
    """A kind that does not apply to the twin, an unknown twin or a zero duration is
    refused with a reason, and nothing is injected."""
    world, _ = _live(scenario_factory)
    world.advance_to(3600)
    with pytest.raises(ValueError, match="leak cannot be injected into B01-01-01.em"):
        world.inject("B01-01-01.em", "leak", 3600)
    with pytest.raises(ValueError, match="no twin"):
        world.inject("B09-01-01.em", "h1", 3600)
    with pytest.raises(ValueError, match="duration"):
        world.inject("B01-01-01.em", "h1", 0)
    assert not [i for i in world.injections if i.extra.get("live")]
