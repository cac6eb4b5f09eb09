"""/api/reports/energy: energy and cost by time-of-use band, per account or building, for a
month beside the same month last year (see control/energy_report.py for the rules)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from control.energy_report import NoReadings, energy_report, to_csv

router = APIRouter(tags=["reports"], responses=AUTH)

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
        rows = await asyncio.to_thread(energy_report, platform.scenario, platform.data / "history", month, by)
    except NoReadings as err:
        raise HTTPException(404, str(err)) from None
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    if building is not None:
        inside = {r.account for r in platform.scenario.site.rooms if r.building == building and r.account}
        rows = [r for r in rows if (r.get("building") == building if by == "building" else r.get("account") in inside)]
    return PlainTextResponse(to_csv(rows), media_type="text/csv") if format == "csv" else rows
