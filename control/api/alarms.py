"""/api/alarms: open and past alarms; acknowledge and clear."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from control.api.deps import Operator, Viewer, get_platform
from control.auth import Principal
from twin.alarms import Alarm

router = APIRouter(prefix="/api/alarms", tags=["alarms"])


def alarm_dict(alarm: Alarm) -> dict[str, Any]:
    """An alarm as plain data."""
    return {"id": alarm.id, "kind": alarm.kind, "twin": alarm.twin, "account": alarm.account,
            "severity": alarm.severity.name.lower(), "start": alarm.start, "last_seen": alarm.last_seen,
            "count": alarm.count, "state": alarm.state.value, "evidence": alarm.evidence,
            "history": [{"state": s, "at": at, "by": by} for s, at, by in alarm.history]}


@router.get("", dependencies=[Viewer], summary="Alarms, open ones by default")
async def list_alarms(request: Request, include_cleared: bool = False) -> list[dict[str, Any]]:
    """Worst first, then oldest. Example: `GET /api/alarms?include_cleared=true`."""
    book = get_platform(request).alarms
    alarms = list(book.alarms.values()) if include_cleared else book.open_alarms()
    return [alarm_dict(a) for a in alarms]


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


@router.post("/{alarm_id}/acknowledge", summary="Acknowledge an alarm")
async def acknowledge(request: Request, alarm_id: int, who: Principal = Operator) -> dict[str, Any]:
    """Says someone has seen it; it stays open until its condition ends or it is cleared."""
    return await _change(request, alarm_id, who, "ack")


@router.post("/{alarm_id}/clear", summary="Clear an alarm by hand")
async def clear(request: Request, alarm_id: int, who: Principal = Operator) -> dict[str, Any]:
    """Closes it; if the condition still holds, the next check raises a new one."""
    return await _change(request, alarm_id, who, "clear")
