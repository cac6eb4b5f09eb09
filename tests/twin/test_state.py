"""Columnar twin state and the asset model's rules."""

from __future__ import annotations

import numpy as np
import pytest

from twin.model import Building, Kind, Site, TwinSpec
from twin.state import FleetState


def small_site() -> Site:
    site = Site("S1")
    site.buildings.append(Building("B01"))
    site.twins = [
        TwinSpec("B01.mm", Kind.ELECTRIC_METER, "B01", role="master", phases=3),
        TwinSpec("B01-01-01.em", Kind.ELECTRIC_METER, "B01", 1, "B01-01-01", "A1", "B01.mm"),
        TwinSpec("B01-01-01.wm", Kind.WATER_METER, "B01", 1, "B01-01-01", "A1"),
        TwinSpec("B01-01-01.vl", Kind.VALVE, "B01", 1, "B01-01-01", "A1", valve_of="B01-01-01.wm"),
    ]
    site.check()
    return site


def test_one_row_per_twin_one_array_per_field():
    """Each kind is a table with one row per twin in site order and one numpy array per
    field of each face; desired fields start at -1 (nothing asked)."""
    fleet = FleetState.from_site(small_site())
    em = fleet.tables[Kind.ELECTRIC_METER]
    assert em.ids == ["B01.mm", "B01-01-01.em"]
    assert em.faces["reported"]["energy_kwh"].dtype == np.float64
    assert np.all(em.faces["desired"]["relay_closed"] == -1)
    assert len(fleet) == 4


def test_reports_and_wishes_are_stamped_and_seen_through_the_view():
    """A report writes the reported face and its timestamp; a wish the desired face; the
    per-twin view reads both back."""
    fleet = FleetState.from_site(small_site())
    fleet.report(Kind.ELECTRIC_METER, np.array([1]), 1_767_225_600, energy_kwh=12.5, relay_closed=0)
    fleet.desire("B01-01-01.em", "relay_closed", 1, 1_767_225_700)
    view = fleet.twin("B01-01-01.em")
    assert view.reported["energy_kwh"] == 12.5 and view.reported["relay_closed"] == 0
    assert view.desired["relay_closed"] == 1
    assert view.stamp("reported") == 1_767_225_600 and view.stamp("desired") == 1_767_225_700
    assert view.as_dict()["kind"] == "electric_meter"
    assert fleet.twin("B01.mm").reported["energy_kwh"] == 0.0


def test_unknown_twin_is_named():
    """Asking for a twin that does not exist names it."""
    with pytest.raises(KeyError, match="B09-01-01.em"):
        FleetState.from_site(small_site()).twin("B09-01-01.em")


def test_model_rules_are_stated():
    """Bad ids, phases, a valve without its meter, duplicate ids and a sub-meter whose
    master is not a master are refused with the rule in the message."""
    with pytest.raises(ValueError, match="not a valid id"):
        TwinSpec("B01 01", Kind.WATER_METER, "B01")
    with pytest.raises(ValueError, match="phases must be 1 or 3"):
        TwinSpec("B01-01-01.em", Kind.ELECTRIC_METER, "B01", phases=2)
    with pytest.raises(ValueError, match="must name its water meter"):
        TwinSpec("B01-01-01.vl", Kind.VALVE, "B01")
    site = small_site()
    site.twins.append(TwinSpec("B01-01-01.em", Kind.ELECTRIC_METER, "B01"))
    with pytest.raises(ValueError, match="used twice"):
        site.check()
    site = small_site()
    site.twins.append(TwinSpec("B01-01-02.em", Kind.ELECTRIC_METER, "B01", master="B01-01-01.em"))
    with pytest.raises(ValueError, match="is not a master meter for electric"):
        site.check()
