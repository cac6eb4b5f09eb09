"""/api/reports/energy: energy and cost by time-of-use band, per account or building, for a
month beside the same month last year (see control/energy_report.py for the rules)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from control.api.deps import Viewer, get_platform
from control.energy_report import NoReadings, energy_report, to_csv

router = APIRouter(tags=["reports"])


@router.get("/api/reports/energy", dependencies=[Viewer],
            summary="Energy and cost by band, per account or building, against last year")
async def energy(request: Request,
                 month: str | None = Query(None, examples=["2026-01"],
                                           description="site-local YYYY-MM; default: the history's last month"),
                 by: str = Query("account", pattern="^(account|building)$"),
                 format: str = Query("json", pattern="^(json|csv)$")) -> Any:
    """One row per account (or building) and utility: units (kWh or m3) and fen per band,
    the total, the tier surcharge, the same for the same month last year (null where the
    history does not hold it) and the change in percent. Both months are priced under the
    scenario's tariffs; a month in progress is compared with the same part of last year's.

    Example: `GET /api/reports/energy?month=2026-01&by=building&format=csv`. A malformed
    month is 400; a month the history does not hold is 404, naming the months it holds.
    """
    platform = get_platform(request)
    try:
        rows = await asyncio.to_thread(energy_report, platform.scenario, platform.data / "history", month, by)
    except NoReadings as err:
        raise HTTPException(404, str(err)) from None
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    return PlainTextResponse(to_csv(rows), media_type="text/csv") if format == "csv" else rows
