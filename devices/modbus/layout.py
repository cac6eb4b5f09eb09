"""Which gateway and unit id serves which twin, and with which register map.

A site's metered twins sit behind Modbus gateways, building by building: each gateway
serves at most `per_gateway` units (Modbus allows unit ids 1 to 247), in the site's twin
order, so the same scenario always gives the same layout. The model of each twin:

    electric sub-meter, 1 phase    metertwin-pm1   (prepaid single-phase)
    electric sub-meter, 3 phases   metertwin-pm3   (three-phase)
    electric master meter          sdm630          (Eastron SDM630, float32)
    water sub-meter                metertwin-wm1   (with its valve, if it has one)
    water master meter             metertwin-wm80  (bulk DN80, the same registers)
    elevator                       metertwin-el1
    shared circuit                 metertwin-sc1

A twin's `params` may name another model (`modbus_model = "sdm630"`). Example::

    gateways = layout(scenario.site)
    gateways[0].name, gateways[0].units[0]      # "gw-B01-1", Unit(1, "B01-01-01.em", "metertwin-pm1", None)
"""

from __future__ import annotations

from dataclasses import dataclass

from twin.model import Kind, Site, TwinSpec

MAX_UNITS = 247


@dataclass(frozen=True, slots=True)
class Unit:
    """One Modbus unit (slave) behind a gateway: the twin it is and its map."""

    unit_id: int  #: 1..247
    twin: str  #: twin id
    model: str  #: register map name (devices/modbus/maps/<model>.toml)
    valve: str | None = None  #: a water meter's valve twin, served by the same unit


@dataclass(frozen=True, slots=True)
class Gateway:
    """A gateway and the units it serves."""

    name: str  #: "gw-<building>-<n>"
    building: str  #: building id
    units: tuple[Unit, ...]  #: by unit id

    def unit_of(self, twin: str) -> Unit | None:
        """The unit serving a twin (or its valve), if this gateway has it."""
        return next((u for u in self.units if u.twin == twin or u.valve == twin), None)


def model_of(twin: TwinSpec) -> str:
    """The register map a twin is served with."""
    chosen = twin.params.get("modbus_model")
    if isinstance(chosen, str):
        return chosen
    if twin.kind is Kind.ELECTRIC_METER:
        if twin.role == "master":
            return "sdm630"
        return "metertwin-pm3" if twin.phases == 3 else "metertwin-pm1"
    if twin.kind is Kind.WATER_METER and twin.role == "master":
        return "metertwin-wm80"
    return {Kind.WATER_METER: "metertwin-wm1", Kind.ELEVATOR: "metertwin-el1",
            Kind.SHARED_CIRCUIT: "metertwin-sc1"}[twin.kind]


def layout(site: Site, per_gateway: int = 200) -> list[Gateway]:
    """The site's metered twins on gateways, building by building."""
    if not 1 <= per_gateway <= MAX_UNITS:
        raise ValueError(f"per_gateway is 1 to {MAX_UNITS} units, not {per_gateway}")
    valve_of = {t.valve_of: t.id for t in site.twins if t.kind is Kind.VALVE and t.valve_of}
    gateways: list[Gateway] = []
    for building in site.buildings:
        twins = [t for t in site.twins if t.building == building.id and t.metered]
        for n, first in enumerate(range(0, len(twins), per_gateway), start=1):
            chunk = twins[first:first + per_gateway]
            units = tuple(Unit(i + 1, t.id, model_of(t), valve_of.get(t.id)) for i, t in enumerate(chunk))
            gateways.append(Gateway(f"gw-{building.id}-{n}", building.id, units))
    return gateways
