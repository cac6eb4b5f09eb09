"""/api/twins/{id}/history and /api/buildings/{id}/history: interval readings over any
range, summed into at most `points` buckets so a chart never gets more than it can draw.

The range [start, end) is widened to interval boundaries; with no range, the last day the
history holds. Buckets are whole numbers of intervals (bucket_s = k * interval_s, the
smallest k that fits `points`). A bucket's value is the sum of the readings in it (kWh or
m3: energy adds up, so a coarser chart keeps the totals), `missing` counts the readings
(interval x meter) it lacks, and its value is null when it holds none. A building's series
sums its meters of one utility: the sub meters (rooms, elevators, shared circuits), or
with `role=master` its master meters, so the two can be set side by side. The history is
read from disk in a worker thread, in slices of bounded size, outside the platform lock.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from control.api.site import find_building
from twin.history import History, open_history
from twin.model import METERED_KINDS, UNIT_OF_UTILITY, UTILITY_OF_KIND

if TYPE_CHECKING:
    from control.runtime import Platform

router = APIRouter(tags=["history"], dependencies=[Viewer], responses=AUTH)

#: The longest range one call may ask for.
MAX_SPAN_S = 20 * 366 * 86400
#: The latest time a range may reach (2200-01-01 UTC).
LATEST = 7258118400
#: Readings (interval x meter) a read may cover and still run on the event loop.
INLINE_VALUES = 20_000
#: Floats held per slice read from disk (4 bytes each): bounds a call's memory.
SLICE_VALUES = 4_000_000


class Series(BaseModel):
    """Readings summed into buckets; `times` are the buckets' UTC starts (epoch seconds)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "subject": "B01-02-03.em", "utility": "electric", "unit": "kWh", "meters": 1, "interval_s": 900,
        "bucket_s": 3600, "start": "2026-03-01T00:00:00+08:00", "end": "2026-03-01T04:00:00+08:00",
        "times": [1772294400, 1772298000, 1772301600, 1772305200], "values": [0.41, 0.22, None, 0.19],
        "missing": [0, 0, 4, 1]}]})

    subject: str = Field(description="the twin or building")
    utility: Literal["electric", "water"]
    unit: Literal["kWh", "m3"]
    meters: int = Field(description="meters summed")
    interval_s: int = Field(description="seconds per interval of the history")
    bucket_s: int = Field(description="seconds per bucket: a whole number of intervals")
    start: str = Field(description="start of the first bucket, site-local ISO 8601")
    end: str = Field(description="end of the range (exclusive), site-local ISO 8601")
    times: list[int]
    values: list[float | None] = Field(description="sum of the readings in each bucket; null: none there")
    missing: list[int] = Field(description="readings (interval x meter) missing in each bucket")


def reader(request: Request) -> History:
    """The platform's history, opened once per app (its topology is fixed for the run)."""
    state = request.app.state
    history: History | None = getattr(state, "history_reader", None)
    if history is None:
        history = open_history(get_platform(request).data / "history")
        state.history_reader = history
    return history


def _epoch(value: datetime, platform: Platform) -> int:
    local = value if value.tzinfo is not None else value.replace(tzinfo=platform.world.tz)
    return math.floor(local.timestamp())


def _span(history: History, platform: Platform, start: datetime | None, end: datetime | None,
          span: Layout) -> tuple[int, int]:
    """[start, end) in UTC epoch seconds on interval boundaries; 400 when it is empty or too long."""
    step = history.interval_s
    last = span[1] or int(platform.now()) // step * step
    t1 = last if end is None else _epoch(end, platform)
    t0 = t1 - 86400 if start is None else _epoch(start, platform)
    t0, t1 = t0 // step * step, -(-t1 // step) * step
    if t1 <= t0:
        raise HTTPException(400, f"end ({t1}) must come after start ({t0})")
    if t0 < 0 or t1 > LATEST:
        raise HTTPException(400, "start and end must lie between 1970 and 2200")
    if t1 - t0 > MAX_SPAN_S:
        raise HTTPException(400, f"the range spans {(t1 - t0) / 86400:.0f} days; ask for 7320 days at most")
    return t0, t1


def _first_month_start(history: History) -> int | None:
    months = sorted(set(history.months()) | set(history.rolled_up_months()))
    if not months:
        return None
    return int(datetime.strptime(months[0], "%Y-%m").replace(tzinfo=UTC).timestamp())


def _read_step(history: History, edges: np.ndarray, finest: int) -> int:
    """The coarsest interval to read at: a multiple of `finest` that divides a day and
    every edge (so a year of days from a UTC midnight reads day roll-ups)."""
    step = history.interval_s
    fits = [d for d in range(step, 86401, step)
            if 86400 % d == 0 and d % finest == 0 and not np.any(edges % d)]
    return max(fits, default=finest)


Layout = tuple[int | None, int | None]
"""(UTC start of the history's first month, end of its last interval): None when empty.
Read once per call and handed on: each reading of it lists the history's files."""


def layout(history: History) -> Layout:
    """The history's span as files show it now."""
    return _first_month_start(history), history.end


def _finest(history: History, t0: int, t1: int, span: Layout) -> int:
    """The finest interval the history serves all of its part of [t0, t1) at."""
    step = history.interval_s
    first, last = span
    if first is None or last is None or max(t0, first) >= min(t1, last):
        return step
    return history.resolution(max(t0, first) // step * step, -(-min(t1, last) // step) * step)


def period_sums(history: History, columns: list[int], edges: np.ndarray, span: Layout | None = None,
                finest: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sums, missing counts) of the columns' readings in each period [edges[i],
    edges[i + 1]) (UTC epoch seconds on the interval's boundaries, ascending), read at the
    coarsest interval that fits, slice by slice of bounded size. A sum is NaN where the
    period holds no reading; missing counts readings (interval x meter)."""
    step = history.interval_s
    n = len(edges) - 1
    sums = np.zeros(n, dtype=np.float64)
    present = np.zeros(n, dtype=np.int64)
    span = span or layout(history)
    first, last = span
    if first is not None and last is not None and n > 0:
        finest = finest or _finest(history, int(edges[0]), int(edges[-1]), span)
        d = _read_step(history, edges, finest)
        r0, r1 = max(int(edges[0]), first), min(int(edges[-1]), -(-last // d) * d)
        slice_s = max(1, SLICE_VALUES // max(len(columns), 1)) * d
        t = r0
        while t < r1:
            stop = min(r1, t + slice_s)
            block = history.read(t, stop, columns, interval_s=d, contiguous=False)  # [columns, cells]
            if d == step:
                seen = (~np.isnan(block)).sum(axis=0)
            else:
                seen = len(columns) * (d // step) - history.read_missing(t, stop, columns, interval_s=d).sum(axis=0)
            index = np.searchsorted(edges, t + np.arange(block.shape[1], dtype=np.int64) * d, side="right") - 1
            sums += np.bincount(index, weights=np.nansum(block, axis=0, dtype=np.float64), minlength=n)
            present += np.bincount(index, weights=seen, minlength=n).astype(np.int64)
            t = stop
    missing = np.diff(edges) // step * len(columns) - present
    sums[present == 0] = np.nan
    return sums, missing


def bucket_sums(history: History, columns: list[int], t0: int, t1: int, points: int, span: Layout | None = None
                ) -> tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, bucket seconds, bucket starts, sums, missing counts) of the columns
    over [t0, t1) in at most `points` buckets of whole intervals. Where part of the range
    is kept only as roll-ups, the range and the buckets widen to that level's boundaries."""
    step = history.interval_s
    span = span or layout(history)
    finest = _finest(history, t0, t1, span)
    t0, t1 = t0 // finest * finest, -(-t1 // finest) * finest
    n = (t1 - t0) // step
    per = finest // step
    k = -(-max(1, -(-n // points)) // per) * per  # a bucket holds whole cells of the finest level
    bucket_s = k * step
    times = np.arange(t0, t1, bucket_s, dtype=np.int64)
    sums, missing = period_sums(history, columns, np.append(times, t1), span, finest)
    return t0, t1, bucket_s, times, sums, missing


def _series(history: History, platform: Platform, subject: str, utility: str, columns: list[int],
            t0: int, t1: int, points: int, span: Layout) -> dict[str, Any]:
    t0, t1, bucket_s, times, sums, missing = bucket_sums(history, columns, t0, t1, points, span)
    tz = platform.world.tz
    return {"subject": subject, "utility": utility, "unit": UNIT_OF_UTILITY[utility], "meters": len(columns),
            "interval_s": history.interval_s, "bucket_s": bucket_s,
            "start": datetime.fromtimestamp(t0, tz=tz).isoformat(),
            "end": datetime.fromtimestamp(t1, tz=tz).isoformat(),
            "times": times.tolist(), "values": [None if math.isnan(v) else v for v in sums.tolist()],
            "missing": missing.tolist()}


async def series(history: History, platform: Platform, subject: str, utility: str, columns: list[int],
                 t0: int, t1: int, points: int, span: Layout) -> dict[str, Any]:
    """`_series` on the loop when it reads little (a thread's hand-over would cost more than
    the read: a meter's day is tens of microseconds), else in a worker thread."""
    if len(columns) * ((t1 - t0) // history.interval_s) <= INLINE_VALUES:
        return _series(history, platform, subject, utility, columns, t0, t1, points, span)
    return await asyncio.to_thread(_series, history, platform, subject, utility, columns, t0, t1, points, span)


START = Query(None, description="site-local when it has no offset; default: a day before `end`",
              examples=["2026-03-01T00:00:00"])
END = Query(None, description="exclusive; default: the end of the history", examples=["2026-03-02T00:00:00"])
POINTS = Query(1000, ge=1, le=100000, description="at most this many buckets")


@router.get("/api/twins/{twin_id}/history", summary="A meter's readings over a range, bucketed",
            response_model=Series, responses=errors(400, 404))
async def twin_history(request: Request, twin_id: str, start: datetime | None = START, end: datetime | None = END,
                       points: int = POINTS) -> dict[str, Any]:
    """Energy (kWh) or volume (m3) per bucket. Example: a day hour by hour,
    `GET /api/twins/B01-02-03.em/history?start=2026-03-01T00:00&end=2026-03-02T00:00&points=24`.
    A twin that keeps no history (a valve) is 400; an unknown id 404."""
    platform = get_platform(request)
    spec = platform.twin_specs.get(twin_id)
    if spec is None:
        raise HTTPException(404, f"no twin {twin_id!r}; ids look like B01-02-03.em")
    if spec.kind not in METERED_KINDS:
        raise HTTPException(400, f"{twin_id!r} is a {spec.kind.value}: it keeps no interval history")
    history = reader(request)
    span = layout(history)
    t0, t1 = _span(history, platform, start, end, span)
    column = history.topology.index_of(twin_id)
    return await series(history, platform, twin_id, UTILITY_OF_KIND[spec.kind], [column], t0, t1, points, span)


@router.get("/api/buildings/{building_id}/history", summary="A building's readings over a range, bucketed",
            response_model=Series, responses=errors(400, 404))
async def building_history(request: Request, building_id: str,
                           utility: Literal["electric", "water"] = "electric",
                           role: Literal["sub", "master"] = Query("sub", description="sum the sub meters or "
                                                                                     "the master meters"),
                           start: datetime | None = START, end: datetime | None = END,
                           points: int = POINTS) -> dict[str, Any]:
    """The sum of the building's meters of one utility per bucket. Example: a month day by
    day, `GET /api/buildings/B01/history?utility=electric&start=2026-02-01&end=2026-03-01&points=31`.
    A building with no such meter is 400; an unknown id 404."""
    platform = get_platform(request)
    find_building(platform, building_id)
    history = reader(request)
    columns = [i for i, c in enumerate(history.topology.columns)
               if c.building == building_id and c.utility == utility and c.role == role]
    if not columns:
        raise HTTPException(400, f"building {building_id!r} has no {role} {utility} meter")
    span = layout(history)
    t0, t1 = _span(history, platform, start, end, span)
    return await series(history, platform, building_id, utility, columns, t0, t1, points, span)


@router.get("/api/site/history", summary="The whole site's readings over a range, bucketed",
            response_model=Series, responses=errors(400))
async def site_history(request: Request, utility: Literal["electric", "water"] = "electric",
                       role: Literal["sub", "master"] = Query("sub", description="sum the sub meters or "
                                                                                 "the master meters"),
                       start: datetime | None = START, end: datetime | None = END,
                       points: int = POINTS) -> dict[str, Any]:
    """The sum of every meter of one utility and role per bucket: the overview's chart.
    Example: `GET /api/site/history?utility=water&points=96`."""
    platform = get_platform(request)
    history = reader(request)
    columns = [i for i, c in enumerate(history.topology.columns) if c.utility == utility and c.role == role]
    if not columns:
        raise HTTPException(400, f"this site has no {role} {utility} meter")
    span = layout(history)
    t0, t1 = _span(history, platform, start, end, span)
    return await series(history, platform, platform.scenario.site.id, utility, columns, t0, t1, points, span)
