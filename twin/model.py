"""The asset model: Site > Building > Floor > Room, accounts, and the twin records.

These are the static attributes of a site (Ditto's "attributes"): what exists, where it
sits and what feeds what. Live values are not here; they live in the columnar fleet state
(`twin.state`), one row per twin. A scenario file builds a `Site` (see `scenarios.loader`);
so will an import of real meter lists.

Twin ids are stable, readable strings built from the place a twin sits:

    B03-12-02.em    electric meter of room 02 on floor 12 of building B03
    B03-12-02.wm    water meter of that room;   B03-12-02.vl  its valve
    B03.mm          master electric meter of B03; B03.mw  master water meter
    B03.el2         elevator 2 of B03 (its power monitor)
    B03.sc-corridor shared-area circuit "corridor" of B03
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    """The kinds of twin. The value is what the topology file and the API carry."""

    ELECTRIC_METER = "electric_meter"
    WATER_METER = "water_meter"
    VALVE = "valve"
    ELEVATOR = "elevator"
    SHARED_CIRCUIT = "shared_circuit"


#: Kinds whose twins report an interval quantity (energy or volume) into the history.
METERED_KINDS = (Kind.ELECTRIC_METER, Kind.WATER_METER, Kind.ELEVATOR, Kind.SHARED_CIRCUIT)

#: The utility a metered kind measures, and its unit per interval.
UTILITY_OF_KIND = {
    Kind.ELECTRIC_METER: "electric",
    Kind.WATER_METER: "water",
    Kind.ELEVATOR: "electric",
    Kind.SHARED_CIRCUIT: "electric",
}
UNIT_OF_UTILITY = {"electric": "kWh", "water": "m3"}

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)?$")


def check_id(value: str, what: str) -> str:
    """Return `value` if it is a usable id: letters, digits, '-', '_' and at most one '.'."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid id: use letters, digits, '-' and '_' "
            "(and one '.' before a twin suffix), for example 'B03-12-02.em'"
        )
    return value


@dataclass(frozen=True, slots=True)
class TwinSpec:
    """One physical thing with a twin: its id, kind, place and wiring.

    Example: ``TwinSpec("B03-12-02.em", Kind.ELECTRIC_METER, building="B03", floor=12,
    room="B03-12-02", account="A-B03-12-02", master="B03.mm", phases=1)``
    """

    id: str  #: stable readable id, unique in the site
    kind: Kind  #: what it is
    building: str  #: building id it belongs to
    floor: int | None = None  #: floor number, None for building-level twins
    room: str | None = None  #: room id, None for building-level twins
    account: str | None = None  #: account billed for it, None for common-area twins
    master: str | None = None  #: id of the master meter that feeds it, if any
    role: str = "sub"  #: "sub" (billed or shared), or "master" (a building's feed)
    phases: int = 1  #: 1 or 3, electric meters only
    prepaid: bool = True  #: billed in advance (prepaid) or postpaid
    profile: str | None = None  #: load-profile class driving the simulated consumption
    tariff: str | None = None  #: tariff name, resolved by the billing code
    valve_of: str | None = None  #: for a valve: the water meter it closes
    params: dict[str, float | str] = field(default_factory=dict)  #: kind-specific figures

    def __post_init__(self) -> None:
        check_id(self.id, "twin id")
        if self.phases not in (1, 3):
            raise ValueError(f"twin {self.id}: phases must be 1 or 3, not {self.phases}")
        if self.role not in ("sub", "master"):
            raise ValueError(f"twin {self.id}: role must be 'sub' or 'master', not {self.role!r}")
        if self.kind is Kind.VALVE and not self.valve_of:
            raise ValueError(f"twin {self.id}: a valve must name its water meter (valve_of)")

    @property
    def metered(self) -> bool:
        """True when the twin reports an interval quantity into the history."""
        return self.kind in METERED_KINDS

    @property
    def utility(self) -> str | None:
        """'electric', 'water', or None for a valve."""
        return UTILITY_OF_KIND.get(self.kind)


@dataclass(slots=True)
class Room:
    """A flat or a shop. Example: ``Room("B03-12-02", "B03", 12, area_m2=89.0)``."""

    id: str  #: building-floor-number, for example "B03-12-02"
    building: str  #: building id
    floor: int  #: floor number, 1 is the ground floor
    area_m2: float = 90.0  #: floor area, used by fees and apportionment
    use: str = "flat"  #: "flat" or "shop"
    account: str | None = None  #: the account living here, None when vacant
    twins: list[str] = field(default_factory=list)  #: ids of the twins in the room

    def __post_init__(self) -> None:
        check_id(self.id, "room id")
        if not self.area_m2 > 0:
            raise ValueError(f"room {self.id}: area_m2 must be > 0, not {self.area_m2}")


@dataclass(slots=True)
class Floor:
    """One floor of a building, with its rooms in order."""

    number: int  #: 1 is the ground floor
    rooms: list[Room] = field(default_factory=list)  #: rooms on this floor


@dataclass(slots=True)
class Building:
    """A building (楼栋) with its floors and building-level twins (masters, elevators,
    shared circuits). Example: ``Building("B03", "Building 3")``."""

    id: str  #: short id, for example "B03"
    name: str = ""  #: display name
    floors: list[Floor] = field(default_factory=list)  #: floors from the ground up
    twins: list[str] = field(default_factory=list)  #: building-level twin ids

    def __post_init__(self) -> None:
        check_id(self.id, "building id")
        if "." in self.id:
            raise ValueError(f"building id {self.id!r} must not contain '.'")

    @property
    def rooms(self) -> list[Room]:
        """Every room in the building, floor by floor."""
        return [room for floor in self.floors for room in floor.rooms]


@dataclass(slots=True)
class Account:
    """A resident or tenant (户). One account may hold several meters (一户多表).

    Example: ``Account("A-B03-12-02", "Resident of B03-12-02", rooms=["B03-12-02"],
    meters=["B03-12-02.em", "B03-12-02.wm"])``
    """

    id: str  #: account id
    name: str = ""  #: display name
    rooms: list[str] = field(default_factory=list)  #: room ids
    meters: list[str] = field(default_factory=list)  #: ids of the meters billed to it
    prepaid: bool = True  #: prepaid (balance deducted) or postpaid (periodic bills)


@dataclass(slots=True)
class Site:
    """A community, mall or district (小区/项目): the root of the asset tree."""

    id: str  #: short id, for example "XA01"
    name: str = ""  #: display name
    timezone: str = "Asia/Shanghai"  #: IANA zone; days, bands and billing periods use it
    buildings: list[Building] = field(default_factory=list)  #: buildings in order
    accounts: list[Account] = field(default_factory=list)  #: accounts in order
    twins: list[TwinSpec] = field(default_factory=list)  #: every twin, in a stable order

    def __post_init__(self) -> None:
        check_id(self.id, "site id")

    def check(self) -> None:
        """Raise ValueError naming the first broken rule of the wiring, if any.

        Rules: twin ids are unique; a master is a metered twin with role 'master' in the
        same building and of the same utility; a valve's meter is a water meter.
        """
        by_id: dict[str, TwinSpec] = {}
        for twin in self.twins:
            if twin.id in by_id:
                raise ValueError(f"twin id {twin.id!r} is used twice")
            by_id[twin.id] = twin
        for twin in self.twins:
            if twin.master is not None:
                master = by_id.get(twin.master)
                if master is None:
                    raise ValueError(f"twin {twin.id}: master {twin.master!r} does not exist")
                if master.role != "master" or master.utility != twin.utility:
                    raise ValueError(
                        f"twin {twin.id}: {twin.master!r} is not a master meter for {twin.utility}"
                    )
            if twin.valve_of is not None:
                meter = by_id.get(twin.valve_of)
                if meter is None or meter.kind is not Kind.WATER_METER:
                    raise ValueError(f"valve {twin.id}: {twin.valve_of!r} is not a water meter")

    def twin(self, twin_id: str) -> TwinSpec:
        """The twin with this id; KeyError names it when there is none."""
        for twin in self.twins:
            if twin.id == twin_id:
                return twin
        raise KeyError(f"no twin {twin_id!r} in site {self.id}")

    def twins_of(self, kind: Kind) -> list[TwinSpec]:
        """Every twin of one kind, in site order."""
        return [t for t in self.twins if t.kind is kind]

    @property
    def rooms(self) -> list[Room]:
        """Every room of the site, building by building."""
        return [room for building in self.buildings for room in building.rooms]
