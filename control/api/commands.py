"""/api/commands: remote relay and valve commands, one or a batch, and their progress."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from control.api.deps import Operator, Viewer, get_platform
from control.auth import Principal
from control.commands import DEFAULT_DEADLINE_S, OPERATOR_ACTIONS, CommandError

router = APIRouter(prefix="/api/commands", tags=["commands"])


class CommandRequest(BaseModel):
    """Ask a twin to do something: relay_open (trip), relay_close, valve_close, valve_open."""

    twin: str = Field(examples=["B01-02-03.em"])
    action: str = Field(examples=["relay_open"], description=f"one of {', '.join(OPERATOR_ACTIONS)}")
    deadline_s: float = Field(DEFAULT_DEADLINE_S, gt=0, le=86400,
                              description="platform seconds the device has to confirm")


class BatchRequest(BaseModel):
    """The same action on many twins, each its own command."""

    twins: list[str] = Field(min_length=1, max_length=10000, examples=[["B01-01-01.vl", "B01-01-02.vl"]])
    action: str = Field(examples=["valve_close"])
    deadline_s: float = Field(DEFAULT_DEADLINE_S, gt=0, le=86400)


@router.post("", status_code=201, summary="Send one command")
async def create_command(request: Request, body: CommandRequest, who: Principal = Operator) -> dict[str, Any]:
    """Writes the twin's desired state and the device's control point; the command then
    goes from `sent` to `confirmed` when the device reports it, or `failed` at its
    deadline. Example body: `{"twin": "B01-02-03.em", "action": "relay_open"}`."""
    platform = get_platform(request)
    async with platform.lock:
        try:
            command = platform.commands.create(body.twin, body.action, by=who.name, source="operator",
                                               now=platform.now(), deadline_s=body.deadline_s)
        except CommandError as err:
            raise HTTPException(400, str(err)) from None
    return command.as_dict()


@router.post("/batch", status_code=201, summary="Send one action to many twins")
async def create_batch(request: Request, body: BatchRequest, who: Principal = Operator) -> dict[str, Any]:
    """Every twin is checked first: one bad twin refuses the whole batch, naming it.
    Example body: `{"twins": ["B01-01-01.vl", "B01-01-02.vl"], "action": "valve_close"}`."""
    platform = get_platform(request)
    spec = OPERATOR_ACTIONS.get(body.action)
    if spec is None:
        raise HTTPException(400, f"unknown action {body.action!r}; use one of {', '.join(OPERATOR_ACTIONS)}")
    for twin in body.twins:
        known = platform.twin_specs.get(twin)
        if known is None or known.kind is not spec.kind:
            raise HTTPException(400, f"{twin!r} is not a {spec.kind.value} twin of this site")
    async with platform.lock:
        now = platform.now()
        batch = f"b-{int(now)}-{len(body.twins)}-{who.name}"
        made = [platform.commands.create(t, body.action, by=who.name, source="batch", now=now,
                                         deadline_s=body.deadline_s, batch=batch) for t in body.twins]
    return {"batch": batch, "commands": [c.as_dict() for c in made]}


@router.get("", dependencies=[Viewer], summary="Recent commands")
async def list_commands(request: Request, twin: str | None = None,
                        limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Newest first. Example: `GET /api/commands?twin=B01-02-03.em`."""
    platform = get_platform(request)
    return [c.as_dict() for c in platform.commands.recent(limit, twin)]


@router.get("/{command_id}", dependencies=[Viewer], summary="One command and its progress")
async def get_command(request: Request, command_id: str) -> dict[str, Any]:
    """Its state and every transition with when and who. Example: `GET /api/commands/c-1a2b3c4d5e6f`."""
    platform = get_platform(request)
    try:
        return platform.commands.get(command_id).as_dict()
    except KeyError:
        raise HTTPException(404, f"no command {command_id!r}") from None
