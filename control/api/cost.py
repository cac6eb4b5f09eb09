"""/api/twins/{id}/day: one meter's energy (or water) and cost by time-of-use band for a
site-local day, as its tariff prices it: the twin page's "today".

Each interval is priced at the band in force at its start; on a tiered tariff the
surcharge of each tier is added on the part of the interval's use that lies in that tier,
counting from the tier period's start (the month or year to date, from the history). Money
is in fen, unrounded per band (the ledger rounds once, at posting); the total is rounded
half-up. Intervals the history lacks count as no use and are counted in `missing`.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from control.api.history import period_sums, reader
from twin.history import History
from twin.ledger import round_half_up
from twin.model import METERED_KINDS, UNIT_OF_UTILITY, UTILITY_OF_KIND, TwinSpec
from twin.tariffs import parse_tariff, price_tables

if TYPE_CHECKING:
    from control.runtime import Platform

router = APIRouter(tags=["history"], dependencies=[Viewer], responses=AUTH)


class BandUse(BaseModel):
    """Use and cost in one band."""

    name: str
    units: float
    fen: float = Field(description="at the band's price, unrounded")


class MeterDay(BaseModel):
    """A meter's day: use and cost by band, the tier surcharge, the total."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "twin": "B01-02-03.em", "day": "2026-03-02", "utility": "electric", "unit": "kWh", "tariff": "res-power",
        "units": 7.412, "fen": 512, "bands": [{"name": "peak", "units": 5.1, "fen": 479.4},
                                              {"name": "valley", "units": 2.312, "fen": 71.7}],
        "surcharge_fen": 0.0, "missing": 0, "until": "2026-03-02T18:00:00+08:00"}]})

    twin: str
    day: str
    utility: str
    unit: str
    tariff: str | None = Field(description="null: the meter is not billed (no tariff); then money is null")
    units: float
    fen: int | None = Field(description="bands plus surcharge, rounded half-up once")
    bands: list[BandUse]
    surcharge_fen: float | None
    missing: int = Field(description="intervals of the day without a reading")
    until: str | None = Field(description="where the history's readings of the day end; null: none yet")


def _surcharges(use: np.ndarray, before: float, thresholds: np.ndarray, surcharges: np.ndarray) -> float:
    """The tier surcharge of a run of interval uses starting at running total `before`."""
    edges = np.concatenate(([0.0], thresholds[np.isfinite(thresholds)], [np.inf]))
    total, fen = before, 0.0
    for u in use.tolist():
        lo, hi = total, total + u
        overlap = np.clip(np.minimum(hi, edges[1:]) - np.maximum(lo, edges[:-1]), 0.0, None)
        fen += float(overlap @ surcharges[:len(overlap)])
        total = hi
    return fen


def _day(platform: Platform, history: History, spec: TwinSpec, day: date) -> dict[str, Any]:
    tz, step = platform.world.tz, history.interval_s
    t0 = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())
    t1 = int((datetime(day.year, day.month, day.day) + timedelta(days=1)).replace(tzinfo=tz).timestamp())
    t0, t1 = t0 - t0 % step, t1 - t1 % step
    column = history.topology.index_of(spec.id)
    use = history.read(t0, t1, [column])[0].astype(np.float64)
    missing = int(np.isnan(use).sum())
    use = np.nan_to_num(use, nan=0.0)
    utility = UTILITY_OF_KIND[spec.kind]
    end = history.end
    out: dict[str, Any] = {
        "twin": spec.id, "day": day.isoformat(), "utility": utility, "unit": UNIT_OF_UTILITY[utility],
        "tariff": spec.tariff, "units": float(use.sum()), "missing": missing,
        "until": None if end is None or end <= t0 else datetime.fromtimestamp(min(end, t1), tz=tz).isoformat()}
    table = platform.scenario.tariffs.get(spec.tariff or "")
    if table is None:
        return {**out, "tariff": None, "fen": None, "bands": [], "surcharge_fen": None}
    tariff = parse_tariff(spec.tariff or "", table)
    prices = price_tables([tariff], t0, len(use), step, platform.scenario.site.timezone)
    bands: list[dict[str, Any]] = [{"name": name, "units": float(use[prices.band[0] == b].sum()),
                                    "fen": float((use * prices.price_fen[0])[prices.band[0] == b].sum())}
                                   for b, name in enumerate(prices.band_names[0])]
    first = day.replace(day=1) if tariff.period == "month" else day.replace(month=1, day=1)
    p0 = int(datetime(first.year, first.month, first.day, tzinfo=tz).timestamp())
    p0 -= p0 % step
    before = 0.0
    if p0 < t0:
        got, _ = period_sums(history, [column], np.array([p0, t0], dtype=np.int64))
        before = 0.0 if np.isnan(got[0]) else float(got[0])
    version = int(prices.version[0, 0])
    surcharge = _surcharges(use, before, prices.thresholds[0, version], prices.surcharges_fen[0, version])
    total = sum(b["fen"] for b in bands) + surcharge
    return {**out, "fen": round_half_up(total), "bands": [b for b in bands if b["units"] or b["fen"]] or bands,
            "surcharge_fen": surcharge}


DAY = Query(None, description="site-local; default: the platform's today", examples=["2026-03-02"])


@router.get("/api/twins/{twin_id}/day", summary="A meter's use and cost by band for a day", response_model=MeterDay,
            responses=errors(400, 404))
async def meter_day(request: Request, twin_id: str,
                    day: date | None = DAY) -> dict[str, Any]:
    """Example: `GET /api/twins/B01-02-03.em/day?day=2026-03-02`. A valve keeps no
    history (400); an unknown id is 404."""
    platform = get_platform(request)
    spec = platform.twin_specs.get(twin_id)
    if spec is None:
        raise HTTPException(404, f"no twin {twin_id!r}; ids look like B01-02-03.em")
    if spec.kind not in METERED_KINDS:
        raise HTTPException(400, f"{twin_id!r} is a {spec.kind.value}: it keeps no interval history")
    chosen = day or datetime.fromtimestamp(platform.now(), tz=platform.world.tz).date()
    if not 1970 <= chosen.year < 2200:
        raise HTTPException(400, "the day must lie between 1970 and 2199")
    return await asyncio.to_thread(_day, platform, reader(request), spec, chosen)
