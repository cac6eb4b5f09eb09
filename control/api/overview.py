"""/api/overview: the site at a glance for the dashboard's first page: meters online, twins
and rooms by status, open alarms and commands, and today's energy, water and income.

"Today" is the site-local day of the platform's clock. Energy and water are the sums of
the sub meters' readings the history holds for it so far (`until` says up to where:
`metertwin run` over Modbus stores every interval as it closes, `--no-modbus` a whole day
at its end); income is what came in (top-ups and bill payments) and went out (refunds)
in the ledger since the day began.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH
from control.api.history import bucket_sums, reader
from control.api.live import Snapshot
from control.api.site import room_statuses
from control.reports import paid_in_fen
from twin.model import Kind

router = APIRouter(tags=["site"], dependencies=[Viewer], responses=AUTH)


class Today(BaseModel):
    """Today so far (site-local day)."""

    start: str = Field(description="local midnight, ISO 8601")
    until: str | None = Field(description="where the history's readings of today end; null: none yet")
    electric_kwh: float | None
    water_m3: float | None
    paid_in_fen: int = Field(description="top-ups and bill payments")
    refunded_fen: int


class Overview(BaseModel):
    """The site at a glance."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "sim_time": "2026-03-02T18:00:00+08:00", "meters": 876, "meters_online": 874,
        "twins_by_status": {"normal": 1290, "low_balance": 12, "cut_off": 3, "offline": 2},
        "rooms_by_status": {"normal": 425, "low_balance": 4, "cut_off": 1, "offline": 2},
        "alarms_open": 9, "alarms_by_severity": {"warning": 6, "major": 3}, "commands_open": 1,
        "today": {"start": "2026-03-02T00:00:00+08:00", "until": "2026-03-02T17:45:00+08:00",
                  "electric_kwh": 3120.4, "water_m3": 88.2, "paid_in_fen": 250000, "refunded_fen": 0}}]})

    sim_time: str
    meters: int = Field(description="electric and water meters")
    meters_online: int
    twins_by_status: dict[str, int]
    rooms_by_status: dict[str, int]
    alarms_open: int
    alarms_by_severity: dict[str, int]
    commands_open: int
    today: Today


def _today(platform: Any, history: Any, midnight: int) -> dict[str, Any]:
    tz = platform.world.tz
    out: dict[str, Any] = {"start": datetime.fromtimestamp(midnight, tz=tz).isoformat()}
    end = history.end
    out["until"] = None if end is None or end <= midnight else datetime.fromtimestamp(min(end, midnight + 86400),
                                                                                     tz=tz).isoformat()
    for utility, name in (("electric", "electric_kwh"), ("water", "water_m3")):
        columns = [i for i, c in enumerate(history.topology.columns) if c.utility == utility and c.role == "sub"]
        value = None
        if columns and out["until"] is not None:
            sums = bucket_sums(history, columns, midnight, midnight + 86400, 1)[4]
            value = None if sums[0] != sums[0] else float(sums[0])  # NaN: nothing read
        out[name] = value
    return out


def _money(platform: Any, midnight: int, now: float) -> dict[str, int]:
    rows = platform.ledger.db.execute(
        "SELECT kind, COALESCE(SUM(amount), 0) FROM transfers WHERE at >= ? AND at <= ? AND kind = 'refund' "
        "GROUP BY kind", (midnight, now)).fetchall()
    sums_by_kind = {kind: int(total) for kind, total in rows}
    return {"paid_in_fen": paid_in_fen(platform.ledger, midnight, now),  # opening balances are not income
            "refunded_fen": sums_by_kind.get("refund", 0)}


@router.get("/api/overview", summary="The site at a glance: meters online, statuses, alarms, today",
            response_model=Overview)
async def overview(request: Request) -> dict[str, Any]:
    """Example: `GET /api/overview`."""
    platform = get_platform(request)
    history = reader(request)
    async with platform.lock:  # read the world and the books; the counting needs neither
        now = platform.now()
        snap = Snapshot.take(platform)
        alarms = platform.alarms.open_alarms()
        commands_open = len(platform.commands.open)
    twins = platform.scenario.site.twins
    by_twin = Counter(snap.of_twin(t) for t in twins)
    meters = [t.id for t in twins if t.kind in (Kind.ELECTRIC_METER, Kind.WATER_METER)]
    online = sum(1 for t in meters if t not in snap.offline)
    by_room = Counter(room_statuses(platform, snap))
    local = datetime.fromtimestamp(now, tz=platform.world.tz)
    midnight = int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
    today = {**await asyncio.to_thread(_today, platform, history, midnight), **_money(platform, midnight, now)}
    return {"sim_time": local.isoformat(), "meters": len(meters), "meters_online": online,
            "twins_by_status": dict(by_twin), "rooms_by_status": dict(by_room), "alarms_open": len(alarms),
            "alarms_by_severity": dict(Counter(a.severity.name.lower() for a in alarms)),
            "commands_open": commands_open, "today": today}
