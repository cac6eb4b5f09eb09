"""The simulated world: accounting, injections, commands and determinism."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.sim.injections import PHYSICAL
from devices.sim.world import DayResult, World
from scenarios.schema import INJECTION_PARAMS, Injection, RandomInjections, When

ALL_KINDS = tuple(INJECTION_PARAMS)


def run(world: World) -> list[DayResult]:
    days: list[DayResult] = []
    world.run(days.append)
    return days


def stack(days: list[DayResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    true = np.concatenate([d.true for d in days])
    reported = np.concatenate([d.reported for d in days])
    loss = np.concatenate([d.loss for d in days], axis=1)
    return true, reported, loss


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32), kinds=st.lists(st.sampled_from(ALL_KINDS), min_size=1, max_size=5))
def test_master_reads_feeders_truth_plus_losses(scenario_factory, seed, kinds):
    """Each master meter's reading equals the true consumption of everything it feeds
    (sub-meters, elevators, shared circuits) plus its losses, whatever is injected:
    bypassed load, leaks and stuck valves included."""
    scenario = scenario_factory(randoms=[RandomInjections(tuple(kinds), per_kind=2, first_day=0, last_day=1)])
    world = World(scenario, seed=seed, days=3)
    true, reported, loss = stack(run(world))
    for j, (col, feeds) in enumerate(zip(world.cols["m"], world.feeders, strict=True)):
        expected = true[:, feeds].sum(axis=1) + loss[j]
        np.testing.assert_allclose(reported[:, col], expected, rtol=1e-6)
        assert loss[j].min() >= 0
    assert world.fixed_loss.max() > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), kinds=st.lists(st.sampled_from(ALL_KINDS), min_size=1, max_size=6),
       first=st.integers(0, 2), length=st.floats(0.2, 3.0))
def test_reported_differs_from_truth_only_by_what_ground_truth_hides(scenario_factory, seed, kinds,
                                                                    first, length):
    """Each sub-meter's reading differs from its true consumption by exactly what the
    ground truth says was hidden inside the injection's window, and by nothing elsewhere."""
    randoms = [RandomInjections(tuple(kinds), per_kind=1, first_day=first, last_day=first,
                                min_days=length, max_days=length)]
    world = World(scenario_factory(randoms=randoms, buildings=1), seed=seed, days=4)
    true, reported, _ = stack(run(world))
    inside = np.zeros(true.shape, dtype=bool)
    spi = world.spi
    for inj in world.injections:
        a, b = inj.start_step // spi, min(inj.end_step // spi, true.shape[0])
        inside[a:b, inj.column] = True
        if inj.kind in PHYSICAL:
            continue
        hidden = true[a:b, inj.column].sum() - np.nansum(reported[a:b, inj.column].astype(np.float64))
        assert hidden == pytest.approx(inj.hidden, abs=1e-6), inj.kind
    subs = np.ones(true.shape[1], dtype=bool)
    subs[world.cols["m"]] = False
    outside = ~inside & subs[None, :]
    np.testing.assert_array_equal(reported[outside], true.astype(np.float32)[outside])
    assert not np.isnan(reported[outside]).any()


def test_theft_definitions_hold_on_one_day(scenario_factory):
    """h1 scales by one factor in [0.1, 0.8]; h2 zeroes a part of the day; h3 scales each
    reading by its own factor; h4 is factors times the day's mean; h5 the day's mean;
    h6 the day reversed; bypass hides its share."""
    injections = [Injection(f"B01-01-0{i + 1}.em", kind, When(offset=timedelta(days=1)),
                            When(offset=timedelta(days=2)))
                  for i, kind in enumerate(("h1", "h2", "h3", "h4"))]
    injections += [Injection(f"B01-02-0{i + 1}.em", kind, When(offset=timedelta(days=1)),
                             When(offset=timedelta(days=2)))
                   for i, kind in enumerate(("h5", "h6", "bypass"))]
    world = World(scenario_factory(injections=injections, buildings=1), days=3)
    days = run(world)
    day = days[1]
    by_kind = {inj.kind: inj for inj in world.injections}
    col = {k: inj.column for k, inj in by_kind.items()}
    t, r = day.true, day.reported.astype(np.float64)
    f = by_kind["h1"].params["factor"]
    assert 0.1 <= f <= 0.8
    np.testing.assert_allclose(r[:, col["h1"]], t[:, col["h1"]] * f, rtol=1e-6)
    zero = r[:, col["h2"]] == 0
    assert 0 < zero.sum() < len(zero)
    np.testing.assert_allclose(r[~zero, col["h2"]], t[~zero, col["h2"]], rtol=1e-6)
    ratio = r[:, col["h3"]] / t[:, col["h3"]]
    assert ratio.min() >= 0.1 - 1e-6 and ratio.max() <= 0.8 + 1e-6 and ratio.std() > 0.05
    alpha = r[:, col["h4"]] / t[:, col["h4"]].mean()
    assert alpha.min() >= 0.1 - 1e-6 and alpha.max() <= 0.8 + 1e-6
    np.testing.assert_allclose(r[:, col["h5"]], t[:, col["h5"]].mean(), rtol=1e-6)
    np.testing.assert_allclose(r[:, col["h6"]], t[::-1, col["h6"]], rtol=1e-6)
    share = by_kind["bypass"].params["share"]
    np.testing.assert_allclose(r[:, col["bypass"]], t[:, col["bypass"]] * (1 - share), rtol=1e-6)
    # the day before is untouched
    np.testing.assert_array_equal(days[0].reported, days[0].true.astype(np.float32))


def test_open_relay_stops_the_load(scenario_factory):
    """An open relay stops consumption from the next step; closing it restores it."""
    world = World(scenario_factory(buildings=1), days=2)
    twin = "B01-02-03.em"
    world.at(timedelta(hours=12), lambda: world.set_relay(twin, False))
    world.at(timedelta(hours=30), lambda: world.set_relay(twin, True))
    true, _, _ = stack(run(world))
    col = world.column_of[twin]
    per_hour = world.interval_s // 3600 or 1
    assert true[: 12 * 4, col].min() > 0
    assert np.all(true[12 * 4: 30 * 4, col] == 0)
    assert true[30 * 4:, col].sum() > 0
    assert world.state.twin(twin).reported["relay_closed"] == 1
    assert per_hour >= 0


def test_closed_valve_stops_flow_unless_stuck(scenario_factory):
    """A closed valve stops its meter's flow (leaks included); a valve stuck open lets
    water through while reporting closed."""
    leak = Injection("B01-01-01.wm", "leak", When(offset=timedelta(0)), None, {"flow_lph": 20.0})
    stuck = Injection("B01-01-02.wm", "valve_stuck_open", When(offset=timedelta(hours=6)),
                      When(offset=timedelta(days=2)))
    world = World(scenario_factory(injections=[leak, stuck], buildings=1), days=2)
    world.at(timedelta(hours=6), lambda: world.set_valve("B01-01-01.vl", False))
    true, _, _ = stack(run(world))
    leaking, jammed = world.column_of["B01-01-01.wm"], world.column_of["B01-01-02.wm"]
    assert true[:24, leaking].min() >= 0.02 * 0.25 - 1e-9  # the leak flows every interval
    assert np.all(true[24:, leaking] == 0)
    assert true[24:, jammed].sum() > 0
    assert world.state.twin("B01-01-02.vl").reported["open"] == 0


def test_leak_never_lets_the_night_fall_to_zero(scenario_factory):
    """A leaking flat's flow stays above zero through the night; healthy flats have
    nights with zero-flow intervals."""
    leak = Injection("B01-01-01.wm", "leak", When(offset=timedelta(0)), None, {"flow_lph": 10.0})
    world = World(scenario_factory(injections=[leak], buildings=1), days=2)
    days = run(world)
    night = days[1].interval_minute < 5 * 60
    col = world.column_of["B01-01-01.wm"]
    assert days[1].true[night, col].min() > 0
    healthy = [world.column_of[t.id] for t in world.groups["w"] if t.id != "B01-01-01.wm"]
    assert (days[1].true[np.ix_(night, healthy)] == 0).mean() > 0.5


def test_same_seed_same_world_other_seed_other_world(scenario_factory):
    """Same seed gives the same readings bit for bit; another seed gives others."""
    scenario = scenario_factory(randoms=[RandomInjections(("h3", "leak"), per_kind=1, first_day=0,
                                                          last_day=0)], buildings=1)
    a = stack(run(World(scenario, seed=11, days=1)))[1]
    b = stack(run(World(scenario, seed=11, days=1)))[1]
    c = stack(run(World(scenario, seed=12, days=1)))[1]
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_fractional_days_and_intervals(scenario_factory):
    """A run of 1.5 days gives 144 fifteen-minute intervals, the last day cut short."""
    world = World(scenario_factory(buildings=1), days=1.5, start=datetime(2026, 3, 2))
    days = run(world)
    assert [d.reported.shape[0] for d in days] == [96, 48]
    assert days[1].first_utc - days[0].first_utc == 86400


def test_bad_inputs_are_refused_with_a_reason(scenario_factory):
    """A theft on a water meter, a step that does not divide the interval and an
    unaligned start are refused with a message naming the problem."""
    bad = Injection("B01-01-01.wm", "h1", When(offset=timedelta(0)))
    with pytest.raises(ValueError, match="h1 cannot be injected into B01-01-01.wm"):
        World(scenario_factory(injections=[bad], buildings=1))
    with pytest.raises(ValueError, match="must divide"):
        World(scenario_factory(buildings=1), step_s=7 * 60)
    with pytest.raises(ValueError, match="interval boundary"):
        World(scenario_factory(buildings=1), start=datetime(2026, 1, 1, 0, 7))


@pytest.mark.parametrize("live", [False, True])
def test_twin_registers_add_up_what_was_reported(scenario_factory, live):
    """Whether twins are fed every interval (live) or once a day, each register ends at
    the sum of everything its meter reported, whole-day thefts and outages included."""
    randoms = [RandomInjections(("h4", "h5", "h6", "offline", "jump", "h1"), per_kind=1, first_day=0,
                                last_day=1, min_days=0.5, max_days=1.5)]
    world = World(scenario_factory(randoms=randoms, buildings=1), seed=3, days=3, live=live)
    _, reported, _ = stack(run(world))
    sums = np.nansum(reported.astype(np.float64), axis=0)
    for kind, register in (("electric_meter", "energy_kwh"), ("water_meter", "volume_m3")):
        table = next(t for k, t in world.state.tables.items() if k.value == kind)
        cols = [world.column_of[i] for i in table.ids]
        np.testing.assert_allclose(table.faces["reported"][register], sums[cols], rtol=1e-9, atol=1e-9)


def test_live_world_moves_a_step_at_a_time_and_a_trip_shows_at_once(scenario_factory):
    """A live world advances to any simulated time one step at a time; a relay opened
    mid-step stops the load from the next step, and the meter reports zero power."""
    world = World(scenario_factory(buildings=1), days=1, live=True, start=datetime(2026, 3, 2))
    world.begin(lambda day: None)
    world.advance_to(19 * 3600 + 30)
    twin = "B01-01-01.em"
    assert world.state.twin(twin).reported["power_w"] > 0
    world.set_relay(twin, False)
    world.advance_to(19 * 3600 + 120)
    assert world.now_s == 19 * 3600 + 120
    assert world.state.twin(twin).reported["power_w"] == 0
    assert world.state.twin(twin).reported["relay_closed"] == 0
