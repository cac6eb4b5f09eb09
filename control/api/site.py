"""/api/site, /api/buildings, /api/rooms: the asset tree (site, buildings, floors, rooms),
each room with its account, twins and live status (see control/api/live.py). A building's
floors and rooms are the room grid's data: one call per building, whatever its size."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from control.api.live import Snapshot, twin_record, worst
from control.api.twins import Status, Twin
from twin.model import Building, Room

if TYPE_CHECKING:
    from control.runtime import Platform

router = APIRouter(tags=["site"], dependencies=[Viewer], responses=AUTH)


class Site(BaseModel):
    """The site this platform runs: what it holds, its clock and its billing mode."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "XA01", "name": "Demo community", "timezone": "Asia/Shanghai", "interval_s": 900,
        "buildings": 6, "floors": 108, "rooms": 432, "accounts": 432,
        "twins": {"electric_meter": 438, "water_meter": 438, "valve": 432},
        "billing": "platform", "sim_time": "2026-03-02T18:00:00+08:00", "speed": 60.0}]})

    id: str
    name: str
    timezone: str = Field(description="IANA zone: days, bands and billing periods use it")
    interval_s: int = Field(description="seconds per interval of the history")
    buildings: int
    floors: int
    rooms: int
    accounts: int
    twins: dict[str, int] = Field(description="twins by kind")
    billing: Literal["platform", "meter"] | None = Field(
        description="platform: the ledger holds the credit; meter: the meters do; null: no residents simulated")
    sim_time: str = Field(description="the platform's clock, site-local ISO 8601")
    speed: float = Field(description="simulated seconds per wall second")


class BuildingSummary(BaseModel):
    """A building with its size and how many rooms are in each status."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "B01", "name": "Building 1", "floors": 18, "rooms": 72, "twins": 218,
        "building_twins": ["B01.mm", "B01.wm", "B01.lift1"],
        "status": {"normal": 66, "low_balance": 3, "cut_off": 2, "offline": 1}}]})

    id: str
    name: str
    floors: int
    rooms: int
    twins: int = Field(description="every twin in the building, rooms included")
    building_twins: list[str] = Field(description="masters, elevators, shared circuits")
    status: dict[str, int] = Field(description="rooms per status (statuses with no room are left out)")


ROOM_EXAMPLE: dict[str, Any] = {
    "id": "B01-02-03", "building": "B01", "floor": 2, "area_m2": 89.0, "use": "flat", "account": "A-B01-02-03",
    "twins": ["B01-02-03.em", "B01-02-03.wm", "B01-02-03.vl"], "status": "normal"}


class RoomOut(BaseModel):
    """A room: its account, its twins' ids, and its status (the worst of its twins' and
    its account's)."""

    model_config = ConfigDict(json_schema_extra={"examples": [ROOM_EXAMPLE]})

    id: str
    building: str
    floor: int
    area_m2: float
    use: str = Field(description="flat or shop")
    account: str | None = Field(description="null when vacant")
    twins: list[str]
    status: Status


class RoomDetail(RoomOut):
    """A room with each twin's live state."""

    twin_states: list[Twin]


class FloorOut(BaseModel):
    """One floor and its rooms, in order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"number": 2, "rooms": [ROOM_EXAMPLE]}]})

    number: int
    rooms: list[RoomOut]


class BuildingDetail(BuildingSummary):
    """A building floor by floor, every room with its status: the room grid."""

    floor_list: list[FloorOut] = Field(description="floors from the ground up")


class RoomPage(BaseModel):
    """One page of rooms in site order, and how many match in all."""

    total: int
    offset: int
    limit: int
    items: list[RoomOut]


def _room(room: Room, snap: Snapshot, specs: dict[str, Any]) -> dict[str, Any]:
    statuses = [snap.of_twin(specs[t]) for t in room.twins if t in specs]
    statuses.append(snap.of_account(room.account))
    return {"id": room.id, "building": room.building, "floor": room.floor, "area_m2": room.area_m2, "use": room.use,
            "account": room.account, "twins": list(room.twins), "status": worst(statuses)}


def room_statuses(platform: Platform, snap: Snapshot) -> list[str]:
    """The status of every room of the site, in site order."""
    return [_room(r, snap, platform.twin_specs)["status"] for r in platform.scenario.site.rooms]


def _building(platform: Platform, building: Building, snap: Snapshot) -> dict[str, Any]:
    rooms = [_room(r, snap, platform.twin_specs) for r in building.rooms]
    inside = sum(len(r["twins"]) for r in rooms) + len(building.twins)
    return {"id": building.id, "name": building.name or building.id, "floors": len(building.floors),
            "rooms": len(rooms), "twins": inside, "building_twins": list(building.twins),
            "status": dict(Counter(r["status"] for r in rooms)), "_rooms": rooms}


def find_building(platform: Platform, building_id: str) -> Building:
    """The building with this id; 404 naming it and the ones there are."""
    for building in platform.scenario.site.buildings:
        if building.id == building_id:
            return building
    ids = [b.id for b in platform.scenario.site.buildings]
    shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
    raise HTTPException(404, f"no building {building_id!r}; this site has {shown}")


STATUS_FILTER = Query(None, description="only rooms with this status")


@router.get("/api/site", summary="The site: what it holds, its clock, its billing mode", response_model=Site)
async def get_site(request: Request) -> dict[str, Any]:
    """Example: `GET /api/site`."""
    platform = get_platform(request)
    site = platform.scenario.site
    residents = platform.scenario.residents
    return {"id": site.id, "name": site.name or site.id, "timezone": site.timezone,
            "interval_s": platform.world.interval_s, "buildings": len(site.buildings),
            "floors": sum(len(b.floors) for b in site.buildings), "rooms": len(site.rooms),
            "accounts": len(site.accounts), "twins": dict(Counter(t.kind.value for t in site.twins)),
            "billing": None if residents is None else residents.billing,
            "sim_time": datetime.fromtimestamp(platform.now(), tz=platform.world.tz).isoformat(),
            "speed": platform.speed}


@router.get("/api/buildings", summary="Buildings, with rooms per status", response_model=list[BuildingSummary])
async def list_buildings(request: Request) -> list[dict[str, Any]]:
    """Every building in site order. Example: `GET /api/buildings`."""
    platform = get_platform(request)
    async with platform.lock:
        snap = Snapshot.take(platform)
    out = [_building(platform, b, snap) for b in platform.scenario.site.buildings]
    for building in out:
        del building["_rooms"]
    return out


@router.get("/api/buildings/{building_id}", summary="A building floor by floor: the room grid",
            response_model=BuildingDetail, responses=errors(404))
async def get_building(request: Request, building_id: str) -> dict[str, Any]:
    """Every floor with its rooms, each with account, twins and status. Example:
    `GET /api/buildings/B01`. An unknown id is 404, naming it."""
    platform = get_platform(request)
    building = find_building(platform, building_id)
    async with platform.lock:
        snap = Snapshot.take(platform, list({r.account for r in building.rooms if r.account}))
    out = _building(platform, building, snap)
    by_floor: dict[int, list[dict[str, Any]]] = {f.number: [] for f in building.floors}
    for room in out.pop("_rooms"):
        by_floor.setdefault(room["floor"], []).append(room)
    out["floor_list"] = [{"number": n, "rooms": rooms} for n, rooms in by_floor.items()]
    return out


@router.get("/api/rooms", summary="Rooms with their status", response_model=RoomPage)
async def list_rooms(request: Request, building: str | None = Query(None, examples=["B01"]),
                     floor: int | None = Query(None, examples=[2]),
                     status: Status | None = STATUS_FILTER,
                     limit: int = Query(100, ge=1, le=10000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """Rooms in site order, filtered by building, floor and status. Example:
    `GET /api/rooms?building=B01&status=arrears`."""
    platform = get_platform(request)
    chosen = [r for r in platform.scenario.site.rooms
              if (building is None or r.building == building) and (floor is None or r.floor == floor)]
    async with platform.lock:
        snap = Snapshot.take(platform, list({r.account for r in chosen if r.account}))
    if status is None:
        total, items = len(chosen), [_room(r, snap, platform.twin_specs) for r in chosen[offset:offset + limit]]
    else:
        matching = [x for x in (_room(r, snap, platform.twin_specs) for r in chosen) if x["status"] == status]
        total, items = len(matching), matching[offset:offset + limit]
    return {"total": total, "offset": offset, "limit": limit, "items": items}


@router.get("/api/rooms/{room_id}", summary="One room with its twins' live state", response_model=RoomDetail,
            responses=errors(404))
async def get_room(request: Request, room_id: str) -> dict[str, Any]:
    """Example: `GET /api/rooms/B01-02-03`. An unknown id is 404, naming it."""
    platform = get_platform(request)
    room = next((r for r in platform.scenario.site.rooms if r.id == room_id), None)
    if room is None:
        raise HTTPException(404, f"no room {room_id!r}; ids look like B01-02-03")
    async with platform.lock:
        snap = Snapshot.take(platform, [room.account] if room.account else [])
        out = _room(room, snap, platform.twin_specs)
        out["twin_states"] = [twin_record(platform, platform.twin_specs[t], snap.of_twin(platform.twin_specs[t]))
                              for t in room.twins if t in platform.twin_specs]
    return out
