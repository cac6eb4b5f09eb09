"""/api/simulation: the simulated world, for load testers: the clock (where it is, how
fast it runs) and faults or thefts injected into a chosen twin while it runs.

Changing the speed changes nothing the world does, only how soon it does it. An injection
is a write to the world's control point `inject:KIND`, recorded like a command's writes,
so a restart replays it at the same simulated time; it is checked before it is recorded,
so a refused one leaves no trace.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Operator, Viewer, get_platform
from control.api.errors import AUTH, errors
from control.auth import Principal
from devices.sim.injections import check_target
from scenarios.schema import FAULT_KINDS, THEFT_KINDS

router = APIRouter(prefix="/api/simulation", tags=["simulation"], responses=AUTH)


class Clock(BaseModel):
    """The platform's clock: simulated time (site-local and UTC epoch seconds) and speed."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "sim_time": "2026-03-02T18:00:00+08:00", "now": 1772445600.0, "speed": 60.0,
        "started": "2026-03-02T18:00:00+08:00"}]})

    sim_time: str
    now: float
    speed: float = Field(description="simulated seconds per wall second; 0: held")
    started: str = Field(description="the world's start, site-local")


class SpeedRequest(BaseModel):
    """A new speed: simulated seconds per wall second (0 holds the clock)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"speed": 3600}]})

    speed: float = Field(ge=0, le=1_000_000, examples=[3600])


def _clock(platform: Any) -> dict[str, Any]:
    tz = platform.world.tz
    return {"sim_time": datetime.fromtimestamp(platform.now(), tz=tz).isoformat(), "now": platform.now(),
            "speed": platform.speed, "started": platform.world.start.replace(tzinfo=tz).isoformat()}


@router.get("", dependencies=[Viewer], summary="The simulated clock", response_model=Clock)
async def get_clock(request: Request) -> dict[str, Any]:
    """Example: `GET /api/simulation`."""
    return _clock(get_platform(request))


@router.put("/speed", summary="Set the simulation speed (operator)", response_model=Clock, responses=errors(400))
async def set_speed(request: Request, body: SpeedRequest, who: Principal = Operator) -> dict[str, Any]:
    """The clock goes on from where it is at the new speed. Example body: `{"speed": 3600}`
    (an hour a second); `{"speed": 0}` holds it."""
    platform = get_platform(request)
    async with platform.lock:
        platform.set_speed(body.speed)
        return _clock(platform)


INJECTION_KINDS = (*FAULT_KINDS, *THEFT_KINDS)


class InjectionRequest(BaseModel):
    """A fault or a theft to start on a twin now, for a while, with its default parameters."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"twin": "B01-02-03.wm", "kind": "leak",
                                                               "duration_s": 86400}]})

    twin: str = Field(examples=["B01-02-03.em"])
    kind: str = Field(examples=["h1"], description=f"one of {', '.join(INJECTION_KINDS)}")
    duration_s: float = Field(ge=1, le=366 * 86400, description="simulated seconds it lasts")


class InjectionOut(BaseModel):
    """An injection in the world: which twin, what, its window (UTC epoch seconds of the
    simulated clock, on interval boundaries), its parameters, and whether it was started
    live (true) or comes from the scenario."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "twin": "B01-02-03.wm", "kind": "leak", "start": 1772445600, "end": 1772532000,
        "params": {"flow_lph": 15.0}, "live": True}]})

    twin: str
    kind: str
    start: int
    end: int
    params: dict[str, float]
    live: bool


def _injection(platform: Any, inj: Any) -> dict[str, Any]:
    world = platform.world
    return {"twin": inj.twin, "kind": inj.kind, "start": world.start_utc + inj.start_step * world.step_s,
            "end": world.start_utc + inj.end_step * world.step_s, "params": dict(inj.params),
            "live": bool(inj.extra.get("live"))}


@router.get("/injections", dependencies=[Viewer], summary="Faults and thefts in the world",
            response_model=list[InjectionOut])
async def list_injections(request: Request, live: bool | None = None) -> list[dict[str, Any]]:
    """The scenario's and the ones started live (`live=true` for those only), oldest first.
    Example: `GET /api/simulation/injections?live=true`."""
    platform = get_platform(request)
    async with platform.lock:
        out = [_injection(platform, inj) for inj in platform.world.injections]
    return [i for i in out if live is None or i["live"] == live]


@router.post("/injections", status_code=201, summary="Inject a fault or theft into a twin now (operator)",
             response_model=InjectionOut, responses=errors(400, 404))
async def inject(request: Request, body: InjectionRequest, who: Principal = Operator) -> dict[str, Any]:
    """It starts at the current interval (a whole-day theft at the current day) and lasts
    `duration_s`; watch the detectors at /api/alarms. Example body:
    `{"twin": "B01-02-03.em", "kind": "h1", "duration_s": 172800}`. An unknown twin is 404;
    a kind that does not apply to the twin is 400, saying which kinds do."""
    platform = get_platform(request)
    spec = platform.twin_specs.get(body.twin)
    if spec is None:
        raise HTTPException(404, f"no twin {body.twin!r}; ids look like B01-02-03.em")
    if body.kind not in INJECTION_KINDS:
        raise HTTPException(400, f"unknown kind {body.kind!r}; use one of {', '.join(INJECTION_KINDS)}")
    try:
        check_target(body.kind, spec)
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    async with platform.lock:  # the source records the write for replay and applies it under the world's lock
        platform.source.write(body.twin, f"inject:{body.kind}", int(body.duration_s), who.name)
        return _injection(platform, platform.world.injections[-1])
