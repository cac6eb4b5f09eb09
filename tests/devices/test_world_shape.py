"""The simulated load has the shape of urban Chinese households (issue: shapes to reach)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from control.summary import RunSummary
from devices.sim.world import World


@pytest.fixture(scope="module")
def two_weeks(scenario_factory) -> dict:
    world = World(scenario_factory(buildings=2, floors=8, rooms=4), seed=2, days=14,
                  start=datetime(2026, 3, 2))
    summary = RunSummary(world)
    world.run(summary.add)
    return summary.shape()


def test_household_energy_and_daily_shape(two_weeks):
    """Households average 150-300 kWh a month, peak in 19:00-22:00, and their night
    minimum stays under 40% of the peak."""
    assert 150 <= two_weeks["kwh_per_30_days_mean"] <= 300
    assert 19 <= two_weeks["peak_hour"] <= 21
    assert two_weeks["night_min_to_peak"] < 0.4


def test_weekends_differ_and_days_vary(two_weeks):
    """Weekends differ from weekdays, and one household's daily energy varies from day to
    day with a coefficient of variation of at least 0.2."""
    assert abs(two_weeks["weekend_to_weekday"] - 1.0) > 0.03
    assert two_weeks["daily_cv_median"] >= 0.2


def test_water_has_quiet_nights_and_two_peaks(two_weeks):
    """Water falls to a night minimum and peaks in the morning and the evening."""
    assert two_weeks["water_night_min_to_peak"] < 0.2
    assert 6 <= two_weeks["water_morning_peak_hour"] <= 9
    assert 18 <= two_weeks["water_evening_peak_hour"] <= 22


def test_summer_air_conditioning_months_use_more_than_spring(scenario_factory):
    """A summer week (July) uses 1.3 to 2 times a spring week (April)."""
    scenario = scenario_factory(buildings=1, floors=8, rooms=4)

    def household_kwh(start: datetime) -> float:
        world = World(scenario, seed=3, days=7, start=start)
        total = [0.0]
        cols = world.cols["e"]
        world.run(lambda day: total.__setitem__(0, total[0] + float(day.true[:, cols].sum())))
        return total[0]

    ratio = household_kwh(datetime(2026, 7, 6)) / household_kwh(datetime(2026, 4, 6))
    assert 1.3 <= ratio <= 2.0


def test_elevators_follow_the_rush_hours(scenario_factory):
    """Elevators make more trips in the morning rush than at night, and shared circuits
    draw power inside their schedule only."""
    world = World(scenario_factory(buildings=1), seed=1, days=1, start=datetime(2026, 3, 3))
    days = []
    world.run(days.append)
    day = days[0]
    lift = world.column_of["B01.el1"]
    hours = day.interval_minute // 60
    rush = day.true[(hours >= 7) & (hours < 9), lift].mean()
    assert rush > 3 * day.true[(hours >= 2) & (hours < 4), lift].mean()
    corridor = world.column_of["B01.sc-corridor"]
    assert np.all(day.true[(hours >= 7) & (hours < 17), corridor] == 0)
    assert np.all(day.true[(hours >= 19) | (hours < 5), corridor] > 0)
