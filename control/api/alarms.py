"""/api/alarms: open and past alarms; acknowledge and clear."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Operator, Viewer, get_platform
from control.api.errors import AUTH, errors
from control.auth import Principal
from twin.alarms import Alarm

router = APIRouter(prefix="/api/alarms", tags=["alarms"], responses=AUTH)

ALARM_EXAMPLE: dict[str, Any] = {
    "id": 7, "kind": "command_failed", "twin": "B01-02-03.em", "account": None, "severity": "major",
    "start": 1772445600.0, "last_seen": 1772445600.0, "count": 1, "state": "acknowledged",
    "evidence": {"command": "c-1a2b3c4d5e6f", "action": "relay_open", "reason": "no report before the deadline"},
    "history": [{"state": "raised", "at": 1772445600.0, "by": "platform"},
                {"state": "acknowledged", "at": 1772446500.0, "by": "alice"}]}


class AlarmEvent(BaseModel):
    """One transition of an alarm: raised, acknowledged or cleared, when and by whom."""

    state: str
    at: float
    by: str


class AlarmOut(BaseModel):
    """An alarm: what is wrong, about which twin or account, how bad, since when (UTC
    epoch seconds), how often it repeated, the figures that fired it, and its history."""

    model_config = ConfigDict(json_schema_extra={"examples": [ALARM_EXAMPLE]})

    id: int
    kind: str = Field(description="offline, low_balance_1..3, command_failed, leak, ...")
    twin: str | None
    account: str | None
    severity: Literal["info", "warning", "major", "critical"]
    start: float
    last_seen: float
    count: int
    state: Literal["raised", "acknowledged", "cleared"]
    evidence: dict[str, Any]
    history: list[AlarmEvent]


def alarm_dict(alarm: Alarm) -> dict[str, Any]:
    """An alarm as plain data."""
    return {"id": alarm.id, "kind": alarm.kind, "twin": alarm.twin, "account": alarm.account,
            "severity": alarm.severity.name.lower(), "start": alarm.start, "last_seen": alarm.last_seen,
            "count": alarm.count, "state": alarm.state.value, "evidence": alarm.evidence,
            "history": [{"state": s, "at": at, "by": by} for s, at, by in alarm.history]}


@router.get("", dependencies=[Viewer], summary="Alarms, open ones by default", response_model=list[AlarmOut])
async def list_alarms(request: Request, include_cleared: bool = False,
                      state: Literal["raised", "acknowledged", "cleared"] | None = None,
                      kind: str | None = Query(None, examples=["offline"]),
                      severity: Literal["info", "warning", "major", "critical"] | None = None,
                      twin: str | None = Query(None, examples=["B01-02-03.em"]),
                      account: str | None = Query(None, examples=["A-B01-02-03"]),
                      building: str | None = Query(None, examples=["B01"]),
                      limit: int = Query(1000, ge=1, le=100000), offset: int = Query(0, ge=0)) -> list[dict[str, Any]]:
    """Open alarms worst first, then oldest; with `include_cleared` (or `state=cleared`)
    the cleared ones follow, newest first. Filters: state, kind, severity, twin, account,
    building (of the twin or of the account's rooms). Example:
    `GET /api/alarms?severity=major&building=B01`."""
    platform = get_platform(request)
    rooms: dict[str | None, str] = {}
    if building is not None:
        rooms = {r.account: r.building for r in platform.scenario.site.rooms if r.account}

    def where(alarm: Alarm) -> str | None:
        if alarm.twin and alarm.twin in platform.twin_specs:
            return platform.twin_specs[alarm.twin].building
        return rooms.get(alarm.account) if alarm.account else None

    book = platform.alarms
    async with platform.lock:  # the tick thread raises and clears under it
        alarms = book.open_alarms()
        if include_cleared or state == "cleared":
            alarms += sorted((a for a in book.alarms.values() if not a.open), key=lambda a: (-a.start, -a.id))
        chosen = [a for a in alarms
                  if (state is None or a.state.value == state) and (kind is None or a.kind == kind)
                  and (severity is None or a.severity.name.lower() == severity) and (twin is None or a.twin == twin)
                  and (account is None or a.account == account) and (building is None or where(a) == building)]
        return [alarm_dict(a) for a in chosen[offset:offset + limit]]


@router.get("/{alarm_id}", dependencies=[Viewer], summary="One alarm and its history", response_model=AlarmOut,
            responses=errors(404))
async def get_alarm(request: Request, alarm_id: int) -> dict[str, Any]:
    """Example: `GET /api/alarms/7`. An unknown id is 404."""
    platform = get_platform(request)
    async with platform.lock:
        alarm = platform.alarms.alarms.get(alarm_id)
        if alarm is None:
            raise HTTPException(404, f"no alarm {alarm_id}")
        return alarm_dict(alarm)


async def _change(request: Request, alarm_id: int, who: Principal, action: str) -> dict[str, Any]:
    platform = get_platform(request)
    async with platform.lock:
        try:
            book = platform.alarms
            alarm = (book.acknowledge if action == "ack" else book.clear)(alarm_id, by=who.name, at=platform.now())
        except KeyError:
            raise HTTPException(404, f"no alarm {alarm_id}") from None
        except ValueError as err:
            raise HTTPException(409, str(err)) from None
        platform.alarm_changed(alarm, "acknowledged" if action == "ack" else "cleared")
    return alarm_dict(alarm)


@router.post("/{alarm_id}/acknowledge", summary="Acknowledge an alarm (operator)", response_model=AlarmOut,
             responses=errors(404, 409))
async def acknowledge(request: Request, alarm_id: int, who: Principal = Operator) -> dict[str, Any]:
    """Says someone has seen it; it stays open until its condition ends or it is cleared."""
    return await _change(request, alarm_id, who, "ack")


@router.post("/{alarm_id}/clear", summary="Clear an alarm by hand (operator)", response_model=AlarmOut,
             responses=errors(404, 409))
async def clear(request: Request, alarm_id: int, who: Principal = Operator) -> dict[str, Any]:
    """Closes it; if the condition still holds, the next check raises a new one."""
    return await _change(request, alarm_id, who, "clear")
