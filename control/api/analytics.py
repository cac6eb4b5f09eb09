"""/api/analytics: the live load analytics (control/analytics_live.py) per building and
utility: the last whole day's loss against its usual, the month's total, peak demand and
load factor, the same dates last year, and a building's loss by day and typical day.

Answers come from the latest snapshot the periodic task computed, read without the
platform lock (a snapshot is replaced whole, never changed). Before its first run (the
platform's first whole site-local day) they are empty with `status` "not computed yet".
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from control.analytics_live import AnalyticsSnapshot, peak_time
from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from control.api.site import find_building

router = APIRouter(prefix="/api/analytics", tags=["analytics"], responses=AUTH)

NOT_YET = "not computed yet: the analytics cover whole site-local days, and none was complete at the last look"

WINDOW_EXAMPLE: dict[str, Any] = {"start_utc": 1764518400, "end_utc": 1767542400, "first_day": "2025-12-01",
                                  "last_day": "2026-01-04", "days": 35}
BUILDING_EXAMPLE: dict[str, Any] = {
    "building": "B03", "utility": "electric", "unit": "kWh", "master": "B03.mm", "loss_day": "2026-01-04",
    "loss": 143.2, "loss_pct": 12.4, "master_total": 1152.0, "usual_pct": 3.1, "usual_days": 34, "margin_pct": 0.5,
    "over": True, "month": "2026-01", "month_first_day": "2026-01-01", "month_days": 4, "month_total": 4410.6,
    "month_missing": 0, "last_year_total": None, "change_pct": None, "peak_kw": 96.4,
    "peak_utc": "2026-01-03T11:45:00Z", "peak_local": "2026-01-03T19:45:00+08:00", "load_factor": 0.48}
LIST_EXAMPLE: dict[str, Any] = {"status": "computed", "computed_at": 1767542400.0,
                                "computed_at_local": "2026-01-05T00:00:00+08:00", "window": WINDOW_EXAMPLE,
                                "buildings": [BUILDING_EXAMPLE]}
DETAIL_EXAMPLE: dict[str, Any] = {
    "building": "B03", "status": "computed", "computed_at": 1767542400.0,
    "computed_at_local": "2026-01-05T00:00:00+08:00", "window": WINDOW_EXAMPLE,
    "balance": [{"master": "B03.mm", "utility": "electric", "unit": "kWh", "feeds": 76,
                 "days": [{"day": "2026-01-04", "master": 1152.0, "fed": 1008.8, "loss": 143.2, "loss_pct": 12.4,
                           "missing": 0}]}],
    "profiles": [{"utility": "electric", "unit": "kWh", "slot_minutes": 15, "weekday": [8.1, 7.9],
                  "weekend": [8.4, 8.2], "meters": 76}]}


class AnalyticsWindow(BaseModel):
    """The whole site-local days a snapshot covers: [start_utc, end_utc)."""

    model_config = ConfigDict(json_schema_extra={"examples": [WINDOW_EXAMPLE]})

    start_utc: int
    end_utc: int
    first_day: str
    last_day: str
    days: int


class BuildingAnalyticsOut(BaseModel):
    """One building and utility. Loss: the master meter's last whole day against the sum of
    what it feeds, and its usual (median percent of the earlier days with every reading);
    `over` says whether it raised `energy_loss` (null: not judged). Month: the month of the
    last whole day, over its days in the window: the sub-meters' total, the same dates a
    year before (null where the history does not hold them) and the change, the building's
    highest interval demand (kW, m3/h for water) with its time, and load factor. Energy is
    kWh, water m3."""

    model_config = ConfigDict(json_schema_extra={"examples": [BUILDING_EXAMPLE]})

    building: str
    utility: str
    unit: Literal["kWh", "m3"]
    master: str | None
    loss_day: str | None
    loss: float | None
    loss_pct: float | None
    master_total: float | None
    usual_pct: float | None
    usual_days: int
    margin_pct: float | None
    over: bool | None
    month: str
    month_first_day: str
    month_days: int
    month_total: float
    month_missing: int
    last_year_total: float | None
    change_pct: float | None
    peak_kw: float | None = Field(description="kW, or m3/h for water")
    peak_utc: str | None
    peak_local: str | None
    load_factor: float | None


class BuildingsAnalyticsOut(BaseModel):
    """Every building and utility of the latest snapshot; `status` "not computed yet" (and
    no buildings) before the first."""

    model_config = ConfigDict(json_schema_extra={"examples": [LIST_EXAMPLE]})

    status: Literal["computed", "not computed yet"]
    note: str | None = None
    computed_at: float | None = Field(description="platform UTC epoch seconds of the run")
    computed_at_local: str | None
    window: AnalyticsWindow | None
    buildings: list[BuildingAnalyticsOut]


class LossDay(BaseModel):
    """One day of a master's balance (missing readings counted as 0 on both sides)."""

    day: str
    master: float
    fed: float
    loss: float
    loss_pct: float | None
    missing: int


class MasterBalance(BaseModel):
    """A master meter against what it feeds, by day."""

    master: str
    utility: str
    unit: Literal["kWh", "m3"]
    feeds: int
    days: list[LossDay]


class ProfileOut(BaseModel):
    """The building's typical day: the sum of its sub-meters' mean reading at each slot
    of the local day (null where none read), weekdays and weekends apart."""

    model_config = ConfigDict(json_schema_extra={"examples": [DETAIL_EXAMPLE["profiles"][0]]})

    utility: str
    unit: Literal["kWh", "m3"]
    slot_minutes: int
    weekday: list[float | None]
    weekend: list[float | None]
    meters: int = Field(description="sub-meters summed")


class BuildingDetailOut(BaseModel):
    """One building: each master's loss by day over the last `days` whole days, and the
    typical weekday and weekend per utility; empty with `status` "not computed yet" before
    the first snapshot."""

    model_config = ConfigDict(json_schema_extra={"examples": [DETAIL_EXAMPLE]})

    building: str
    status: Literal["computed", "not computed yet"]
    note: str | None = None
    computed_at: float | None
    computed_at_local: str | None
    window: AnalyticsWindow | None
    balance: list[MasterBalance]
    profiles: list[ProfileOut]


def _num(x: float, digits: int = 3) -> float | None:
    """A float for JSON: rounded, None for NaN or infinity."""
    return round(float(x), digits) if math.isfinite(x) else None


def _snapshot(request: Request) -> tuple[Any, AnalyticsSnapshot | None]:
    platform = get_platform(request)
    analytics = getattr(platform, "analytics", None)
    return platform, (analytics.snapshot if analytics is not None else None)


def _head(snap: AnalyticsSnapshot | None) -> dict[str, Any]:
    if snap is None:
        return {"status": "not computed yet", "note": NOT_YET, "computed_at": None, "computed_at_local": None,
                "window": None}
    local = datetime.fromtimestamp(snap.computed_at, tz=ZoneInfo(snap.timezone)).isoformat()
    window = {"start_utc": snap.window_start, "end_utc": snap.window_end, "first_day": snap.days[0],
              "last_day": snap.days[-1], "days": len(snap.days)}
    return {"status": "computed", "note": None, "computed_at": snap.computed_at, "computed_at_local": local,
            "window": window}


def buildings_rows(snap: AnalyticsSnapshot) -> list[dict[str, Any]]:
    """The rows of GET /api/analytics/buildings from a snapshot."""
    verdict_of = {v.master: v for v in snap.verdicts}
    rows = []
    for b in snap.buildings:
        v = verdict_of.get(b.master) if b.master is not None else None
        judged = v is not None and v.day >= 0
        change = (100.0 * (b.month_kwh / b.last_year_kwh - 1.0)
                  if math.isfinite(b.last_year_kwh) and b.last_year_kwh > 0 else math.nan)
        peak_utc, peak_local = peak_time(b, snap.timezone)
        rows.append({
            "building": b.building, "utility": b.utility, "unit": b.unit, "master": b.master,
            "loss_day": snap.days[v.day] if judged and v is not None else None,
            "loss": _num(v.loss_kwh) if v is not None else None, "loss_pct": _num(v.loss_pct, 2) if v else None,
            "master_total": _num(v.master_kwh) if v else None, "usual_pct": _num(v.usual_pct, 2) if v else None,
            "usual_days": v.usual_days if v else 0, "margin_pct": _num(v.margin_pct, 2) if v else None,
            "over": v.over if v else None, "month": b.month, "month_first_day": b.month_first_day,
            "month_days": b.month_days, "month_total": _num(b.month_kwh) or 0.0, "month_missing": b.month_missing,
            "last_year_total": _num(b.last_year_kwh), "change_pct": _num(change, 2), "peak_kw": _num(b.peak_kw),
            "peak_utc": peak_utc, "peak_local": peak_local, "load_factor": _num(b.load_factor, 4)})
    return rows


@router.get("/buildings", dependencies=[Viewer], summary="Loss, peak, load factor and month per building",
            response_model=BuildingsAnalyticsOut)
async def list_buildings(request: Request) -> dict[str, Any]:
    """Per building and utility, from the latest run of the load analytics: the last whole
    day's loss (master against what it feeds) and its usual, the month's total, peak demand
    (UTC and site-local time) and load factor, and the same dates last year (null when the
    history does not reach back). Example: `GET /api/analytics/buildings`."""
    _, snap = _snapshot(request)
    return {**_head(snap), "buildings": buildings_rows(snap) if snap is not None else []}


def building_detail(snap: AnalyticsSnapshot, building: str, days: int) -> dict[str, Any]:
    """The body of GET /api/analytics/buildings/{building} (less its head) from a snapshot."""
    bal = snap.balance
    first = max(0, len(bal.days) - days)
    balance = []
    for m, master in enumerate(bal.masters):
        if bal.buildings[m] != building:
            continue
        rows = [{"day": bal.days[d], "master": _num(bal.master_kwh[m, d]) or 0.0, "fed": _num(bal.fed_kwh[m, d]) or 0.0,
                 "loss": _num(bal.loss_kwh[m, d]) or 0.0, "loss_pct": _num(bal.loss_pct[m, d], 2),
                 "missing": int(bal.missing[m, d])} for d in range(first, len(bal.days))]
        balance.append({"master": master, "utility": bal.utilities[m], "unit": "m3" if bal.utilities[m] == "water"
                        else "kWh", "feeds": len(bal.feeds[m]), "days": rows})
    profiles = []
    prof = snap.profiles
    for g, label in enumerate(prof.labels):
        where, utility = label.rsplit(" ", 1)
        if where != building:
            continue
        meters = int(prof.meters[g].max(initial=0)) if prof.meters is not None else 0
        profiles.append({"utility": utility, "unit": "m3" if utility == "water" else "kWh",
                         "slot_minutes": prof.slot_minutes, "meters": meters,
                         "weekday": [_num(x, 4) for x in prof.mean[g, 0].tolist()],
                         "weekend": [_num(x, 4) for x in prof.mean[g, 1].tolist()]})
    return {"balance": balance, "profiles": profiles}


@router.get("/buildings/{building_id}", dependencies=[Viewer], summary="A building's loss by day and typical day",
            response_model=BuildingDetailOut, responses=errors(404))
async def get_building(request: Request, building_id: str,
                       days: int = Query(7, ge=1, le=366, description="the last this many whole days of loss")
                       ) -> dict[str, Any]:
    """Each master meter of the building against what it feeds, by day (kWh or m3, loss
    percent of the master; missing readings counted), and the typical weekday and weekend
    per utility (the sum of its sub-meters' mean day, one value per slot). An unknown
    building is 404, naming it. Example: `GET /api/analytics/buildings/B01?days=14`."""
    platform, snap = _snapshot(request)
    find_building(platform, building_id)
    body = building_detail(snap, building_id, days) if snap is not None else {"balance": [], "profiles": []}
    return {"building": building_id, **_head(snap), **body}
