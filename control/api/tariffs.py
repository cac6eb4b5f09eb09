"""/api/tariffs and /api/fee-items: the prices the platform bills by, as the scenario sets
them (read-only: a tariff change is a new effective-dated version in the scenario)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Viewer, get_platform
from control.api.errors import AUTH, errors
from twin.fees import parse_fee_items
from twin.tariffs import Tariff, parse_tariff

if TYPE_CHECKING:
    from control.runtime import Platform

router = APIRouter(tags=["tariffs"], dependencies=[Viewer], responses=AUTH)


class BandOut(BaseModel):
    """A time-of-use band: its price and the site-local hours it covers."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "peak", "price_fen": 94.03, "hours": ["08:00-11:30"], "months": []}]})

    name: str = Field(examples=["peak"])
    price_fen: float = Field(description="fen per unit (kWh or m3)", examples=[94.03])
    hours: list[str] = Field(examples=[["08:00-11:30", "18:30-23:00"]])
    months: list[int] = Field(description="months it applies in; empty: all year", examples=[[]])


class VersionOut(BaseModel):
    """A tariff as it stands from `effective` (site-local date) on."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"effective": "2026-01-01", "bands": [{"name": "flat", "price_fen": 49.83, "hours": ["00:00-24:00"],
        "months": []}], "thresholds": [180.0, 350.0], "surcharges_fen": [0.0, 5.0, 30.0]}]})

    effective: str = Field(examples=["2026-01-01"])
    bands: list[BandOut]
    thresholds: list[float] = Field(description="tier thresholds in units per period")
    surcharges_fen: list[float] = Field(description="per tier, added to the band price")


class TariffOut(BaseModel):
    """A tariff with its versions, oldest first, and the version in force today."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "residential", "kind": "tiered", "utility": "electric", "period": "month", "meters": 432,
        "in_force": 0, "versions": [{"effective": "2000-01-01", "bands": [
            {"name": "flat", "price_fen": 49.83, "hours": ["00:00-24:00"], "months": []}],
            "thresholds": [180.0, 350.0], "surcharges_fen": [0.0, 5.0, 30.0]}]}]})

    name: str
    kind: Literal["flat", "time_of_use", "tiered", "tiered_time_of_use"]
    utility: Literal["electric", "water"]
    period: Literal["month", "year"] = Field(description="when tier counters reset")
    meters: int = Field(description="twins billed under it")
    in_force: int = Field(description="index of the version in force on the platform's date")
    versions: list[VersionOut]


class FeeItemOut(BaseModel):
    """A fee item (property fee, parking): how it is computed and charged."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "property fee", "basis": "area", "fen": 180.0, "charge": "balance", "period": "month"}]})

    name: str
    basis: Literal["area", "fixed"] = Field(description="area: fen per m2 per month x floor area; fixed: fen")
    fen: float = Field(description="fen per m2 per month (area), or fen per month or once (fixed)")
    charge: Literal["balance", "bill"] = Field(description="balance: from the prepaid balance; bill: billed")
    period: Literal["month", "once"]


def _hours(windows: tuple[tuple[int, int], ...]) -> list[str]:
    return [f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}" for s, e in windows]


def _tariff(platform: Platform, tariff: Tariff, meters: int) -> dict[str, Any]:
    today = datetime.fromtimestamp(platform.now(), tz=platform.world.tz).date()
    return {"name": tariff.name, "kind": tariff.kind, "utility": tariff.utility, "period": tariff.period,
            "meters": meters, "in_force": tariff.version_at(today),
            "versions": [{"effective": v.effective.isoformat(),
                          "bands": [{"name": b.name, "price_fen": b.price_fen, "hours": _hours(b.windows),
                                     "months": list(b.months)} for b in v.bands],
                          "thresholds": list(v.thresholds), "surcharges_fen": list(v.surcharges_fen)}
                         for v in tariff.versions]}


def _tariffs(platform: Platform) -> list[dict[str, Any]]:
    uses = Counter(t.tariff for t in platform.scenario.site.twins if t.tariff)
    return [_tariff(platform, parse_tariff(name, table), uses.get(name, 0))
            for name, table in platform.scenario.tariffs.items()]


@router.get("/api/tariffs", summary="Tariffs with their effective-dated versions", response_model=list[TariffOut])
async def list_tariffs(request: Request) -> list[dict[str, Any]]:
    """Prices in fen per unit; hours site-local. Example: `GET /api/tariffs`."""
    return _tariffs(get_platform(request))


@router.get("/api/tariffs/{name}", summary="One tariff", response_model=TariffOut, responses=errors(404))
async def get_tariff(request: Request, name: str) -> dict[str, Any]:
    """Example: `GET /api/tariffs/residential`. An unknown name is 404, naming the ones there are."""
    platform = get_platform(request)
    if name not in platform.scenario.tariffs:
        raise HTTPException(404, f"no tariff {name!r}; this site has {', '.join(platform.scenario.tariffs) or 'none'}")
    return next(t for t in _tariffs(platform) if t["name"] == name)


@router.get("/api/fee-items", summary="Fee items (property fee, parking, ...)", response_model=list[FeeItemOut])
async def list_fee_items(request: Request) -> list[dict[str, Any]]:
    """Example: `GET /api/fee-items`."""
    items = parse_fee_items(get_platform(request).scenario.fee_items)
    return [{"name": i.name, "basis": i.basis, "fen": i.fen, "charge": i.charge, "period": i.period} for i in items]
