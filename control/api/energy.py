"""/api/reports/energy: energy and cost by time-of-use band, per account or building, for a
month beside the same month last year (see control/energy_report.py for the rules).

A report bills every meter of the site over two months of history (hundreds of MB read on
a large site), so reports are kept: the same month and grouping is computed once while the
history files it could read stay as they were (their names, sizes and modification times),
and callers asking at the same time wait on one computation instead of starting their own.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from control.energy_report import NoReadings, energy_report, to_csv

router = APIRouter(tags=["reports"], responses=AUTH)

#: Reports kept, least recently used dropped first.
KEPT = 16
_kept: OrderedDict[tuple[Any, ...], asyncio.Task[list[dict[str, Any]]]] = OrderedDict()


def _files(history: Path) -> tuple[tuple[str, int, int], ...]:
    """What a report's answer depends on: every history file, by name, size and mtime."""
    try:
        found = sorted((history / "intervals").glob("*.f32"))
        return tuple((p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in found)
    except FileNotFoundError:  # a file rolled up while listing: nothing to keep
        return ()


async def kept_report(platform: Any, month: str | None, by: str) -> list[dict[str, Any]]:
    """The report's rows, computed once per state of the history files."""
    history = platform.data / "history"
    key = (id(platform), month, by, _files(history))
    task = _kept.get(key)
    stale = task is not None and (task.get_loop() is not asyncio.get_running_loop()
                                  or (task.done() and task.exception() is not None))
    if task is None or stale:
        task = asyncio.ensure_future(asyncio.to_thread(energy_report, platform.scenario, history, month, by))
        _kept[key] = task
        while len(_kept) > KEPT:
            _kept.popitem(last=False)
    _kept.move_to_end(key)
    return await asyncio.shield(task)

EXAMPLE_ROW: dict[str, Any] = {
    "month": "2026-01", "from": "2026-01-01T00:00+08:00", "until": "2026-02-01T00:00+08:00",
    "last_year_month": "2025-01", "building": "B01", "utility": "electric", "unit": "kWh", "tariff": "res-power",
    "meters": 72, "units": 29412.5, "fen": 1530318, "flat_units": 29412.5, "flat_fen": 1465628, "surcharge_fen": 64690,
    "last_year_units": 28398.0, "last_year_fen": 1479140, "last_year_flat_units": 28398.0,
    "last_year_flat_fen": 1415072, "last_year_surcharge_fen": 64068, "units_change_pct": 3.6, "fen_change_pct": 3.5}


@router.get("/api/reports/energy", dependencies=[Viewer],
            summary="Energy and cost by band, per account or building, against last year",
            response_model=list[dict[str, Any]], responses={
                **errors(400, 404),
                200: {"description": "JSON rows, or CSV with format=csv",
                      "content": {"application/json": {"example": [EXAMPLE_ROW]},
                                  "text/csv": {"example": "month,from,until,...\n2026-01,...\n"}}}})
async def energy(request: Request,
                 month: str | None = Query(None, examples=["2026-01"],
                                           description="site-local YYYY-MM; default: the history's last month"),
                 by: str = Query("account", pattern="^(account|building)$"),
                 building: str | None = Query(None, examples=["B01"],
                                              description="only this building (its row, or its accounts' rows)"),
                 format: str = Query("json", pattern="^(json|csv)$")) -> Any:
    """One row per account (or building) and utility: units (kWh or m3) and fen per band,
    the total, the tier surcharge, the same for the same month last year (null where the
    history does not hold it) and the change in percent. Both months are priced under the
    scenario's tariffs; a month in progress is compared with the same part of last year's.

    Example: `GET /api/reports/energy?month=2026-01&by=building&format=csv`; one building's
    month: `GET /api/reports/energy?month=2026-01&by=building&building=B01`. A malformed
    month is 400; a month the history does not hold is 404, naming the months it holds.
    """
    platform = get_platform(request)
    try:
        rows = await kept_report(platform, month, by)
    except NoReadings as err:
        raise HTTPException(404, str(err)) from None
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    if building is not None and by == "building":
        rows = [r for r in rows if r["building"] == building]
    elif building is not None:
        inside = {r.account for r in platform.scenario.site.rooms if r.building == building and r.account}
        rows = [r for r in rows if r["account"] in inside]
    return PlainTextResponse(to_csv(rows), media_type="text/csv") if format == "csv" else rows
