"""/api/reports/consumption: energy or water by site-local day, month or year, each period
beside the same period last year, for the site, a building, an account or one twin; as
JSON rows or CSV.

Units are sums of the sub meters' interval readings (kWh or m3) in the period. `missing`
counts readings (interval x meter) the history lacks; a period with no reading at all is
null, and so is its change. Last year's period is the same site-local dates one year
earlier (a 29 February has none). Money by band is the energy report's
(/api/reports/energy); this one is for charts and trends.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from control.api.history import period_sums, reader
from control.energy_report import change_pct
from control.reports import to_csv
from twin.history import History
from twin.model import UNIT_OF_UTILITY

if TYPE_CHECKING:
    from control.runtime import Platform

router = APIRouter(tags=["reports"], dependencies=[Viewer], responses=AUTH)

#: Periods one call may ask for.
MAX_PERIODS = {"day": 3660, "month": 240, "year": 20}
#: Periods by default, ending with the history's last.
DEFAULT_PERIODS = {"day": 31, "month": 12, "year": 3}
FORMATS = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}
EXAMPLE = {"period": "2026-01-15", "utility": "electric", "unit": "kWh", "units": 8123.4, "missing": 0,
           "last_year_period": "2025-01-15", "last_year_units": 7904.2, "change_pct": 2.8}


def _step(day: date, period: str, n: int) -> date | None:
    """The first day of the period `n` periods after the one starting at `day`."""
    if period == "day":
        return day + timedelta(days=n)
    if period == "month":
        months = day.year * 12 + day.month - 1 + n
        return date(months // 12, months % 12 + 1, 1) if 1 <= months // 12 <= 9999 else None
    return date(day.year + n, 1, 1) if 1 <= day.year + n <= 9999 else None


def _first_of(day: date, period: str) -> date:
    return day if period == "day" else day.replace(day=1) if period == "month" else day.replace(month=1, day=1)


def _year_before(day: date) -> date | None:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February
        return None


def _epoch(day: date, tz: ZoneInfo, step: int) -> int:
    t = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())
    return t - t % step


def _span_sum(history: History, columns: list[int], a: date, b: date, tz: ZoneInfo) -> float | None:
    """The sum of the columns' readings from local day `a` to local day `b` (excluded)."""
    step = history.interval_s
    got, _ = period_sums(history, columns, np.array([_epoch(a, tz, step), _epoch(b, tz, step)], dtype=np.int64))
    return None if np.isnan(got[0]) else float(got[0])


def _rows(platform: Platform, history: History, columns: list[int], utility: str, period: str,
          starts: list[date], after: date) -> list[dict[str, Any]]:
    """The rows of periods starting at `starts`, the last ending at `after`."""
    tz, step = platform.world.tz, history.interval_s
    bounds = [*starts, after]
    edges = np.array([_epoch(d, tz, step) for d in bounds], dtype=np.int64)
    sums, missing = period_sums(history, columns, edges)
    rows = []
    for i, first in enumerate(starts):
        units = None if np.isnan(sums[i]) else float(sums[i])
        a, b = _year_before(first), _year_before(bounds[i + 1])
        if a is not None and b is None:  # ends on a 29 February: last year's ended on 1 March
            b = bounds[i + 1].replace(year=bounds[i + 1].year - 1, day=28) + timedelta(days=1)
        before = None if a is None or b is None or a.year < 1970 else _span_sum(history, columns, a, b, tz)
        rows.append({"period": first.strftime(FORMATS[period]), "utility": utility, "unit": UNIT_OF_UTILITY[utility],
                     "units": units, "missing": int(missing[i]),
                     "last_year_period": None if a is None else a.strftime(FORMATS[period]),
                     "last_year_units": before, "change_pct": change_pct(units, before)})
    return rows


FIRST_DAY = Query(None, description="first day (site-local); default: the last 31 days, 12 months or 3 years "
                                    "of the history", examples=["2026-01-01"])
LAST_DAY = Query(None, description="last day, included; default: the history's", examples=["2026-01-31"])


@router.get("/api/reports/consumption", summary="Energy or water by day, month or year, beside last year",
            response_model=list[dict[str, Any]], responses={
                **errors(400, 404),
                200: {"description": "JSON rows, or CSV with format=csv",
                      "content": {"application/json": {"example": [EXAMPLE]},
                                  "text/csv": {"example": "period,utility,unit,units,...\n2026-01-15,..."}}}})
async def consumption(request: Request, period: Literal["day", "month", "year"] = "day",
                      utility: Literal["electric", "water"] = "electric",
                      start: date | None = FIRST_DAY, end: date | None = LAST_DAY,
                      building: str | None = Query(None, examples=["B01"]),
                      account: str | None = Query(None, examples=["A-B01-02-03"]),
                      twin: str | None = Query(None, examples=["B01-02-03.em"]),
                      format: Literal["json", "csv"] = "json") -> Any:
    """One row per period. The meters summed: the site's sub meters of the utility, or
    those of one building, one account, or one twin. Example:
    `GET /api/reports/consumption?period=month&utility=water&building=B01&format=csv`."""
    platform = get_platform(request)
    history = reader(request)
    if twin is not None and twin not in platform.twin_specs:
        raise HTTPException(404, f"no twin {twin!r}; ids look like B01-02-03.em")
    if account is not None and account not in platform.accounts:
        raise HTTPException(404, f"no account {account!r}; ids look like A-B01-02-03")
    if building is not None and building not in {b.id for b in platform.scenario.site.buildings}:
        raise HTTPException(404, f"no building {building!r}")
    columns = [i for i, c in enumerate(history.topology.columns)
               if c.utility == utility and (c.id == twin if twin is not None else c.role == "sub")
               and (building is None or c.building == building) and (account is None or c.account == account)]
    if not columns:
        raise HTTPException(400, f"no {utility} meter matches (building {building}, account {account}, twin {twin})")
    tz = platform.world.tz
    last_t = history.end or int(platform.now())
    last_day = (datetime.fromtimestamp(last_t - 1, tz=tz)).date()
    end_day = end or last_day
    first = _first_of(start, period) if start is not None else _step(_first_of(end_day, period), period,
                                                                     1 - DEFAULT_PERIODS[period])
    if first is None or first.year < 1970 or end_day.year > 2199:
        raise HTTPException(400, "start and end must lie between 1970 and 2199")
    if end_day < first:
        raise HTTPException(400, f"end ({end_day}) is before start ({first})")
    starts = [first]
    while True:
        following = _step(starts[-1], period, 1)
        if following is None:
            raise HTTPException(400, "the range runs past the year 9999")
        if following > end_day:
            break
        starts.append(following)
        if len(starts) > MAX_PERIODS[period]:
            raise HTTPException(400, f"{len(starts)}+ {period}s asked for; ask for {MAX_PERIODS[period]} at most")
    rows = await asyncio.to_thread(_rows, platform, history, columns, utility, period, starts, following)
    return PlainTextResponse(to_csv(rows), media_type="text/csv") if format == "csv" else rows
