"""Prepaid policies: levels, emergency credit, protected hours, keep-supply, restore, access."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from control.policies import KeepSupply, PolicySettings, PrepaidPolicy, Protected

TZ = ZoneInfo("Asia/Shanghai")


def at(*args: int) -> float:
    return datetime(*args, tzinfo=TZ).timestamp()


WEEKDAY_NOON = at(2026, 3, 4, 12, 0)  # a Wednesday


def test_three_levels_then_emergency_credit_then_cut_then_restore():
    """Falling through 50, 20 and 5 yuan raises levels 1, 2, 3; below zero supply goes on
    within the emergency credit, the access flag clears; past it, supply is cut; a
    top-up back above zero restores supply and access."""
    policy = PrepaidPolicy()
    steps = [(6000, 0, False), (4000, 1, False), (1500, 2, False), (300, 3, False), (-500, 3, False),
             (-1000, 3, True)]
    for balance, level, cut in steps:
        d = policy.decide("A-1", balance, WEEKDAY_NOON)
        assert (d.level, d.cut) == (level, cut), balance
    assert d.emergency_fen == 1000 and not d.access
    again = policy.decide("A-1", -1200, WEEKDAY_NOON)
    assert not again.cut  # already cut: no second command
    back = policy.decide("A-1", 10_000, WEEKDAY_NOON)
    assert back.restore and back.access and back.level == 0 and back.level_changed


def test_protected_hours_weekends_and_holidays_hold_the_cut():
    """At night, on a weekend or on a holiday a due cut-off is held back and says why;
    it happens at the first run outside them."""
    policy = PrepaidPolicy(PolicySettings(protected=Protected(holidays=frozenset({date(2026, 10, 1)}))))
    for when in (at(2026, 3, 4, 23, 0), at(2026, 3, 7, 12, 0), at(2026, 10, 1, 12, 0)):  # night, Saturday, holiday
        d = policy.decide("A-1", -5000, when)
        assert not d.cut and d.held == "protected hours"
    assert policy.decide("A-1", -5000, at(2026, 3, 9, 9, 0)).cut  # Monday 09:00


def test_keep_supply_holds_until_it_expires():
    """An account on the keep-supply list is not cut until its entry expires."""
    policy = PrepaidPolicy()
    policy.keep(KeepSupply("A-9", "home oxygen concentrator", WEEKDAY_NOON + 3600, "alice"))
    d = policy.decide("A-9", -9999, WEEKDAY_NOON)
    assert not d.cut and "home oxygen concentrator" in d.held
    assert policy.decide("A-9", -9999, WEEKDAY_NOON + 7200).cut
    with pytest.raises(ValueError, match="needs a reason"):
        policy.keep(KeepSupply("A-8", " ", WEEKDAY_NOON, "bob"))


def test_settings_are_checked():
    """Levels must fall and the emergency credit cannot be negative."""
    with pytest.raises(ValueError, match="must fall"):
        PolicySettings(levels_fen=(100, 500, 50))
    with pytest.raises(ValueError, match="emergency_fen"):
        PolicySettings(emergency_fen=-1)
