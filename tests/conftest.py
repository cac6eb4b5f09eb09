"""Shared fixtures: small hand-built sites and scenarios, independent of the scenario loader;
a free loopback port. Helpers for Debian programs a test needs are in tests/support.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scenarios.schema import Injection, RandomInjections, Residents, Scenario
from tests import support
from twin.model import Account, Building, Floor, Kind, Room, Site, TwinSpec


def build_site(buildings: int = 2, floors: int = 4, rooms: int = 4, profile: str = "household") -> Site:
    """Buildings with a master electric and water meter, one elevator, a corridor circuit
    and a pump; every room an electric meter, a water meter and a valve."""
    site = Site("T1", "test site")
    for b in range(1, buildings + 1):
        bid = f"B{b:02d}"
        building = Building(bid)
        site.twins += [
            TwinSpec(f"{bid}.mm", Kind.ELECTRIC_METER, bid, role="master", phases=3,
                     params={"loss_pct": 2.0, "fixed_loss_w": 100.0}),
            TwinSpec(f"{bid}.mw", Kind.WATER_METER, bid, role="master", params={"loss_pct": 1.0}),
            TwinSpec(f"{bid}.el1", Kind.ELEVATOR, bid, master=f"{bid}.mm",
                     params={"trip_kwh": 0.06, "standby_w": 250.0, "trips_per_day": 300.0}),
            TwinSpec(f"{bid}.sc-corridor", Kind.SHARED_CIRCUIT, bid, master=f"{bid}.mm",
                     params={"power_kw": 1.2, "schedule": "18:00-06:00", "duty": 1.0}),
            TwinSpec(f"{bid}.sc-pump", Kind.SHARED_CIRCUIT, bid, master=f"{bid}.mm",
                     params={"power_kw": 5.5, "schedule": "06:00-23:00", "duty": 0.3}),
        ]
        building.twins = [t.id for t in site.twins if t.building == bid]
        for f in range(1, floors + 1):
            floor = Floor(f)
            for r in range(1, rooms + 1):
                rid = f"{bid}-{f:02d}-{r:02d}"
                room = Room(rid, bid, f, account="A-" + rid)
                specs = [
                    TwinSpec(rid + ".em", Kind.ELECTRIC_METER, bid, f, rid, "A-" + rid, f"{bid}.mm",
                             profile=profile),
                    TwinSpec(rid + ".wm", Kind.WATER_METER, bid, f, rid, "A-" + rid, f"{bid}.mw",
                             profile=profile),
                    TwinSpec(rid + ".vl", Kind.VALVE, bid, f, rid, "A-" + rid, valve_of=rid + ".wm"),
                ]
                room.twins = [t.id for t in specs]
                site.twins += specs
                site.accounts.append(Account("A-" + rid, rooms=[rid], meters=[rid + ".em", rid + ".wm"]))
                floor.rooms.append(room)
            building.floors.append(floor)
        site.buildings.append(building)
    site.check()
    return site


def make_scenario(site: Site, injections: list[Injection] | None = None,
                  randoms: list[RandomInjections] | None = None, residents: Residents | None = None) -> Scenario:
    """A scenario around a hand-built site, with default profile classes."""
    return Scenario("test", site, {}, {}, [], injections or [], randoms or [], residents=residents)


@pytest.fixture(scope="session")
def scenario_factory() -> Callable[..., Scenario]:
    """Build a test scenario: scenario_factory(injections=[...], buildings=1, ...)."""

    def factory(injections: list[Injection] | None = None, randoms: list[RandomInjections] | None = None,
                residents: Residents | None = None, **site_args: int) -> Scenario:
        return make_scenario(build_site(**site_args), injections, randoms, residents)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server the test starts."""
    return support.free_tcp_port()
