"""/api/twins: the site's twins with their live state and status (see control/api/live.py)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from control.api.live import Snapshot, twin_record, twin_records
from twin.model import Kind

router = APIRouter(prefix="/api/twins", tags=["twins"], dependencies=[Viewer], responses=AUTH)

Status = Literal["normal", "low_balance", "arrears", "cut_off", "alarm", "offline"]

TWIN_EXAMPLE: dict[str, Any] = {
    "id": "B01-02-03.em", "kind": "electric_meter",
    "reported": {"energy_kwh": 1523.41, "power_w": 412.0, "voltage_v": 229.8, "current_a": 1.9,
                 "power_factor": 0.95, "frequency_hz": 50.0, "relay_closed": 1, "credit_fen": 0,
                 "purchased_fen": 0, "online": 1},
    "desired": {"relay_closed": -1, "purchased_fen": -1}, "derived": {"balance_fen": 8650, "alarm_level": 0},
    "stamps": {"reported": 1772445600, "desired": 0, "derived": 0},
    "building": "B01", "floor": 2, "room": "B01-02-03", "account": "A-B01-02-03", "master": "B01.mm",
    "role": "sub", "status": "normal"}


class Twin(BaseModel):
    """A twin: where it sits, what the device reports, what was asked of it (-1: nothing),
    what the platform derived, when each face last changed (UTC epoch seconds, 0: never),
    and its status. A value the device has not reported is null."""

    model_config = ConfigDict(json_schema_extra={"examples": [TWIN_EXAMPLE]})

    id: str
    kind: Kind
    reported: dict[str, int | float | None]
    desired: dict[str, int | float | None]
    derived: dict[str, int | float | None]
    stamps: dict[str, int]
    building: str
    floor: int | None
    room: str | None
    account: str | None
    master: str | None
    role: str = Field(description="sub (billed or shared) or master (a building's feed)")
    status: Status = Field(description="worst first: offline, alarm, cut_off, arrears, low_balance, normal")


class TwinPage(BaseModel):
    """One page of twins in site order, and how many match in all."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"total": 1, "offset": 0, "limit": 100,
                                                               "items": [TWIN_EXAMPLE]}]})

    total: int = Field(description="twins matching the filters")
    offset: int
    limit: int
    items: list[Twin]


STATUS_FILTER = Query(None, description="only twins with this status")


@router.get("", summary="List twins with their live state", response_model=TwinPage)
async def list_twins(request: Request, kind: Kind | None = None,
                     building: str | None = Query(None, examples=["B01"]),
                     floor: int | None = Query(None, examples=[2]),
                     room: str | None = Query(None, examples=["B01-02-03"]),
                     account: str | None = Query(None, examples=["A-B01-02-03"]),
                     role: Literal["sub", "master"] | None = None,
                     status: Status | None = STATUS_FILTER,
                     limit: int = Query(100, ge=1, le=10000), offset: int = Query(0, ge=0)) -> Any:
    """Twins in site order, filtered by kind, building, floor, room, account, role and
    status, each with its reported, desired and derived state and their timestamps.

    Example: `GET /api/twins?kind=valve&building=B01&limit=10`, or every cut-off meter:
    `GET /api/twins?status=cut_off`."""
    platform = get_platform(request)
    chosen = platform.scenario.site.twins
    if any(f is not None for f in (kind, building, floor, room, account, role)):
        chosen = [t for t in chosen
                  if (kind is None or t.kind is kind) and (building is None or t.building == building)
                  and (floor is None or t.floor == floor) and (room is None or t.room == room)
                  and (account is None or t.account == account) and (role is None or t.role == role)]
    async with platform.lock:
        if status is None:
            page = chosen[offset:offset + limit]
            snap = Snapshot.take(platform, list({t.account for t in page if t.account}))
            items = twin_records(platform, page, [snap.of_twin(t) for t in page])
            total = len(chosen)
        else:
            snap = Snapshot.take(platform, list({t.account for t in chosen if t.account}))
            matching = [t for t in chosen if snap.of_twin(t) == status]
            page = matching[offset:offset + limit]
            items = twin_records(platform, page, [status] * len(page))
            total = len(matching)
    # the page is built to TwinPage already (schemathesis checks it against the schema):
    # skipping the model's validation of a large page halves the time of a call
    return JSONResponse({"total": total, "offset": offset, "limit": limit, "items": items})


@router.get("/{twin_id}", summary="One twin with its live state", response_model=Twin, responses=errors(404))
async def get_twin(request: Request, twin_id: str) -> dict[str, Any]:
    """Example: `GET /api/twins/B01-02-03.em`. An unknown id is 404, naming it."""
    platform = get_platform(request)
    spec = platform.twin_specs.get(twin_id)
    if spec is None:
        raise HTTPException(404, f"no twin {twin_id!r}; ids look like B01-02-03.em")
    async with platform.lock:
        snap = Snapshot.take(platform, [spec.account] if spec.account else [])
        return twin_record(platform, spec, snap.of_twin(spec))
