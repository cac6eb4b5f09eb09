"""/api/simulation: the simulated clock, for load testers: where it is and how fast it
runs. Changing the speed changes nothing the world does, only how soon it does it: a
restart replays the same world whatever the speeds were."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Operator, Viewer, get_platform
from control.api.errors import AUTH, errors
from control.auth import Principal

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
